r"""``fdsm-bench derivatives``: the Figure-2 experiment (paper section 3.3).

For T = 1..6 and every derivative method this machine can run, the T-th directional derivative
:math:`(v^\top\nabla_x)^T \log \tilde p_\theta(x)` of the deep EBM (Res18_Quadratic) is timed (median and IQR of
``repeats`` calls after ``warmup``), its peak memory above the baseline is probed, and it is compared with the exact
float64 reference. Each case runs in a worker process under a time budget (``bench.sweep``): exact methods grow
exponentially with T, and a case past the budget gets a ``timeout`` row instead of stalling the sweep.

Every row but the FD baseline's (``fd-batched``; compiled rows: ``fd-batched+compiled``) is also timed against it,
alternately, round by round, in its worker (``baseline``, then ``versus`` once measured;
``bench.derivative_case.counterpart``), and carries the median and quartiles of the per-round time ratios
(``time_ratio``): on a noisy machine, a ratio of two rows' medians also holds whatever the machine did between the
two cases, and a paired ratio does not.

Writes ``derivatives.csv`` (one row per method x order; re-running the same command skips the rows already there)
and ``figure2.png`` (time, its paired ratio to FD, peak memory and relative error against T, one line per method,
log y).

The FD step is, in this order of precedence: ``--eps`` for every order (not with ``--steps-from``); with
``--steps-from eps_sweep.csv``, the best measured step of that sweep for the same model (size, n_chan), weights,
dtype and accuracy (``bench.steps.best_steps``; a sweep with none of the orders is refused); else, for a
registered model, ``default_step(T, accuracy, dtype)`` (NOTE [default FD step] in ``bench.steps``), and for a
user's model (``--model ...:factory``), whose length scale that default knows nothing of, the probed step
(``eps_source`` ``probed``): the batch median of the automatic step's per-sample steps for the sweep's stencil,
picked before the sweep from probes of the model (no reference), then fixed and timed as any step.
``--eps auto`` is the automatic step of ``fdsm.fd_estimate``, chosen per sample from probes of the model, and
timed with them; its stencil accuracy, unless ``--accuracy`` says, is ``fdsm.fd_error.default_accuracy``.
``--richardson`` evaluates each FD method's Richardson stencil (accuracy p -> p + 2) instead; its rows name the
method ``<method>+richardson``. The CSV records the step in ``eps`` (for the automatic step, the batch median of
the per-sample steps) and where it came from in ``eps_source``; FD rows carry ``err_estimate``, FD's own estimate of
its relative error, beside ``rel_error`` (``bench.derivative_case``). ``--compiled`` adds a ``<method>+compiled``
row beside each, the same call under ``torch.compile`` as an evaluation (``fdsm.compiled``), and an
``exact-taylor+fused`` row: eager Taylor mode, its graph kept, each elementwise rule one compiled kernel
(``fdsm.taylor.fused``). The report sets compiled Taylor mode against compiled FD, since a compiler fuses both,
and the fused rules against eager FD, whose activations are one kernel each already.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

import fdsm
from bench.config import (
    Shared,
    UsageError,
    at_least,
    bounded_orders,
    central_accuracies,
    check_step_in_range,
    option,
    positive,
)
from bench.csvlog import REMEDY, ResultsFileError
from bench.derivative_case import (
    AUTO_COLUMNS,
    CASE_KEYS,
    COMPILED,
    ERROR_COLUMNS,
    EXACT_TOLERANCE,
    FUSED,
    PAIRED_COLUMNS,
    RICHARDSON,
    TIME_COLUMNS,
    ProblemConfig,
    auto_step,
    derivative_call,
    error_columns,
    fd_variant,
    measure_derivative,
    problem_columns,
    unsupported,
)
from bench.experiment import Bench, Experiment
from bench.markdown import TRUSTWORTHY, figure, ok_rows, table
from bench.memory import peak_memory
from bench.plots import METHOD_STYLE, failure_note, legend, line_panel, save
from bench.steps import best_steps, default_step
from bench.user_model import is_user_model
from fdsm.derivatives import FD_METHODS
from fdsm.fd_error import default_accuracy
from fdsm.models import model_config

# DESIGN.md's required columns of derivatives.csv; the case keys and the other measured columns follow them.
REQUIRED = ("model", "method", "order", "batch", "dtype", "device", "time_ms", "time_ms_iqr", "peak_mem_mb",
            "rel_error", "status")
FD_BASELINE = "fd-batched"  # the report's ratios: every exact method against the fastest general FD method


def _accuracy(value: int | None) -> int | None:
    return value if value is None else central_accuracies("--accuracy")(value)


def _methods(names: tuple[str, ...]) -> tuple[str, ...]:
    for method in names:
        try:
            fdsm.METHODS.entry(method)  # an unknown name fails here, before any work
        except ValueError as err:
            raise UsageError(f"--methods: {err}") from err
    return names


AUTO = "auto"
PROBED = "probed"  # eps_source of a user model's default step: the automatic step's, fixed before the sweep


def step_or_auto(text: str) -> float | str:
    """argparse ``type=`` of ``--eps``: a number, or the word ``auto`` (the automatic step)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None


