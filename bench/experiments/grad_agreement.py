r"""``fdsm-bench grad-agreement``: Lemma 2 measured. How well do FD parameter gradients point along the exact ones?

Lemma 2 (paper section 5) says the angle between :math:`\nabla_\theta J_{FD\text{-}SSM}(x, v; \theta)` and
:math:`\nabla_\theta J_{SSM}(x, v; \theta)` goes to zero with eps = ||v||, uniformly. Here it is measured on the
same batch x and the same directions v = eps u (u fixed unit directions), for

- FD-SSM (eq. 9) against SSM (eq. 3), and
- FD-DSM (eq. 10) against the exact DSM on the same v (``sliced_dsm_loss``, appendix B.4), with the same noise xi,

on the deep EBM and NICE (size "cpu", seeded random weights), against eps on a log grid, in float32 and float64
(``--dtypes`` takes bfloat16 and float16 too; in float16 an FD objective whose 1/eps^2 overflows, below eps = 3.9e-3,
is an ``unsupported`` row that says so):

.. math::
    \cos = \frac{\langle g_{FD}, g_{exact}\rangle}{\|g_{FD}\|\,\|g_{exact}\|}, \qquad
    g = \nabla_\theta (\text{batch-mean loss}) \text{ over all parameters, flattened.}

The exact objectives are homogeneous of degree 0 in v (each divides by eps^2), so the exact gradient is computed
once per (model, pair, dtype). In float64 the curve shows the o(eps) approach to cos = 1; in float32 roundoff in
L(x + v) - L(x - v) takes over at small eps (the U-shape of ``eps-sweep``).

Writes ``grad_agreement.csv`` (model, pair, eps, dtype, cosine, one_minus_cosine, grad_norm_ratio, status +
metadata) and ``grad_agreement.png`` (1 - cos against eps, log-log, a panel per model).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from bench.config import DTYPES, Shared, option, positive_int, some_of
from bench.experiment import Experiment
from bench.markdown import figure, ok_rows, table
from bench.plots import finish
from fdsm import objectives as obj
from fdsm.models import build, to_dtype

KEYS = ("model", "pair", "eps", "dtype", "batch", "seed", "device")
COLUMNS = ("cosine", "one_minus_cosine", "grad_norm_ratio", "status")
SIGMA = 0.1  # DSM noise level for the FD-DSM pair (NICE's sigma in table 3)
MODEL_OVERRIDES = {"deep-ebm": {}, "nice": {}}


PAIRS = ("fd-ssm/ssm", "fd-dsm/dsm")


@dataclass(frozen=True)
class GradAgreementConfig:
    models: tuple[str, ...] = option(("deep-ebm", "nice"), "models", convert=some_of("--models", MODEL_OVERRIDES))
    eps_min_exp: float = -5.0  # eps grid: 10^min .. 10^max
    eps_max_exp: float = 0.0
    eps_points: int = option(11, "eps grid points, 10^-5 .. 1 (--quick: 10^-3 .. 10^-1)", type=positive_int)
    dtypes: tuple[str, ...] = option(("float32", "float64"), "dtypes", convert=some_of("--dtypes", DTYPES))
    batch: int = option(16, "points per batch", type=positive_int)


DEFAULT = GradAgreementConfig()
QUICK = dataclasses.replace(DEFAULT, models=("nice",), eps_min_exp=-3.0, eps_max_exp=-1.0, eps_points=3, batch=4)


# ---- one measurement ------------------------------------------------------------------------------------------

@functools.cache
def _problem(model_name: str, dtype: str, batch: int, seed: int, device: str) -> tuple[nn.Module, Tensor, Tensor,
                                                                                         Tensor]:
    """(model, x, u, xi) in ``dtype``: seeded weights, x uniform in [0, 1], unit directions u, DSM noise xi."""
    torch.manual_seed(seed)
    model = build(model_name, size="cpu", **MODEL_OVERRIDES.get(model_name, {}))
    model = to_dtype(model, DTYPES[dtype], device)
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *model.event_shape)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    u = obj.draw_directions(x, 1.0, "sphere", generator=g)
    xi = torch.randn(shape, generator=g, dtype=torch.float64)
    return (model, *(t.to(device=device, dtype=DTYPES[dtype]) for t in (x, u, xi)))


def _losses(pair: str) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(exact, fd) losses of a pair as functions of (log_density, x, v, xi)."""
    if pair == "fd-ssm/ssm":
        return (lambda ld, x, v, xi: obj.ssm_loss(ld, x, v=v),
                lambda ld, x, v, xi: obj.fd_ssm_loss(ld, x, v=v, backend="torch"))
    return (lambda ld, x, v, xi: obj.sliced_dsm_loss(ld, x, SIGMA, v=v, xi=xi),
            lambda ld, x, v, xi: obj.fd_dsm_loss(ld, x, SIGMA, v=v, xi=xi, backend="torch"))


