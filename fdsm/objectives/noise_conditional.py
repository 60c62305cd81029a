r"""Noise-conditional objectives: NCSN's annealed losses (section 6.4) and the deep EBM's multi-scale DSM (6.1).

Every sample b has its own noise level :math:`\sigma_b` (a (B,) tensor), :math:`\tilde x_b = x_b + \sigma_b
\xi_b`, and the per-sample value of the underlying objective (``fdsm.objectives.sliced``, same scaling) on
:math:`\tilde x` is weighted.

NCSN (notes section 1.4; Song & Ermon 2019), weight :math:`\sigma_b^2` (``anneal_power`` 2), levels
``ncsn_sigmas()``: geometric from 1 to 0.01, L = 10, one level drawn per sample (``draw_levels``). The score network
is called as ``score(x, cond)``, where ``cond`` (default: sigma itself) follows the stacked FD forwards, so a
network conditioned on a level index gets ``cond=labels`` (See NOTE [point-major stacked batch] in fdsm.fd):

- ``annealed_dsm_loss``: :math:`\sigma^2 \|s(\tilde x) + (\tilde x - x)/\sigma^2\|^2 / d`.
- ``annealed_ssmvr_loss``: :math:`\sigma^2 \cdot` SSMVR on :math:`\tilde x` (no denoising target), eq. (11).
- ``annealed_fd_ssmvr_loss``: :math:`\sigma^2 \cdot` FD-SSMVR on :math:`\tilde x`.

Deep EBM (MDSM, notes section 1.1), levels ``deep_ebm_sigmas(B)`` = linspace(0.05, 1.2, B) tied to the batch slot:

- ``multiscale_dsm_loss``: :math:`(\sigma_0/\sigma_b)^2 \|\nabla\log p(\tilde x) + (\tilde x - x)/\sigma_0^2\|^2/d`.
- ``multiscale_fd_dsm_loss``: :math:`(\sigma_0/\sigma_b)^2 (L_+ - L_- + 2v^\top(\tilde x - x)/\sigma_0^2)^2 /
  (4\varepsilon^2)`.

The target keeps the fixed :math:`\sigma_0 = 0.1` while the noise is :math:`\sigma_b`: that is MDSM's design, kept
(notes section 7.3). The weight is normalized so that at :math:`\sigma_b = \sigma_0` these are ``dsm_loss`` and
``fd_dsm_loss``; the released code's ``mdsm_baseline`` / ``mdsm_fd`` are ours times ``loss_coe * d / sigma0^2``
(1e-4 * d / 0.01).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdsm.objectives import sliced
from fdsm.objectives.checks import check_batch, check_reduction, checked_log_density, per_sample_sigma, reduce

CondScore = Callable[[Tensor, Tensor], Tensor]


def ncsn_sigmas(first: float = 1.0, last: float = 0.01, levels: int = 10, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> Tensor:
    """NCSN's noise levels: a geometric sequence from ``first`` to ``last``, (levels,)."""
    return torch.logspace(torch.log10(torch.tensor(first)), torch.log10(torch.tensor(last)), levels,
                          dtype=dtype, device=device)