def positive_or_auto(option_name: str):
    """A ``convert`` hook: a positive finite number, or ``"auto"``; None (unset) passes."""
    def check(value: float | str | None) -> float | str | None:
        if value is None or value == AUTO:
            return value
        if isinstance(value, str) or not 0 < value < float("inf"):
            raise UsageError(f"{option_name} {value}: expected a positive finite number, or 'auto'")
        return value

    return check


@dataclass(frozen=True)
class DerivativesConfig(ProblemConfig):
    orders: tuple[int, ...] = option((1, 2, 3, 4, 5, 6), "orders T, e.g. 1,2,3", convert=bounded_orders("--orders"))
    methods: tuple[str, ...] = option((), "derivative methods; one this machine cannot run gets an unsupported row",
                                      convert=_methods, default_text=f"all of {', '.join(fdsm.METHODS.names())}")
    accuracy: int | None = option(None, "FD stencil accuracy p", type=int, convert=_accuracy,
                                  default_text="2, the paper's; with --eps auto, per order and dtype "
                                               "(fdsm.fd_error.default_accuracy)")
    eps: float | str | None = option(None, "FD step |v| for every order, or 'auto': chosen per sample from probes "
                                     "of the model (fdsm.fd_estimate), probes timed", type=step_or_auto,
                                     convert=positive_or_auto("--eps"),
                                     default_text="per order and dtype, h* = L u^(1/(T+p)), see bench.steps; for "
                                                  "a user's model the automatic step's batch median, fixed")
    richardson: bool = option(False, "FD methods evaluate their stencil's Richardson extrapolation (accuracy "
                              "p -> p + 2, its points in the same forward); rows name the method <method>+richardson")
    compiled: bool = option(False, "also time every method under torch.compile, as an evaluation (no autograd graph "
                            "kept; fdsm.compiled): rows name the method <method>+compiled, and their first call, "
                            "the compile, is compile_ms; a method with no compiled form gets an unsupported row; "
                            "and exact-taylor with each elementwise rule one compiled kernel, its graph kept "
                            "(exact-taylor+fused, fdsm.taylor.fused)")
    steps_from: Path | None = option(None, "an eps_sweep.csv of the same model and weights: its best step per order "
                                     "(orders it lacks fall back to the default step; one with none of the orders is "
                                     "refused), not with --eps", default_text="none")
    warmup: int = option(1, "untimed calls per case", convert=at_least("--warmup", 0))
    repeats: int = 7  # timed calls per case (the shared --repeats)
    timeout_s: float = option(90.0, "seconds per case in the worker, reference and warm-up included",
                              flag="--timeout", convert=positive("--timeout"))


DEFAULT = DerivativesConfig()
# CI smoke test: a 2-channel deep EBM, one point, three orders, two repeats.
QUICK = dataclasses.replace(DEFAULT, batch=1, orders=(1, 2, 3), repeats=2, timeout_s=60.0)


