r"""``fdsm-bench derivatives``: the Figure-2 experiment (paper section 3.3).

For T = 1..6 and every derivative method this machine can run, the T-th directional derivative
:math:`(v^\top\nabla_x)^T \log \tilde p_\theta(x)` of the deep EBM (Res18_Quadratic) is timed (median and IQR of
``repeats`` calls after ``warmup``), its peak memory above the baseline is probed, and it is compared with the exact
float64 reference. Each case runs in a worker process under a time budget (``bench.sweep``): exact methods grow
exponentially with T, and a case past the budget gets a ``timeout`` row instead of stalling the sweep.

Writes ``derivatives.csv`` (one row per method x order; re-running the same command skips the rows already there)
and ``figure2.png`` (time, peak memory and relative error against T, one line per method, log y).

The FD step is, in this order of precedence: ``--eps`` for every order; with ``--steps-from eps_sweep.csv``, the
best measured step of that sweep for the same model (size, width), weights, dtype and accuracy
(``bench.steps.best_steps``); else ``default_step(T, accuracy, dtype)`` (NOTE [default FD step] in ``bench.steps``).
The CSV records the step in ``eps`` and where it came from in ``eps_source``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

import fdsm
from bench.cli import UsageError, dtype_name
from bench.config import comma_ints, comma_words, configure
from bench.csvlog import CsvLog
from bench.derivative_case import (
    CASE_KEYS,
    ERROR_COLUMNS,
    TIME_COLUMNS,
    ProblemConfig,
    add_problem_arguments,
    check_accuracies,
    measure_derivative,
    problem_columns,
)
from bench.plots import METHOD_STYLE, failure_note, line_panel, save
from bench.steps import best_steps, default_step
from bench.sweep import exit_status, run_sweep
from bench.timing import fix_cpu_threads
from fdsm.models import model_config

NAME = "derivatives"
HELP = "Figure 2: time, peak memory and error of the T-th directional derivative, exact vs FD, T = 1..6"

# DESIGN.md's required columns of derivatives.csv; the case keys and the other measured columns follow them.
REQUIRED = ("model", "method", "order", "batch", "dtype", "device", "time_ms", "time_ms_iqr", "peak_mem_mb",
            "rel_error", "status")


@dataclass(frozen=True)
class DerivativesConfig(ProblemConfig):
    orders: tuple[int, ...] = (1, 2, 3, 4, 5, 6)  # T
    methods: tuple[str, ...] = ()  # () = every method enabled on this machine
    accuracy: int = 2  # p of the central stencils
    eps: float | None = None  # the step |v|; None = default_step(T, accuracy, dtype) per order
    warmup: int = 1  # untimed calls before the timed ones
    repeats: int = 7  # timed calls per case
    timeout_s: float = 90.0  # per-case budget in the worker, reference and warm-up included


DEFAULT = DerivativesConfig()
# CI smoke test: a 2-channel deep EBM, one point, three orders, two repeats.
QUICK = dataclasses.replace(DEFAULT, width=2, batch=1, orders=(1, 2, 3), repeats=2, timeout_s=60.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_problem_arguments(parser)
    g = parser.add_argument_group("sweep")
    g.add_argument("--orders", type=comma_ints, help="orders T, e.g. 1,2,3 (default: 1..6)")
    g.add_argument("--methods", type=comma_words, help=f"methods (default: all of {', '.join(fdsm.METHODS.names())}; "
                                                       f"one this machine cannot run gets an unsupported row)")
    g.add_argument("--accuracy", type=int, help="FD stencil accuracy p (default: 2)")
    g.add_argument("--eps", type=float, help="FD step |v| for every order (default: per order and dtype, "
                                             "h* = L u^(1/(T+p)), see bench.steps)")
    g.add_argument("--steps-from", dest="steps_from", type=Path,
                   help="an eps_sweep.csv of the same model and weights: use its best step per order (orders it "
                        "lacks fall back to the default step)")
    g.add_argument("--warmup", type=int, help="untimed calls per case (default: 1)")
    g.add_argument("--timeout", dest="timeout_s", type=float, help="seconds per case (default: 90)")


def cases(config: DerivativesConfig, args: argparse.Namespace) -> list[dict]:
    """Order-major, so that one order's reference serves all its methods while the worker holds it."""
    # Every registered method: one this machine cannot run gets an `unsupported` row that says why.
    methods = config.methods or tuple(fdsm.METHODS.names())
    for method in methods:
        try:
            fdsm.METHODS.entry(method)  # an unknown name fails here, before any work
        except ValueError as err:
            raise UsageError(f"--methods: {err}") from err
    check_accuracies("--accuracy", [config.accuracy])
    problem, dtype = problem_columns(config, args), dtype_name(args.dtype)
    steps = {order: (default_step(order, config.accuracy, args.dtype), "default") for order in config.orders}
    if args.steps_from is not None:
        if not args.steps_from.is_file():
            raise UsageError(f"--steps-from {args.steps_from}: no such file; run fdsm-bench eps-sweep first")
        measured = best_steps(args.steps_from, problem, dtype=dtype, accuracy=config.accuracy)
        steps |= {order: (eps, "eps-sweep") for order, eps in measured.items() if order in steps}
    if config.eps is not None:
        steps = {order: (config.eps, "--eps") for order in config.orders}
    return [{**problem, "method": method, "order": order, "accuracy": config.accuracy, "eps": steps[order][0],
             "eps_source": steps[order][1], "dtype": dtype}
            for order in config.orders for method in methods]


