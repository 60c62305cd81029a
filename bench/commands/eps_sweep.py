r"""``fdsm-bench eps-sweep``: the error of FD derivatives against the step, per order, dtype and stencil accuracy.

For each order T, stencil accuracy p, dtype and step :math:`\varepsilon = \lVert v\rVert` on a log grid, the
T-th directional derivative of the deep EBM's log-density is computed by ``fd-batched`` and compared with the exact
float64 reference (``bench.derivative_case``). The error is the sum of truncation, falling like
:math:`\varepsilon^p` as the step shrinks, and roundoff, growing like :math:`u/\varepsilon^T`; the curve is a U
whose bottom sits near :math:`h^* = L u^{1/(T+p)}` (NOTE [default FD step] in ``bench.steps``), marked on the plot.

Writes ``eps_sweep.csv`` (one row per case, resumable) and ``eps_sweep.png`` (one panel per (p, T), one line per
dtype, with h*, the best measured step of each dtype, the 1% line and a slope-p guide).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.cli import DTYPES, UsageError
from bench.config import comma_ints, comma_words, configure
from bench.csvlog import CsvLog
from bench.derivative_case import (
    CASE_KEYS,
    ERROR_COLUMNS,
    ProblemConfig,
    add_problem_arguments,
    check_accuracies,
    measure_error,
    problem_columns,
)
from bench.plots import DTYPE_STYLE, failure_note, line_panel, save
from bench.steps import default_step
from bench.sweep import exit_status, run_sweep
from bench.timing import fix_cpu_threads

NAME = "eps-sweep"
HELP = "FD error against the step |v|: T = 1..6, float64/float32/bfloat16, stencil accuracy 2 and 4"

REQUIRED = ("model", "method", "order", "eps", "accuracy", "dtype", "rel_error", "status")  # DESIGN.md
TRUSTWORTHY = 0.01  # the paper's "within 1%"


@dataclass(frozen=True)
class EpsSweepConfig(ProblemConfig):
    batch: int = 8  # more points than the timing sweep: the median error is the product here
    orders: tuple[int, ...] = (1, 2, 3, 4, 5, 6)  # all of Figure 2's, so that its steps can come from here
    dtypes: tuple[str, ...] = ("float64", "float32", "bfloat16")
    accuracies: tuple[int, ...] = (2, 4)  # p
    eps_min: float = 1e-3
    eps_max: float = 1e3
    per_decade: int = 4  # grid points per factor of 10
    method: str = "fd-batched"

    def grid(self) -> list[float]:
        decades = np.log10(self.eps_max) - np.log10(self.eps_min)
        return [float(e) for e in np.logspace(np.log10(self.eps_min), np.log10(self.eps_max),
                                              int(round(decades * self.per_decade)) + 1)]


DEFAULT = EpsSweepConfig()
# CI smoke test: a 2-channel deep EBM, two orders, two dtypes, one accuracy, one point per decade.
QUICK = dataclasses.replace(DEFAULT, width=2, batch=2, orders=(1, 2), dtypes=("float64", "float32"),
                            accuracies=(2,), eps_min=1e-2, eps_max=1e2, per_decade=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_problem_arguments(parser)
    g = parser.add_argument_group("sweep (the shared --dtype is not used: --dtypes lists the dtypes)")
    g.add_argument("--orders", type=comma_ints, help="orders T (default: 1..6)")
    g.add_argument("--dtypes", type=comma_words, help="dtypes (default: float64,float32,bfloat16)")
    g.add_argument("--accuracies", type=comma_ints, help="stencil accuracies p (default: 2,4)")
    g.add_argument("--eps-min", dest="eps_min", type=float, help="smallest step (default: 1e-3)")
    g.add_argument("--eps-max", dest="eps_max", type=float, help="largest step (default: 1e3)")
    g.add_argument("--per-decade", dest="per_decade", type=int, help="grid points per decade (default: 4)")


def cases(config: EpsSweepConfig, args: argparse.Namespace) -> list[dict]:
    unknown = sorted(set(config.dtypes) - set(DTYPES))
    if unknown:
        raise UsageError(f"--dtypes: unknown {unknown}; expected names from {sorted(DTYPES)}")
    check_accuracies("--accuracies", config.accuracies)
    if not 0 < config.eps_min < config.eps_max:
        raise UsageError(f"--eps-min {config.eps_min} --eps-max {config.eps_max}: expected 0 < min < max")
    problem = problem_columns(config, args)
    return [{**problem, "method": config.method, "order": order, "accuracy": p, "eps": eps, "dtype": dtype}
            for order in config.orders for p in config.accuracies for dtype in config.dtypes
            for eps in config.grid()]


def _slope_guide(ax, fp64: pd.DataFrame, p: int) -> None:
    """A dotted eps^p line through the float64 point with the largest step still under 10% error."""
    under = fp64[(fp64.status == "ok") & (fp64.rel_error < 0.1)]
    if under.empty:
        return
    anchor = under.loc[under.eps.idxmax()]
    eps = np.logspace(np.log10(anchor.eps) - 2.5, np.log10(anchor.eps), 10)
    ax.plot(eps, anchor.rel_error * (eps / anchor.eps) ** p, color="black", linestyle=":", linewidth=1.2,
            label=f"slope {p} (truncation)")


def _panel(ax, rows: pd.DataFrame, order: int, p: int) -> None:
    line_panel(ax, rows, x="eps", y="rel_error", line="dtype", styles=DTYPE_STYLE, logx=True)
    ax.axhspan(1e-300, TRUSTWORTHY, color="#2ecc71", alpha=0.07)
    ax.axhline(TRUSTWORTHY, color="grey", linestyle=":", linewidth=1)
    for dtype in rows.dtype.drop_duplicates():
        color = DTYPE_STYLE.get(dtype, {}).get("color", "black")
        ax.axvline(default_step(order, p, DTYPES[dtype]), color=color, linestyle="--", linewidth=1, alpha=0.7)
        ok = rows[(rows.dtype == dtype) & (rows.status == "ok")]
        if len(ok):
            best = ok.loc[ok.rel_error.idxmin()]
            ax.plot(best.eps, best.rel_error, marker="*", markersize=13, color=color, markeredgecolor="black",
                    linestyle="none")
            ax.annotate(f"{best.rel_error:.1e}\n@ {best.eps:.2g}", (best.eps, best.rel_error), xytext=(6, -18),
                        textcoords="offset points", fontsize=7, color=color)
    _slope_guide(ax, rows[rows.dtype == "float64"], p)
    positive = rows.rel_error[rows.rel_error > 0]
    if len(positive):  # a panel whose every case failed has no error to scale to
        ax.set_ylim(max(positive.min() / 5, 1e-14), 10)
    ax.set_title(f"T = {order}, accuracy p = {p}", fontsize=10)


def eps_sweep_figure(rows: pd.DataFrame, title: str):
    orders, accuracies = sorted(rows.order.unique()), sorted(rows.accuracy.unique())
    fig, axes = plt.subplots(len(accuracies), len(orders), figsize=(4.2 * len(orders), 3.6 * len(accuracies)),
                             squeeze=False, sharex=True, constrained_layout=True)
    for i, p in enumerate(accuracies):
        for j, order in enumerate(orders):
            _panel(axes[i][j], rows[(rows.order == order) & (rows.accuracy == p)], order, p)
            axes[i][j].set_xlabel("step eps = |v|" if i == len(accuracies) - 1 else "")
        axes[i][0].set_ylabel("relative error vs float64 exact")
    if axes[0][0].get_legend_handles_labels()[0]:  # nothing to label where every case failed
        axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title}\ndashed verticals: theoretical optimum h* = L u^(1/(T+p)) per dtype;  stars: best "
                 f"measured step;  green band: error <= {TRUSTWORTHY:.0%}", fontsize=10)
    note = failure_note(rows, ("dtype", "order", "accuracy", "eps"))
    if note:
        fig.text(0.01, -0.02, note[:600], fontsize=7, color="#7f1d1d", wrap=True)
    return fig


def run(args: argparse.Namespace) -> int:
    config = configure(args, DEFAULT, QUICK)
    threads = fix_cpu_threads(args.threads)
    todo = cases(config, args)
    log = CsvLog(args.out / "eps_sweep.csv", key_columns=CASE_KEYS, columns=(*REQUIRED, *ERROR_COLUMNS))
    # No timing and no memory here, so the cases run in this process (errors still become rows).
    rows = run_sweep(todo, measure_error, log, device=args.device, timeout_s=float("inf"), isolate=False,
                     threads=threads, desc=NAME)
    first = rows.iloc[0]
    title = (f"FD error vs step: {config.method} on {first.model} ({first['size']}, {first.weights} weights), "
             f"batch {first.batch}, median over the batch, {first.device_name}")
    path = save(eps_sweep_figure(rows, title), args.out / "eps_sweep.png")
    print(f"wrote {log.path} ({len(rows)} rows) and {path}")
    return exit_status(rows, NAME)