def cases(config: DerivativesConfig, shared: Shared) -> list[dict]:
    """Order-major, so that one order's reference serves all its methods while the worker holds it."""
    # Every registered method: one this machine cannot run gets an `unsupported` row that says why.
    methods = config.methods or tuple(fdsm.METHODS.names())
    problem, dtype = problem_columns(config, shared), shared.dtype_name
    auto = config.eps == AUTO
    if config.eps is not None and not auto:
        check_step_in_range("--eps", config.eps, shared.dtype, ", or --eps auto")
    if auto and config.compiled:
        raise UsageError("--compiled with --eps auto: the automatic step's probes are not compiled; drop one")
    accuracy = {order: config.accuracy or (default_accuracy(order, shared.dtype) if auto else 2)
                for order in config.orders}
    fd_baseline = FD_BASELINE + (RICHARDSON if config.richardson else "")
    steps = {order: (default_step(order, accuracy[order], shared.dtype), "default") for order in config.orders}
    if config.steps_from is not None:
        steps |= _swept_steps(config, problem, accuracy, fd_baseline, dtype)
    if config.eps is not None and not auto:
        steps = {order: (config.eps, "--eps") for order in config.orders}
    if is_user_model(config.model) and config.eps is None and any(m in FD_METHODS for m in methods):
        # the orders still at the deep EBM's default step: --steps-from may have given some
        steps |= {order: _probed(problem, fd_baseline, order, accuracy[order], dtype, step)
                  for order, step in steps.items() if step[1] == "default"}
    rows = []
    for order in config.orders:
        for method in methods:
            fd = method in FD_METHODS
            name = method + (RICHARDSON if config.richardson and fd else "")
            eps, source = steps[order]
            if auto and fd and fdsm.METHODS.entry(method).enabled:
                try:
                    eps, source = auto_step(problem, name, order, accuracy[order], dtype), AUTO
                except Exception as err:  # a probe where f is not finite (the message says where), or a user's
                    raise UsageError(f"--eps auto: T = {order}: {_probe_failure(err)}") from err  # forward raising
            row = {**problem, "method": name, "order": order, "accuracy": accuracy[order], "eps": eps,
                   "eps_source": source, "dtype": dtype, "warmup": config.warmup, "repeats": config.repeats}
            rows.append(row)
            if config.compiled:  # the compiled variants: Taylor mode's rules alone (eager net), the whole call
                suffixes = (FUSED, COMPILED) if method == "exact-taylor" else (COMPILED,)
                rows += [{**row, "method": name + suffix} for suffix in suffixes]
    return _paired(rows, fd_baseline, auto)


def _swept_steps(config: DerivativesConfig, problem: dict, accuracy: dict[int, int], method: str,
                 dtype: str) -> dict[int, tuple[float, str]]:
    """{T: (step, "eps-sweep")} from ``--steps-from``: its best step for each order it swept on this function, in
    this dtype, at the order's stencil accuracy. A file that gives none of the orders is refused, as is ``--eps``
    beside it (each sets the steps)."""
    path = config.steps_from
    if config.eps is not None:
        raise UsageError(f"--steps-from {path} with --eps {config.eps}: each sets the FD step; give one of them")
    if not path.is_file():
        raise UsageError(f"--steps-from {path}: no such file; run fdsm-bench eps-sweep first")
    steps = {}
    for p in set(accuracy.values()):
        try:
            measured = best_steps(path, problem, dtype=dtype, accuracy=p, method=method)
        except (ValueError, ResultsFileError) as err:  # a CSV of something else, or no CSV at all
            raise UsageError(f"--steps-from {str(err).removesuffix('; ' + REMEDY)}") from err
        steps |= {order: (eps, "eps-sweep") for order, eps in measured.items() if accuracy.get(order) == p}
    if not steps:
        accuracies = ",".join(map(str, sorted(set(accuracy.values()))))
        raise UsageError(f"--steps-from {path}: no ok {method} row of this function ({problem['model']}, size "
                         f"{problem['size']}, weights {problem['weights']}, seed {problem['seed']}, "
                         f"{problem['device']}) in {dtype} at accuracy {accuracies} for T = "
                         f"{','.join(map(str, accuracy))}; run fdsm-bench eps-sweep with the same --model, "
                         f"--checkpoint and --seed, and --dtypes {dtype}")
    return steps


