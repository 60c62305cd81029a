r"""``fdsm-bench eps-sweep``: the error of FD derivatives against the step, per order, dtype and stencil accuracy.

For each order T, stencil accuracy p, dtype and step :math:`\varepsilon = \lVert v\rVert` on a log grid, the
T-th directional derivative of the deep EBM's log-density is computed by ``fd-batched`` and compared with the exact
float64 reference (``bench.derivative_case``). The error is the sum of truncation, falling like
:math:`\varepsilon^p` as the step shrinks, and roundoff, growing like :math:`u/\varepsilon^T`; the curve is a U
whose bottom sits near :math:`h^* = L u^{1/(T+p)}` (NOTE [default FD step] in ``bench.steps``), marked on the plot.

Every row also carries ``err_estimate``, FD's own estimate of its relative error at that step (``fdsm.fd_estimate``
with ``step=None``: truncation from the same stencil at h and h/2, roundoff from u |f|, one probe forward), which the
figure draws against the measured error. ``--richardson`` sweeps the Richardson stencil instead (accuracy p -> p + 2,
method ``fd-batched+richardson``), the step-size picture of ``derivatives --richardson``.

Writes ``eps_sweep.csv`` (one row per case, resumable) and ``eps_sweep.png`` (one panel per (p, T), one line per
dtype, with h*, the best measured step of each dtype, the 1% line and a slope-p guide; thin dotted lines: the
estimate of each dtype).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.config import (
    DTYPES,
    Shared,
    UsageError,
    bounded_orders,
    central_accuracies,
    check_step_in_range,
    option,
    positive,
    positive_int,
    some_of,
)
from bench.derivative_case import (
    CASE_KEYS,
    ERROR_COLUMNS,
    RICHARDSON,
    ProblemConfig,
    measure_error,
    problem_columns,
)
from bench.experiment import Experiment
from bench.markdown import TRUSTWORTHY, figure, ok_rows, table
from bench.plots import DTYPE_STYLE, failure_note, legend, line_panel, save
from bench.steps import default_step

REQUIRED = ("model", "method", "order", "eps", "accuracy", "dtype", "rel_error", "status")  # DESIGN.md


@dataclass(frozen=True)
class EpsSweepConfig(ProblemConfig):
    # more points than the timing sweep: the median error is the product here
    batch: int = option(8, "points per case", type=positive_int)
    # all of Figure 2's orders, so that its steps can come from here
    orders: tuple[int, ...] = option((1, 2, 3, 4, 5, 6), "orders T", convert=bounded_orders("--orders"))
    dtypes: tuple[str, ...] = option(("float64", "float32", "bfloat16"), "dtypes (the shared --dtype is not used)",
                                     convert=some_of("--dtypes", DTYPES))
    accuracies: tuple[int, ...] = option((2, 4), "stencil accuracies p", convert=central_accuracies("--accuracies"))
    eps_min: float = option(1e-3, "smallest step", convert=positive("--eps-min"))
    eps_max: float = option(1e3, "largest step", convert=positive("--eps-max"))
    per_decade: int = option(4, "grid points per factor of 10", type=positive_int)
    richardson: bool = option(False, "sweep the Richardson stencil of each accuracy (p -> p + 2), as "
                              "derivatives --richardson evaluates it")
    method: str = "fd-batched"

    def grid(self) -> list[float]:
        decades = np.log10(self.eps_max) - np.log10(self.eps_min)
        return [float(e) for e in np.logspace(np.log10(self.eps_min), np.log10(self.eps_max),
                                              int(round(decades * self.per_decade)) + 1)]


DEFAULT = EpsSweepConfig()
# CI smoke test: a 2-channel deep EBM, two orders, two dtypes, one accuracy, one point per decade.
QUICK = dataclasses.replace(DEFAULT, batch=2, orders=(1, 2), dtypes=("float64", "float32"),
                            accuracies=(2,), eps_min=1e-2, eps_max=1e2, per_decade=1)


def cases(config: EpsSweepConfig, shared: Shared) -> list[dict]:
    if not 0 < config.eps_min < config.eps_max:
        raise UsageError(f"--eps-min {config.eps_min} --eps-max {config.eps_max}: expected 0 < min < max")
    for dtype in config.dtypes:  # as derivatives checks its --eps: rows of |v| = 0 or inf would be error rows
        check_step_in_range("--eps-min", config.eps_min, DTYPES[dtype])
        check_step_in_range("--eps-max", config.eps_max, DTYPES[dtype])
    problem = problem_columns(config, shared)
    method = config.method + (RICHARDSON if config.richardson else "")
    return [{**problem, "method": method, "order": order, "accuracy": p, "eps": eps, "dtype": dtype}
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
        ok = rows[(rows.dtype == dtype) & (rows.status == "ok") & rows.rel_error.notna()]  # NaN: no reference
        if len(ok):
            best = ok.loc[ok.rel_error.idxmin()]
            ax.plot(best.eps, best.rel_error, marker="*", markersize=13, color=color, markeredgecolor="black",
                    linestyle="none")
            ax.annotate(f"{best.rel_error:.1e}\n@ {best.eps:.2g}", (best.eps, best.rel_error), xytext=(6, -18),
                        textcoords="offset points", fontsize=7, color=color)
    if "err_estimate" in rows:  # FD's own estimate, beside the error it estimates
        for dtype in rows.dtype.drop_duplicates():
            mine = rows[(rows.dtype == dtype) & (rows.status == "ok") & (rows.err_estimate > 0)].sort_values("eps")
            if len(mine):
                ax.plot(mine.eps, mine.err_estimate, color=DTYPE_STYLE.get(dtype, {}).get("color", "black"),
                        linestyle=":", linewidth=1.4, marker=".", markersize=3, label=f"{dtype} estimate")
    richardson = "method" in rows and rows.method.astype(str).str.endswith(RICHARDSON).any()  # accuracy p + 2
    _slope_guide(ax, rows[rows.dtype == "float64"], p + 2 if richardson else p)
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
    legend(axes[0][0], fontsize=7, loc="lower left")
    fig.suptitle(f"{title}\ndashed verticals: theoretical optimum h* = L u^(1/(T+p)) per dtype;  stars: best "
                 f"measured step;  dotted: FD's own error estimate;  green band: error <= {TRUSTWORTHY:.0%}",
                 fontsize=10)
    note = failure_note(rows, ("dtype", "order", "accuracy", "eps"))
    if note:
        fig.text(0.01, -0.02, note[:600], fontsize=7, color="#7f1d1d", wrap=True)
    return fig


def plot(rows: pd.DataFrame, path: Path) -> Path:
    first = rows.iloc[0]
    title = (f"FD error vs step: {first.method} on {first.model} ({first['size']}, {first.weights} weights), "
             f"batch {first.batch}, median over the batch, {first.device_name}")
    return save(eps_sweep_figure(rows, title), path)


def report(frame: pd.DataFrame, out: Path) -> str:
    ok = ok_rows(frame).dropna(subset=["rel_error"])
    best = ok.loc[ok.groupby(["dtype", "order", "accuracy"])["rel_error"].idxmin()]
    keep = ["dtype", "order", "accuracy", "eps", "rel_error"] + (["err_estimate"] if "err_estimate" in best else [])
    best = best[keep].rename(columns={"eps": "best step eps", "rel_error": "smallest rel. error",
                                      "err_estimate": "its estimate"})
    return "\n".join([
        "## Step size: where FD is trustworthy",
        figure(out, "eps_sweep.png", "Relative error against the step |v|, per dtype and stencil accuracy; "
                                     "the dashed lines mark the theoretical optimum step."),
        "The step with the smallest error, per dtype, order and accuracy:\n",
        table(best.sort_values(["dtype", "order", "accuracy"])),
    ])


EXPERIMENT = Experiment(
    name="eps-sweep",
    help="FD error against the step |v|: T = 1..6, float64/float32/bfloat16, stencil accuracy 2 and 4",
    stem="eps_sweep",
    keys=CASE_KEYS,
    columns=(*REQUIRED, *ERROR_COLUMNS),
    default=DEFAULT,
    quick=QUICK,
    cases=cases,
    measure=measure_error,
    plot=plot,
    report=report,
    axes=("dtype", "order", "accuracy", "eps"),
    isolate=False,  # no timing and no memory: the cases run in this process (errors still become rows)
    aliases={"width": "n_chan"},
    numbers=("rel_error",),
    ignores=("dtype", "repeats"),  # its dtypes are --dtypes; it times nothing
)