def _gradient(model: nn.Module, loss: Callable[..., Tensor], x: Tensor, v: Tensor, xi: Tensor) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(model.log_density, x, v, xi), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads,
                                                                                           strict=True)])


@functools.cache
def _exact_gradient(model_name: str, pair: str, dtype: str, batch: int, seed: int, device: str) -> Tensor:
    model, x, u, xi = _problem(model_name, dtype, batch, seed, device)
    return _gradient(model, _losses(pair)[0], x, u, xi)  # degree-0 homogeneous in v: eps does not matter


def measure_cosine(case: Mapping[str, Any]) -> dict[str, Any]:
    key = (case["model"], case["dtype"], int(case["batch"]), int(case["seed"]), case["device"])
    model, x, u, xi = _problem(*key)
    exact = _exact_gradient(case["model"], case["pair"], *key[1:])
    fd = _gradient(model, _losses(case["pair"])[1], x, float(case["eps"]) * u, xi)
    cosine = torch.nn.functional.cosine_similarity(fd.double(), exact.double(), dim=0).item()
    return {"cosine": cosine, "one_minus_cosine": 1.0 - cosine,
            "grad_norm_ratio": (fd.double().norm() / exact.double().norm()).item(),
            "parameters": exact.numel()}


# ---- the sweep and the figure ---------------------------------------------------------------------------------

def plot(rows: pd.DataFrame, path: Path) -> None:
    models = list(rows.model.drop_duplicates())
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    styles = {"float64": "-", "float32": "--"}
    colors = {"fd-ssm/ssm": "tab:orange", "fd-dsm/dsm": "tab:green"}
    for ax, model in zip(axes[0], models, strict=True):
        part = rows[(rows.model == model) & (rows.status == "ok")]
        for (pair, dtype), line in part.groupby(["pair", "dtype"], sort=False):
            line = line.sort_values("eps")
            ax.plot(line.eps, line.one_minus_cosine.clip(lower=1e-16), styles.get(dtype, ":"), marker="o",
                    markersize=4, color=colors.get(pair), label=f"{pair}, {dtype}")
        ax.axhline(0.01, color="gray", linewidth=0.8, linestyle=":")
        ax.text(ax.get_xlim()[0] if len(part) else 1e-5, 0.012, " cos = 0.99", fontsize=8, color="gray")
        ax.set(xscale="log", yscale="log", xlabel="eps = ||v||", ylabel="1 - cos(grad FD, grad exact)",
               title=f"{model}, B = {part.batch.iloc[0] if len(part) else ''}")
        ax.grid(True, which="major", alpha=0.35)
        ax.legend(fontsize=8)
    fig.suptitle("Lemma 2: FD parameter gradients align with the exact ones as eps -> 0 (same x, v, xi); "
                 "float32 roundoff takes over at small eps", fontsize=10)
    finish(fig, rows, ("model", "pair", "eps", "dtype"), path)


def cases(config: GradAgreementConfig, shared: Shared) -> list[dict[str, Any]]:
    grid = np.logspace(config.eps_min_exp, config.eps_max_exp, config.eps_points)
    return [{"model": m, "pair": p, "eps": float(f"{e:.6g}"), "dtype": d, "batch": config.batch, "seed": shared.seed,
             "device": str(shared.device)}
            for m in config.models for p in PAIRS for d in config.dtypes for e in grid]


def summary(rows: pd.DataFrame) -> str:
    return rows[["model", "pair", "dtype", "eps", "cosine", "grad_norm_ratio", "status"]].to_string(
        index=False, float_format=lambda v: f"{v:.6g}")


def report(frame: pd.DataFrame, out: Path) -> str:
    ok = ok_rows(frame)
    pivot = ok.pivot_table(index=["model", "pair", "dtype"], columns="eps", values="cosine").reset_index()
    pivot.columns = [c if isinstance(c, str) else f"eps={c:g}" for c in pivot.columns]
    return "\n".join([
        "## Gradient agreement (Lemma 2): FD against exact parameter gradients",
        figure(out, "grad_agreement.png", "Cosine between FD and exact parameter gradients against the step."),
        table(pivot, floatfmt=".5f"),
    ])


EXPERIMENT = Experiment(
    name="grad-agreement",
    help="Lemma 2: cosine between FD and exact parameter gradients (FD-SSM vs SSM, FD-DSM vs DSM) against eps",
    stem="grad_agreement",
    keys=KEYS,
    columns=COLUMNS,
    default=DEFAULT,
    quick=QUICK,
    cases=cases,
    measure=measure_cosine,
    plot=plot,
    summary=summary,
    report=report,
    axes=("model", "pair", "dtype", "eps"),
    isolate=False,  # no timing and no memory: in this process
    numbers=("cosine", "grad_norm_ratio"),
    ignores=("dtype", "repeats"),  # its dtypes are --dtypes; it times nothing
)