def _probe_failure(err: Exception) -> str:
    """Why the automatic step's probes failed, on one line: fd_estimate's own message (a ValueError: f not finite at
    a probe, a step that underflows), or the type and message of what a user's forward raised."""
    text = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:400]


def _probed(problem: dict, method: str, order: int, accuracy: int, dtype: str,
            default: tuple[float, str]) -> tuple[float, str]:
    """A user model's step for order T (module docstring): the automatic step's batch median, or where its probes
    fail (f not finite at one, or the user's forward raising on the probes' batch) the default step, with a note
    saying so; the rows then say what their own calls give, an error row where the forward raises again."""
    try:
        return auto_step(problem, method, order, accuracy, dtype), PROBED
    except Exception as err:  # any failure of the user's code: a row's error, not the sweep's traceback
        print(f"fdsm-bench derivatives: note: T = {order}: no probed step ({_probe_failure(err)}); FD runs at the "
              f"default step {default[0]:.3g}, calibrated on the deep EBM (set one with --eps or --steps-from)",
              file=sys.stderr)
        return default


def _paired(rows: list[dict], baseline: str, auto: bool) -> list[dict]:
    """Each row's ``baseline``: the FD method it is timed against, alternately in its worker
    (``bench.derivative_case.counterpart``): compiled rows against the compiled baseline, every other row (fused
    rules included) against the eager one. Only where that baseline is one of the sweep's own rows and can run here
    (so its own row, timed alone, is beside the ratio), and not for an exact row of the automatic step, whose FD
    counterpart chooses a step of its own that the exact row's case does not carry.

    The baseline rows come first within each order: every paired compiled row compiles the compiled baseline for
    its rounds, so a baseline row after them would time its own compile (``compile_ms``) on inductor's warm cache."""
    methods = {row["method"] for row in rows}
    baselines = (baseline, baseline + COMPILED)
    for row in rows:
        target = baseline + (COMPILED if row["method"].endswith(COMPILED) else "")
        exact = fd_variant(row["method"])[0] not in FD_METHODS
        pairable = target in methods and unsupported(target) is None and not (auto and exact)
        row["baseline"] = target if pairable and row["method"] != target else ""
    position = {order: i for i, order in enumerate(dict.fromkeys(row["order"] for row in rows))}
    return sorted(rows, key=lambda row: (position[row["order"]], row["method"] not in baselines))


def figure2(rows: pd.DataFrame, title: str):
    """Panels against T, one line per method, log y: time, peak memory, relative error; and, where rows were timed
    against FD (``versus``), their paired time ratio, with 1 (as fast as FD) marked."""
    panels = [("time_ms", "time per call [ms] (bars: quartiles of repeats)", "Time (median)", True),
              ("peak_mem_mb", "peak memory above baseline [MiB]", "Peak memory", False),
              ("rel_error", "relative error vs float64 exact", "Error (median over batch)", False)]
    paired = "time_ratio" in rows and rows.time_ratio.notna().any()
    if paired:  # one eager baseline; compiled rows against its compiled form
        baselines = sorted(rows.versus.dropna().loc[lambda v: v != ""].unique(), key=len)
        versus = baselines[0] + (f" ({COMPILED} rows: {COMPILED})" if len(baselines) > 1 else "")
        panels.insert(1, ("time_ratio", f"time / {versus}", "Time over FD, timed in pairs (bars: quartiles)", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), constrained_layout=True)
    for ax, (column, ylabel, name, quartiles) in zip(axes, panels, strict=True):
        line_panel(ax, rows, x="order", y=column, line="method", styles=METHOD_STYLE, quartiles=quartiles)
        ax.set(xlabel="order T", ylabel=ylabel, title=name, xticks=sorted(rows.order.unique()))
    if paired:
        axes[1].axhline(1.0, color="grey", linestyle=":", linewidth=1)
    axes[-1].axhline(0.01, color="grey", linestyle=":", linewidth=1)
    axes[-1].annotate("1% (the paper's bound)", (axes[-1].get_xlim()[0], 0.01), xytext=(4, 3),
                      textcoords="offset points", fontsize=8, color="grey")
    legend(axes[0], title="method", fontsize=8)
    fig.suptitle(title, fontsize=10)
    note = failure_note(rows, ("method", "order"))
    if note:
        fig.text(0.01, -0.03, note, fontsize=8, color="#7f1d1d", wrap=True)
    return fig