def draw_levels(batch: int, sigmas: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One level per sample, uniformly: (labels (B,) int64, sigma (B,))."""
    labels = torch.randint(len(sigmas), (batch,), generator=generator, device=sigmas.device)
    return labels, sigmas[labels]


def deep_ebm_sigmas(batch: int, low: float = 0.05, high: float = 1.2, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """The deep EBM's per-slot noise levels, linspace(low, high, B) (notes section 3.1)."""
    return torch.linspace(low, high, batch, dtype=dtype, device=device)


def _conditioned(who: str, score: CondScore, cond: Tensor, batch: int) -> Callable[[Tensor], Tensor]:
    """x -> score(x, cond), with cond (B, ...) tiled to match a stacked (S*B, *event) input; cond checked to hold
    one entry per sample.

    See NOTE [point-major stacked batch] in fdsm.fd.
    """
    if not isinstance(cond, Tensor) or cond.dim() == 0 or cond.shape[0] != batch:
        shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
        raise ValueError(f"{who}: expected cond to be a tensor of one entry per sample, ({batch}, ...), got {shape}")

    def f(inputs: Tensor) -> Tensor:
        repeats, rest = divmod(inputs.shape[0], batch)
        if rest:
            raise ValueError(f"expected a stacked batch of a multiple of {batch} rows, got {inputs.shape[0]}")
        return score(inputs, cond.repeat(repeats, *([1] * (cond.dim() - 1))))

    return f


def _weighted(who: str, x: Tensor, sigma: Tensor, reduction: str,
              per_sample: Callable[[Tensor, Tensor], Tensor], weight: Callable[[Tensor], Tensor]) -> Tensor:
    """reduce(weight(sigma) * per_sample(x, sigma)), after the shared checks; sigma (B, 1, ..., 1)."""
    check_reduction(who, reduction)
    x = check_batch(who, x).detach()
    sig = per_sample_sigma(who, sigma, x)
    return reduce(who, weight(sig.flatten()) * per_sample(x, sig.flatten()), reduction)


def _annealed(who: str, base: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The NCSN form of a sliced score objective ``base(score, x, **kw)``: sigma^2 * base on x~ = x + sigma xi."""

    def objective(score: CondScore, x: Tensor, sigma: Tensor, *, cond: Tensor | None = None,
                  xi: Tensor | None = None, reduction: str = "mean", **kwargs) -> Tensor:
        def per_sample(x: Tensor, sig: Tensor) -> Tensor:
            x_noisy = sliced.noisy(who, x, sig.view(-1, *([1] * (x.dim() - 1))), xi)
            f = _conditioned(who, score, sig if cond is None else cond, x.shape[0])
            return base(f, x_noisy, reduction="none", **kwargs)

        return _weighted(who, x, sigma, reduction, per_sample, lambda sig: sig.pow(2))

    objective.__name__ = who.split("(")[0]
    return objective


annealed_ssmvr_loss = _annealed("annealed_ssmvr_loss(score, x, sigma)", sliced.ssmvr_score_loss)
annealed_ssmvr_loss.__doc__ = r"""NCSN's annealed SSMVR: :math:`\sigma^2` times eq. (11) on :math:`\tilde x`.
    Keywords as ``ssmvr_score_loss`` plus ``cond``, ``xi``; score(x, cond): (B, *event), (B, ...) -> (B, *event)."""
annealed_fd_ssmvr_loss = _annealed("annealed_fd_ssmvr_loss(score, x, sigma)", sliced.fd_ssmvr_loss)
annealed_fd_ssmvr_loss.__doc__ = r"""NCSN's annealed FD-SSMVR: :math:`\sigma^2` times FD-SSMVR (section 4) on
    :math:`\tilde x`. Keywords as ``fd_ssmvr_loss`` plus ``cond``, ``xi``."""


def annealed_dsm_loss(score: CondScore, x: Tensor, sigma: Tensor, *, cond: Tensor | None = None,
                      xi: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""NCSN's annealed DSM: :math:`\sigma^2 \|s(\tilde x, c) + (\tilde x - x)/\sigma^2\|^2 / d`, eq. (2)."""
    who = "annealed_dsm_loss(score, x, sigma)"

    def per_sample(x: Tensor, sig: Tensor) -> Tensor:
        f = _conditioned(who, score, sig if cond is None else cond, x.shape[0])
        return sliced.dsm_score_loss(f, x, sig, xi=xi, reduction="none")

    return _weighted(who, x, sigma, reduction, per_sample, lambda sig: sig.pow(2))


def multiscale_dsm_loss(log_density: Callable[[Tensor], Tensor], x: Tensor, sigma: Tensor, *, sigma0: float = 0.1,
                        xi: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""The deep EBM's multi-scale DSM (MDSM): :math:`(\sigma_0/\sigma)^2 \|\nabla \log p(\tilde x) +
    (\tilde x - x)/\sigma_0^2\|^2 / d`, eq. (2) with the fixed target scale sigma0 (module docstring)."""
    who = "multiscale_dsm_loss(log_density, x, sigma)"

    def per_sample(x: Tensor, sig: Tensor) -> Tensor:
        score = sliced.score_of(checked_log_density(who, log_density))
        return sliced.dsm_per_sample(who, score, x, sig, xi=xi, target_sigma=sigma0)

    return _weighted(who, x, sigma, reduction, per_sample, lambda sig: (sigma0 / sig).pow(2))


def multiscale_fd_dsm_loss(log_density: Callable[[Tensor], Tensor], x: Tensor, sigma: Tensor, *,
                           sigma0: float = 0.1, eps: float | str | None = None, v: Tensor | None = None,
                           xi: Tensor | None = None, serial: bool = False, backend: str = "auto",
                           reduction: str = "mean") -> Tensor:
    r"""The deep EBM's multi-scale FD-DSM: :math:`(\sigma_0/\sigma)^2 (L_+ - L_- + 2v^\top(\tilde x - x)/
    \sigma_0^2)^2 / (4\varepsilon^2)`, eq. (10) with the fixed target scale sigma0; one (2B) forward."""
    who = "multiscale_fd_dsm_loss(log_density, x, sigma)"

    def per_sample(x: Tensor, sig: Tensor) -> Tensor:
        return sliced.fd_dsm_per_sample(who, log_density, x, sig, eps=eps, v=v, xi=xi, serial=serial,
                                        backend=backend, target_sigma=sigma0)

    return _weighted(who, x, sigma, reduction, per_sample, lambda sig: (sigma0 / sig).pow(2))
