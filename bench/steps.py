r"""The default FD step :math:`\varepsilon = \lVert v \rVert` per order, stencil accuracy and dtype.

NOTE [default FD step]
A central stencil of accuracy p for the T-th derivative, evaluated in a dtype of unit roundoff u, has two errors
(anchors section 5): truncation :math:`\approx C_1 h^p` and roundoff :math:`\approx C_2\, u / h^T` (each
:math:`f(x + \gamma_i v)` carries a relative rounding error of order u, amplified by the weights, which grow like
:math:`2^T`, and divided by the :math:`h^T` of the derivative). Their sum is smallest at

.. math::
    h^* = \Big(\frac{T C_2}{p\, C_1}\Big)^{1/(T+p)} u^{1/(T+p)} = L\, u^{1/(T+p)},
    \qquad \text{error}^* \propto u^{p/(T+p)}.

The exponent is theory; the length ``L`` depends on the function (how far along a unit direction it stays
polynomial, relative to its size). ``STEP_SCALE`` is L for the deep EBM at the harness's size with random weights,
calibrated with ``fdsm-bench eps-sweep``: its float32 and float64 optima, T = 1..4, p = 2, fall at L between about
200 and 1200 (the log-density of a freshly initialized network is nearly linear in its input, so it tolerates long
steps). For another model, or trained weights, run ``eps-sweep`` on it and let ``derivatives --steps-from
eps_sweep.csv`` take the best measured step per order (``best_steps``); the main job does this.

>>> round(default_step(2, 2, torch.float32), 2)  # L * (2^-24)^(1/4)
7.81
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bench.csvlog import as_key, read_rows

STEP_SCALE = 500.0  # L of NOTE [default FD step], calibrated on the deep EBM with random weights


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = machine epsilon / 2 (round to nearest): 2^-24 for float32, 2^-53 for float64, 2^-8 for bfloat16."""
    return torch.finfo(dtype).eps / 2


def default_step(order: int, accuracy: int, dtype: torch.dtype, scale: float = STEP_SCALE) -> float:
    """h* = L u^(1/(T+p)): the step that balances truncation against roundoff (NOTE [default FD step])."""
    if order < 1 or accuracy < 1:
        raise ValueError(f"default_step(order, accuracy, dtype): expected order >= 1 and accuracy >= 1, "
                         f"got order={order}, accuracy={accuracy}")
    return scale * unit_roundoff(dtype) ** (1.0 / (order + accuracy))


# The columns of an eps-sweep row that name the function and points it measured (the seed draws random weights and
# the batch): a step is only transferable to the same ones.
FUNCTION_COLUMNS = ("model", "size", "n_chan", "weights", "seed", "device")


def best_steps(eps_sweep_csv: Path, problem: Mapping[str, Any], *, dtype: str, accuracy: int,
               method: str | None = None) -> dict[int, float]:
    """{T: the step with the smallest median error} among the ``ok`` rows of an ``eps-sweep`` CSV measured on the
    same function as ``problem`` (its ``FUNCTION_COLUMNS``: model, size, n_chan, weights, seed, device), in the same
    dtype, with the same stencil accuracy (and, where given, the same ``method``: ``fd-batched+richardson`` rows
    evaluate another stencil). Empty where the sweep has none."""
    rows = read_rows(eps_sweep_csv)  # checked; an older sweep's width and checkpoint paths in today's terms
    if rows is None:
        return {}
    needed = ("status", "dtype", "accuracy", "order", "eps", "rel_error", *FUNCTION_COLUMNS,
              *(("method",) if method is not None else ()))
    if missing := [column for column in needed if column not in rows]:
        raise ValueError(f"{eps_sweep_csv}: not an eps_sweep.csv of fdsm-bench eps-sweep: it has no column "
                         f"{', '.join(missing)}")
    if "time_ms" in rows:  # a derivatives.csv has every column above, and one step per order: no sweep of it
        raise ValueError(f"{eps_sweep_csv}: not an eps_sweep.csv of fdsm-bench eps-sweep: it has timings "
                         "(time_ms), as a derivatives.csv does")
    same = (rows["status"] == "ok") & (rows["dtype"] == dtype) & (rows["accuracy"] == accuracy)
    if method is not None:
        same &= rows["method"] == method
    for column in FUNCTION_COLUMNS:
        same &= rows[column].map(as_key) == as_key(problem[column])
    rows = rows[same].dropna(subset=["rel_error"])
    best = rows.loc[rows.groupby("order")["rel_error"].idxmin()]
    return {int(t): float(e) for t, e in zip(best["order"], best["eps"], strict=True)}