def describe(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    if first["size"] == "user":
        model = f"{first.model} (a user's model)"
    else:
        n_chan = getattr(model_config(first.model, first["size"]), "n_chan", None) if pd.isna(first.n_chan) \
            else int(first.n_chan)  # the deep EBM's; other models have none
        width = "" if n_chan is None else f", n_chan {n_chan}"
        model = f"{first.model} ({first['size']}{width}, {first.weights} weights)"
    return (f"T-th directional derivative of log p, {model}, batch {first.batch}, {first['dtype']} on "
            f"{first.device_name} ({first.threads} threads); FD step eps per row in the CSV")


def plot(rows: pd.DataFrame, path: Path) -> Path:
    return save(figure2(rows, describe(rows)), path)


def report(frame: pd.DataFrame, out: Path) -> str:
    ok = ok_rows(frame)
    time = ok.pivot_table(index="order", columns="method", values="time_ms")
    memory = ok.pivot_table(index="order", columns="method", values="peak_mem_mb")
    error = ok.pivot_table(index="order", columns="method", values="rel_error")
    rows = pd.DataFrame({"T": time.index})
    pairs = [(exact + compiled, FD_BASELINE + compiled) for compiled in ("", COMPILED)
             for exact in ("exact-reverse", "exact-forward", "exact-taylor")]  # compiled against compiled
    pairs.insert(3, ("exact-taylor" + FUSED, FD_BASELINE))  # fused rules in an eager net against eager FD
    for exact, fd in pairs:
        if exact in time and fd in time:
            rows[f"time {exact} / {fd}"] = _time_ratios(ok, exact, fd, time).to_numpy()
            rows[f"memory {exact} / {fd}"] = (memory[exact] / memory[fd]).to_numpy()
    for method in error.columns:
        if method.startswith("fd-") or fd_variant(method)[0] == "exact-taylor":  # FD's error beside the exact one's
            rows[f"rel. error {method}"] = error[method].to_numpy()
    if "eps" in ok:
        steps = ok[ok.method == FD_BASELINE].groupby("order")["eps"].first()
        rows["FD step eps"] = steps.reindex(time.index).to_numpy()
    if "err_estimate" in ok and ok.err_estimate.notna().any():  # FD's own estimate beside its measured error
        estimate = ok.pivot_table(index="order", columns="method", values="err_estimate")
        for method in estimate.columns:
            rows[f"err. estimate {method}"] = estimate[method].reindex(time.index).to_numpy()
    inaccurate = [int(t) for t, e in error.get(FD_BASELINE, pd.Series(dtype=float)).items() if e > TRUSTWORTHY]
    caveat = (f"\n**{FD_BASELINE} is more than {TRUSTWORTHY:.0%} off the exact value at T = "
              f"{', '.join(map(str, inaccurate))}** in this dtype, even at the step used (see the step-size "
              "section): FD is cheap there, but not accurate.\n" if inaccurate else "")
    return "\n".join([
        "## Figure 2: the T-th directional derivative, exact versus FD",
        figure(out, "figure2.png", "Time, peak memory and error against the order T, one line per method (log y)."),
        "Ratios of one run (above 1: FD is cheaper); error against the float64 exact reference. Taylor mode "
        "(`exact-taylor`) is the strongest exact method: its ratio is FD's real advantage, at its error. A time "
        "ratio with quartiles [q1, q3] was timed alternately with FD in one worker, round by round, and is the "
        "median of the per-round ratios; one without, the ratio of two rows' medians:\n",
        table(rows),
        caveat,
        "\nTime per method [ms], median of repeats:\n",
        table(time.reset_index()),
    ])


def _time_ratios(ok: pd.DataFrame, exact: str, fd: str, time: pd.DataFrame) -> pd.Series:
    """Per order, ``exact``'s time over ``fd``'s: the paired ratio "median [q1, q3]" where ``exact``'s row was timed
    against ``fd`` (``time_ratio``), else the ratio of the two rows' medians (a CSV of an older run)."""
    ratio = time[exact] / time[fd]
    if "time_ratio" not in ok:
        return ratio
    paired = ok[(ok.method == exact) & (ok.versus == fd) & ok.time_ratio.notna()].set_index("order")
    text = {order: f"{r.time_ratio:.3g} [{r.time_ratio_q1:.3g}, {r.time_ratio_q3:.3g}]"
            for order, r in paired.iterrows()}
    return pd.Series([text.get(order, f"{value:.3g}") for order, value in ratio.items()], index=ratio.index)


# The error each method must stay under in the pytest-benchmark suite (float32, its quick problem): "check what you
# time", a fast wrong answer fails. Exact methods differ from the float64 reference by float32 rounding only
# (EXACT_TOLERANCE); FD by truncation + roundoff, which grows with T (see eps-sweep): at T >= 3 float32 FD is
# inherently inaccurate, so the bound there only catches a wrong answer.

def tolerance(method: str, order: int) -> float:
    if not method.startswith("fd-"):
        return EXACT_TOLERANCE
    return 0.05 if order <= 2 else 0.5


def benchmark(case: dict) -> Bench:
    """One case as a pytest-benchmark target: the timed call, then memory, error and its check."""
    if not (entry := fdsm.METHODS.entry(fd_variant(case["method"])[0])).enabled:
        raise NotImplementedError(f"{case['method']}: {entry.reason}")
    call, d_ref = derivative_call(case)

    def finish(d: torch.Tensor) -> dict:
        memory = peak_memory(call, torch.device(case["device"]))
        errors = error_columns(case, d, d_ref)
        bound = tolerance(case["method"], int(case["order"]))
        wrong = not errors["rel_error"] <= bound
        outcome = ({"status": "error", "message": f"rel_error {errors['rel_error']:.3g} is above this method's "
                                                  f"tolerance {bound:g} at T = {case['order']}: a wrong answer"}
                   if wrong else {"status": "ok"})
        return {"peak_mem_mb": memory.peak_mb, "reserved_mb": memory.reserved_mb,
                "nvml_used_mb": memory.nvml_used_mb, **errors, **outcome}

    return Bench(call=call, finish=finish)


EXPERIMENT = Experiment(
    name="derivatives",
    help="Figure 2: time, peak memory and error of the T-th directional derivative, exact vs FD, T = 1..6",
    stem="derivatives",
    png="figure2.png",
    keys=CASE_KEYS,
    columns=(*REQUIRED, *TIME_COLUMNS, *PAIRED_COLUMNS, *ERROR_COLUMNS, "eps_source", *AUTO_COLUMNS),
    default=DEFAULT,
    quick=QUICK,
    cases=cases,
    measure=measure_derivative,
    plot=plot,
    report=report,
    axes=("method", "order", "eps"),  # the step is chosen per order (and per method with --steps-from)
    # a derivatives run's step may come from its eps-sweep, which can move between runs: not a key to compare on
    compare_keys=tuple(k for k in CASE_KEYS if k != "eps"),
    benchmark=benchmark,
    aliases={"width": "n_chan"},
    numbers=("time_ms", "peak_mem_mb", "rel_error"),
)