def figure2(rows: pd.DataFrame, title: str):
    """Three panels against T, one line per method, log y: time, peak memory, relative error."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    panels = (("time_ms", "time per call [ms]", "Time (median, bars: quartiles of repeats)", True),
              ("peak_mem_mb", "peak memory above baseline [MiB]", "Peak memory", False),
              ("rel_error", "relative error vs float64 exact", "Error (median over batch)", False))
    for ax, (column, ylabel, name, quartiles) in zip(axes, panels, strict=True):
        line_panel(ax, rows, x="order", y=column, line="method", styles=METHOD_STYLE, quartiles=quartiles)
        ax.set(xlabel="order T", ylabel=ylabel, title=name, xticks=sorted(rows.order.unique()))
    axes[2].axhline(0.01, color="grey", linestyle=":", linewidth=1)
    axes[2].annotate("1% (the paper's bound)", (axes[2].get_xlim()[0], 0.01), xytext=(4, 3),
                     textcoords="offset points", fontsize=8, color="grey")
    axes[0].legend(title="method", fontsize=8)
    fig.suptitle(title, fontsize=10)
    note = failure_note(rows, ("method", "order"))
    if note:
        fig.text(0.01, -0.03, note, fontsize=8, color="#7f1d1d", wrap=True)
    return fig


def describe(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    width = model_config(first.model, first["size"]).n_chan if pd.isna(first.width) else int(first.width)
    return (f"T-th directional derivative of log p, {first.model} ({first['size']}, n_chan {width}, "
            f"{first.weights} weights), batch {first.batch}, {first['dtype']} on {first.device_name} "
            f"({first.threads} threads); FD step eps per row in the CSV")


def run(args: argparse.Namespace) -> int:
    config = configure(args, DEFAULT, QUICK)
    threads = fix_cpu_threads(args.threads)
    todo = cases(config, args)
    log = CsvLog(args.out / "derivatives.csv", key_columns=CASE_KEYS,
                 columns=(*REQUIRED, *TIME_COLUMNS, *ERROR_COLUMNS))
    measure = functools.partial(measure_derivative, warmup=config.warmup,
                                repeats=config.repeats)
    rows = run_sweep(todo, measure, log, device=args.device, timeout_s=config.timeout_s, threads=threads,
                     desc=NAME)
    path = save(figure2(rows, describe(rows)), args.out / "figure2.png")
    print(f"wrote {log.path} ({len(rows)} rows) and {path}")
    return exit_status(rows, NAME)
