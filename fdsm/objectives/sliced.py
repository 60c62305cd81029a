r"""Score-matching objectives on a log-density or a score network, exact and by finite differences (FD).

NOTE [one scaling convention]
Every objective is the paper's equation, *per dimension*: with isotropic directions,
:math:`\mathbb E[v v^\top] = (\varepsilon^2/d) I`, each sliced objective divides by :math:`C_v = \varepsilon^2`
(eq. 3), so its expectation is :math:`J_{SM}/d`, and DSM carries the 1/d of eq. (2). The FD objectives are their
gradient counterparts with the derivatives replaced by central differences on the same v, so each pair has the
same expectation up to o(eps). Against the released code (notes section 7): DeepEBM ``ssm_fd`` equals ours, the
SSM repo's FD-SSM is ours times d, and ``mdsm_*`` is ours times ``loss_coe * d / sigma0^2`` (see
``noise_conditional``).

================================= ========== ====================================================================
objective                         paper      per-sample value, expectation
================================= ========== ====================================================================
sm_loss(log_density, x)           eq. (1)    tr H + 1/2 ||s||^2; J_SM
ssm_loss                          eq. (3)    [v^T H v + 1/2 (v^T s)^2] / eps^2; J_SM / d
fd_ssm_loss                       eq. (9)    [L+ + L- - 2 L0 + (L+ - L-)^2 / 8] / eps^2; J_SM / d + o(eps)
ssmvr_loss                        eq. (11)   v^T H v / eps^2 + ||s||^2 / (2d); J_SM / d
dsm_loss(log_density, x, sigma)   eq. (2)    ||s(x~) + (x~ - x)/sigma^2||^2 / d; J_DSM
sliced_dsm_loss                   app. B.4   (v^T s(x~) + v^T (x~ - x)/sigma^2)^2 / eps^2; J_DSM
fd_dsm_loss                       eq. (10)   (L+ - L- + 2 v^T (x~ - x)/sigma^2)^2 / (4 eps^2); J_DSM + o(eps)
ssmvr_score_loss(score, x)        eq. (11)   v^T (grad s) v / eps^2 + ||s||^2 / (2d); J_SM / d
fd_ssmvr_loss(score, x)           sec. 4     ||s+ + s-||^2 / (8d) + v^T (s+ - s-) / (2 eps^2); J_SM / d + o(eps)
dsm_score_loss(score, x, sigma)   eq. (2)    dsm_loss with a score network
================================= ========== ====================================================================

Here s = grad_x log p, H = grad_x^2 log p, L+- = log p(x +- v), L0 = log p(x), s+- = s(x +- v), d = prod(event).
The FD objectives evaluate their points in one forward of the stacked (S*B) batch (the paper's "parallel" FD,
appendix C.1), or with ``serial=True`` in S separate forwards (the starred rows of table 2). ``backend`` picks the
fused loss heads of ``kernels`` ("triton"), plain torch ("torch"), or the kernels' own choice ("auto": Triton on
CUDA tensors, their torch reference otherwise); all three give the same loss and gradients.

x is data: the objectives differentiate with respect to a detached copy of it, and the gradients of the returned
loss flow to the parameters inside the callable only.

NOTE [exact derivatives by Taylor mode]
The exact sliced objectives (``ssm_loss``, ``ssmvr_loss``, ``ssmvr_score_loss``, ``sliced_dsm_loss``) take
``method="taylor"``: the same exact objective, with its derivatives from one Taylor-mode pass
(``fdsm.taylor.taylor_coefficients``) instead of nested reverse mode. For SSM, D^1 = v^T s and D^2 = v^T H v both
come from one degree-2 jet of log p along v; for SSMVR on a score network, s and (grad s) v from one degree-1 jet of
s (a forward-mode pass); for sliced DSM, D^1 from one degree-1 jet of log p at x~. The training step's backward is
then a first-order backward through that pass: no double backward (and, unlike one, something ``torch.compile`` can
take). SSMVR on a log-density still needs the whole score for its ||s||^2, one create_graph backward; only its
v^T H v comes from the jet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

import kernels
from fdsm import fd
from fdsm.objectives.checks import (
    auto_directions,
    check_batch,
    check_choice,
    check_flag,
    check_reduction,
    checked_log_density,
    checked_score,
    directions,
    event_dim,
    per_sample_sigma,
    reduce,
)
from fdsm.stencils import central_stencil
from fdsm.taylor.propagate import coefficients
from kernels.backend import BACKENDS

Fn = Callable[[Tensor], Tensor]

# The FD points of section 4: FD-SSM uses {x - v, x, x + v}; FD-DSM and FD-SSMVR use {x - v, x + v}.
THREE_POINT = central_stencil(2)  # offsets (-1, 0, 1), weights (1, -2, 1): v^T H v + O(eps^4)
TWO_POINT = central_stencil(1)  # offsets (-1, 1), weights (-1/2, 1/2): v^T s + O(eps^3)
_MINUS, _ZERO, _PLUS = 0, 1, 2  # rows of the three-point outputs
_M, _P = 0, 1  # rows of the two-point outputs
assert THREE_POINT.offsets == (-1.0, 0.0, 1.0) and TWO_POINT.offsets == (-1.0, 1.0)


# ---- shared parts ---------------------------------------------------------------------------------------------

def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product: (B, *event) x (B, *event) -> (B,)."""
    return (a * b).flatten(1).sum(1)


def _as_data(x: Tensor) -> Tensor:
    return x.detach().requires_grad_(True)


def _grad(out: Tensor, x: Tensor) -> Tensor:
    r""":math:`\nabla_x` of each sample's out_b, graph kept; out: (B,) -> (B, *event). Samples are independent,
    so the gradient of the batch sum holds every per-sample gradient. Where out does not depend on x (a linear
    log-density's score, or one of the parameters alone) it is zeros in out's graph, so that a loss built from it
    still reaches the parameters, with zero gradients, as the FD and Taylor forms do."""
    if not out.requires_grad:  # out depends on neither x nor a parameter
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True, allow_unused=True)
    return (0 * out.sum()).expand_as(x) if g is None else g


def score_of(log_density: Fn) -> Fn:
    r"""The score :math:`x \mapsto \nabla_x \log p(x)` of a log-density, graph kept, at a requires-grad copy of x."""

    def score(x: Tensor) -> Tensor:
        x = _as_data(x)
        return _grad(log_density(x), x)

    return score


def _curvature(s: Tensor, x: Tensor, v: Tensor) -> Tensor:
    r""":math:`v^\top \nabla_x (v^\top s(x))`, the Hessian-vector term; s, x, v: (B, *event) -> (B,)."""
    return _dot(_grad(_dot(s, v), x), v)


def noisy(who: str, x: Tensor, sigma: Tensor, xi: Tensor | None) -> Tensor:
    r"""Detached :math:`\tilde x = x + \sigma \xi`, xi ~ N(0, I) unless given; sigma (B, 1, ..., 1) -> (B, *event)."""
    if xi is None:
        xi = torch.randn_like(x)
    elif not isinstance(xi, Tensor) or xi.shape != x.shape:
        raise ValueError(f"{who}: expected xi of x's shape {tuple(x.shape)}, "
                         f"got {tuple(xi.shape) if isinstance(xi, Tensor) else type(xi).__name__}")
    return (x + sigma * xi).detach()


def check_fd_options(who: str, serial: bool, backend: str) -> None:
    """The options every FD objective takes, checked on every path (``backend`` even where eps="auto" leaves the
    fused heads unused): serial a bool, backend one of ``BACKENDS``."""
    check_flag(who, "serial", serial)
    check_choice(who, "backend", backend, BACKENDS)


def fused_head(name: str, backend: str) -> Callable[..., Tensor] | None:
    """``kernels.<name>`` bound to ``backend`` ("auto": the kernels pick Triton or their torch reference), or None
    for the plain-torch path ("torch"); backend already checked (``check_fd_options``)."""
    if backend == "torch":
        return None
    return functools.partial(getattr(kernels, name), backend=backend)


# How the exact objectives differentiate: NOTE [exact derivatives by Taylor mode].
EXACT_METHODS = ("reverse", "taylor")


# ---- integrands shared by each exact / FD pair ----------------------------------------------------------------

def _ssm_integrand(first: Tensor, second: Tensor, eps2: float) -> Tensor:
    r"""Eq. (3)/(9): :math:`[D^2 + \tfrac12 (D^1)^2] / \varepsilon^2`, with :math:`D^1 \approx v^\top s`,
    :math:`D^2 \approx v^\top H v`; (B,) -> (B,)."""
    return (second + 0.5 * first.pow(2)) / eps2


def _ssmvr_integrand(curvature: Tensor, s_hat: Tensor, eps2: float) -> Tensor:
    r"""Eq. (11): :math:`v^\top \nabla s\, v / \varepsilon^2 + \|\hat s\|^2 / (2d)`; (B,), (B, *event) -> (B,)."""
    return curvature / eps2 + 0.5 * s_hat.flatten(1).pow(2).sum(1) / event_dim(s_hat)


def _sliced_dsm_integrand(first: Tensor, v_dot_delta: Tensor, sigma2: Tensor, eps2: float) -> Tensor:
    r"""Eq. (10): :math:`(D^1 + v^\top(\tilde x - x)/\sigma^2)^2 / \varepsilon^2`; (B,) -> (B,)."""
    return (first + v_dot_delta / sigma2).pow(2) / eps2


# ---- exact objectives -----------------------------------------------------------------------------------------

def sm_loss(log_density: Fn, x: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Exact score matching, eq. (1): :math:`\mathrm{tr}\,\nabla_x^2 \log p(x) + \tfrac12\|\nabla_x \log p(x)\|^2`.

    Expectation :math:`J_{SM}`. The Hessian trace costs d extra backward passes (one per coordinate), so this is
    the evaluation metric, not a training objective for large d. log_density: (B, *event) -> (B,).
    """
    who = "sm_loss(log_density, x)"
    check_reduction(who, reduction)
    x = _as_data(check_batch(who, x))
    s = _grad(checked_log_density(who, log_density)(x), x).flatten(1)  # (B, d)
    trace = sum(_grad(s[:, k], x).flatten(1)[:, k] for k in range(s.shape[1]))  # sum_k d s_k / d x_k: (B,)
    return reduce(who, trace + 0.5 * s.pow(2).sum(1), reduction)


def ssm_loss(log_density: Fn, x: Tensor, *, eps: float | None = None, v: Tensor | None = None,
             noise: str = "sphere", method: str = "reverse", reduction: str = "mean") -> Tensor:
    r"""Sliced score matching, eq. (3) divided by :math:`C_v = \varepsilon^2`:
    :math:`[v^\top \nabla_x^2 \log p\, v + \tfrac12 (v^\top \nabla_x \log p)^2] / \varepsilon^2`.

    Expectation :math:`J_{SM}/d` for any ``noise`` (sphere, gaussian, rademacher). ``method="reverse"``: two nested
    reverse passes (create_graph), the paper's gradient-based SSM; ``"taylor"``: :math:`D^1 = v^\top s` and
    :math:`D^2 = v^\top H v` from one degree-2 jet (NOTE [exact derivatives by Taylor mode]). eps (default 1) only
    scales v; the loss does not depend on it, but it must be a positive number whose 1/eps^2 is within x's dtype
    (else ``fdsm.NotSupported``, as in the FD objectives: ``checks.directions``).
    """
    who = "ssm_loss(log_density, x)"
    check_reduction(who, reduction)
    check_choice(who, "method", method, EXACT_METHODS)
    x = _as_data(check_batch(who, x))
    v, eps2 = directions(who, x, eps, v, noise, default_eps=1.0)
    if method == "taylor":
        d = coefficients(checked_log_density(who, log_density), x.detach(), v, 2)  # (3, B): D^0..D^2
        return reduce(who, _ssm_integrand(d[1], d[2], eps2), reduction)
    s = _grad(checked_log_density(who, log_density)(x), x)
    return reduce(who, _ssm_integrand(_dot(s, v), _curvature(s, x, v), eps2), reduction)


def ssmvr_loss(log_density: Fn, x: Tensor, *, eps: float | None = None, v: Tensor | None = None,
               noise: str = "sphere", method: str = "reverse", reduction: str = "mean") -> Tensor:
    r"""SSM with variance reduction, eq. (11) on :math:`s = \nabla_x \log p`:
    :math:`v^\top \nabla_x^2 \log p\, v / \varepsilon^2 + \|s\|^2 / (2d)`. Expectation :math:`J_{SM}/d`.

    ``method="taylor"``: :math:`v^\top H v` from one degree-2 jet instead of a second create_graph backward (NOTE
    [exact derivatives by Taylor mode]); :math:`\|s\|^2` needs the whole score, one create_graph backward either way.
    """
    who = "ssmvr_loss(log_density, x)"
    check_reduction(who, reduction)
    check_choice(who, "method", method, EXACT_METHODS)
    x = _as_data(check_batch(who, x))
    v, eps2 = directions(who, x, eps, v, noise, default_eps=1.0)
    log_p = checked_log_density(who, log_density)
    s = _grad(log_p(x), x)
    if method == "taylor":
        curvature = coefficients(log_p, x.detach(), v, 2)[2]  # D^2 = v^T H v: (B,)
    else:
        curvature = _curvature(s, x, v)
    return reduce(who, _ssmvr_integrand(curvature, s, eps2), reduction)


def ssmvr_score_loss(score: Fn, x: Tensor, *, eps: float | None = None, v: Tensor | None = None,
                     noise: str = "sphere", method: str = "reverse", reduction: str = "mean") -> Tensor:
    r"""SSMVR for a score network, eq. (11): :math:`v^\top \nabla_x s(x)\, v / \varepsilon^2 + \|s(x)\|^2/(2d)`.

    Expectation :math:`J_{SM}/d` of the density whose score s is. score: (B, *event) -> (B, *event).
    ``method="reverse"``: :math:`v^\top \nabla_x (v^\top s)` by a create_graph backward; ``"taylor"``: s and
    :math:`(\nabla_x s) v` from one degree-1 jet, a forward-mode pass (NOTE [exact derivatives by Taylor mode]).
    """
    who = "ssmvr_score_loss(score, x)"
    check_reduction(who, reduction)
    check_choice(who, "method", method, EXACT_METHODS)
    x = _as_data(check_batch(who, x))
    v, eps2 = directions(who, x, eps, v, noise, default_eps=1.0)
    if method == "taylor":
        d = coefficients(checked_score(who, score), x.detach(), v, 1)  # (2, B, *event): s, (grad s) v
        return reduce(who, _ssmvr_integrand(_dot(d[1], v), d[0], eps2), reduction)
    s = checked_score(who, score)(x)
    return reduce(who, _ssmvr_integrand(_curvature(s, x, v), s, eps2), reduction)


def dsm_per_sample(who: str, score: Fn, x: Tensor, sigma: float | Tensor, *, xi: Tensor | None,
                   target_sigma: float | Tensor | None = None) -> Tensor:
    r"""Per-sample DSM, eq. (2), with the target :math:`(\tilde x - x)/\sigma_t^2`, sigma_t = target_sigma or sigma;
    (B,). ``score`` gets a detached x~ (a log-density's score takes its own input gradient: ``score_of``)."""
    x = check_batch(who, x).detach()
    sig = per_sample_sigma(who, sigma, x)
    target = sig if target_sigma is None else per_sample_sigma(who, target_sigma, x, name="sigma0")
    x_noisy = noisy(who, x, sig, xi)
    residual = score(x_noisy) + (x_noisy - x) / target.pow(2)  # (B, *event)
    return residual.flatten(1).pow(2).sum(1) / event_dim(x)


def dsm_loss(log_density: Fn, x: Tensor, sigma: float | Tensor, *, xi: Tensor | None = None,
             reduction: str = "mean") -> Tensor:
    r"""Denoising score matching, eq. (2): :math:`\|\nabla \log p(\tilde x) + (\tilde x - x)/\sigma^2\|^2 / d`
    with :math:`\tilde x = x + \sigma\xi`, :math:`\xi \sim N(0, I)` (or the given ``xi``).

    Expectation :math:`J_{DSM}`. sigma: a float or a per-sample (B,) tensor, > 0.
    """
    who = "dsm_loss(log_density, x, sigma)"
    check_reduction(who, reduction)
    per_sample = dsm_per_sample(who, score_of(checked_log_density(who, log_density)), x, sigma, xi=xi)
    return reduce(who, per_sample, reduction)


def dsm_score_loss(score: Fn, x: Tensor, sigma: float | Tensor, *, xi: Tensor | None = None,
                   reduction: str = "mean") -> Tensor:
    r"""Denoising score matching, eq. (2), for a score network:
    :math:`\|s(\tilde x) + (\tilde x - x)/\sigma^2\|^2 / d`."""
    who = "dsm_score_loss(score, x, sigma)"
    check_reduction(who, reduction)
    return reduce(who, dsm_per_sample(who, checked_score(who, score), x, sigma, xi=xi), reduction)


def sliced_dsm_loss(log_density: Fn, x: Tensor, sigma: float | Tensor, *, eps: float | None = None,
                    v: Tensor | None = None, noise: str = "sphere", xi: Tensor | None = None,
                    method: str = "reverse", reduction: str = "mean") -> Tensor:
    r"""DSM projected on v (appendix B.4), the exact counterpart of FD-DSM on the same v:
    :math:`(v^\top \nabla \log p(\tilde x) + v^\top(\tilde x - x)/\sigma^2)^2 / \varepsilon^2`.

    Expectation :math:`J_{DSM}`. ``fdsm-bench grad-agreement`` compares FD-DSM against it per (x, xi, v).
    ``method="taylor"``: :math:`D^1 = v^\top \nabla \log p(\tilde x)` from one degree-1 jet, a forward-mode pass,
    in place of a create_graph backward (NOTE [exact derivatives by Taylor mode]).
    """
    who = "sliced_dsm_loss(log_density, x, sigma)"
    check_reduction(who, reduction)
    check_choice(who, "method", method, EXACT_METHODS)
    x = check_batch(who, x).detach()
    sig = per_sample_sigma(who, sigma, x)
    v, eps2 = directions(who, x, eps, v, noise, default_eps=1.0)
    x_noisy = _as_data(noisy(who, x, sig, xi))
    log_p = checked_log_density(who, log_density)
    if method == "taylor":
        first = coefficients(log_p, x_noisy.detach(), v, 1)[1]  # D^1 = v^T s(x~): (B,)
    else:
        first = _dot(_grad(log_p(x_noisy), x_noisy), v)
    return reduce(who, _sliced_dsm_integrand(first, _dot(v, x_noisy - x), sig.flatten().pow(2), eps2), reduction)


# ---- finite-difference objectives -----------------------------------------------------------------------------

def _directions(who: str, f: Fn, x: Tensor, eps: float | str | None, v: Tensor | None, order: int
                ) -> tuple[Tensor, float | Tensor]:
    """v and eps^2 of an FD objective: ``directions``, or with ``eps="auto"`` the automatic step per sample for
    its central stencil of ``order`` (``auto_directions``: eps^2 is then a (B,) tensor, and the fused heads,
    which take one scale, give way to the torch path). ``f``: a ``stacked=True`` checked callable."""
    if isinstance(eps, str):
        if eps != "auto":
            raise ValueError(f"{who}: expected eps to be a positive number or 'auto', got {eps!r}")
        return auto_directions(who, f, x, v, order)
    return directions(who, x, eps, v, "sphere", default_eps=0.1, auto=True)


def fd_ssm_loss(log_density: Fn, x: Tensor, *, eps: float | str | None = None, v: Tensor | None = None,
                serial: bool = False, backend: str = "auto", reduction: str = "mean") -> Tensor:
    r"""FD-SSM, eq. (9): :math:`[L_+ + L_- - 2L_0 + \tfrac18 (L_+ - L_-)^2] / \varepsilon^2`, with
    :math:`L_\pm = \log p(x \pm v)`, :math:`L_0 = \log p(x)`, v uniform on the eps-sphere (default eps = 0.1).

    These are the central stencils of orders 2 and 1 (Theorem 1) on the same three points, evaluated in one
    forward of the stacked (3B, *event) batch. Expectation :math:`J_{SM}/d + o(\varepsilon)`; exact for a
    quadratic log p. ``eps="auto"``: each sample's step is the automatic one of its second difference
    (``fdsm.fd_error``, detached; its probe forwards come first), and each divides by its own eps^2.
    """
    who = "fd_ssm_loss(log_density, x)"
    check_reduction(who, reduction)
    check_fd_options(who, serial, backend)
    x = check_batch(who, x).detach()
    v, eps2 = _directions(who, checked_log_density(who, log_density, stacked=True), x, eps, v, order=2)
    lp = fd.stencil_outputs(checked_log_density(who, log_density, stacked=not serial), x, v, THREE_POINT,
                            serial=serial)  # (3, B)
    head = fused_head("fd_ssm_head", backend) if not isinstance(eps2, Tensor) else None
    if head is not None:
        per_sample = head(lp[_PLUS], lp[_MINUS], lp[_ZERO], scale=1.0 / eps2)
    else:
        first = fd.apply_stencil(lp[[_MINUS, _PLUS]], TWO_POINT)  # (L+ - L-) / 2
        per_sample = _ssm_integrand(first, fd.apply_stencil(lp, THREE_POINT), eps2)  # L+ + L- - 2 L0
    return reduce(who, per_sample, reduction)


def fd_dsm_per_sample(who: str, log_density: Fn, x: Tensor, sigma: float | Tensor, *, eps: float | str | None,
                      v: Tensor | None, xi: Tensor | None, serial: bool, backend: str,
                      target_sigma: float | Tensor | None = None) -> Tensor:
    r"""Per-sample FD-DSM, eq. (10), with the target :math:`(\tilde x - x)/\sigma_t^2`; (B,)."""
    check_fd_options(who, serial, backend)
    x = check_batch(who, x).detach()
    sig = per_sample_sigma(who, sigma, x)
    target2 = (sig if target_sigma is None else per_sample_sigma(who, target_sigma, x, name="sigma0")
               ).flatten().pow(2)  # (B,)
    if not isinstance(eps, str):  # drawn before the noise, as always (the same seeded draws)
        v, eps2 = directions(who, x, eps, v, "sphere", default_eps=0.1, auto=True)
    x_noisy = noisy(who, x, sig, xi)
    if isinstance(eps, str):  # eps="auto": the step of the points the stencil runs at
        v, eps2 = _directions(who, checked_log_density(who, log_density, stacked=True), x_noisy, eps, v, order=1)
    lp = fd.stencil_outputs(checked_log_density(who, log_density, stacked=not serial), x_noisy, v, TWO_POINT,
                            serial=serial)  # (2, B)
    v_dot_delta = _dot(v, x_noisy - x)
    head = fused_head("fd_dsm_head", backend) if not isinstance(eps2, Tensor) else None
    if head is not None:
        return head(lp[_P], lp[_M], v_dot_delta, target2.sqrt(), scale=0.25 / eps2)
    return _sliced_dsm_integrand(fd.apply_stencil(lp, TWO_POINT), v_dot_delta, target2, eps2)


def fd_dsm_loss(log_density: Fn, x: Tensor, sigma: float | Tensor, *, eps: float | str | None = None,
                v: Tensor | None = None, xi: Tensor | None = None, serial: bool = False, backend: str = "auto",
                reduction: str = "mean") -> Tensor:
    r"""FD-DSM, eq. (10): :math:`(L_+ - L_- + 2 v^\top(\tilde x - x)/\sigma^2)^2 / (4\varepsilon^2)`, with
    :math:`L_\pm = \log p(\tilde x \pm v)`, v uniform on the eps-sphere (default eps = 0.1).

    One forward of the stacked (2B, *event) batch, no second-order graph. Expectation
    :math:`J_{DSM} + o(\varepsilon)`.
    """
    who = "fd_dsm_loss(log_density, x, sigma)"
    check_reduction(who, reduction)
    per_sample = fd_dsm_per_sample(who, log_density, x, sigma, eps=eps, v=v, xi=xi, serial=serial, backend=backend)
    return reduce(who, per_sample, reduction)


def fd_ssmvr_loss(score: Fn, x: Tensor, *, eps: float | str | None = None, v: Tensor | None = None,
                  serial: bool = False, backend: str = "auto", reduction: str = "mean") -> Tensor:
    r"""FD-SSMVR (section 4): :math:`\|s_+ + s_-\|^2/(8d) + v^\top(s_+ - s_-)/(2\varepsilon^2)`, with
    :math:`s_\pm = s(x \pm v)`, v uniform on the eps-sphere (default eps = 0.1).

    One forward of the stacked (2B, *event) batch. Expectation :math:`J_{SM}/d + o(\varepsilon)`.
    """
    who = "fd_ssmvr_loss(score, x)"
    check_reduction(who, reduction)
    check_fd_options(who, serial, backend)
    x = check_batch(who, x).detach()
    stacked_score = checked_score(who, score, stacked=True)
    v, eps2 = _directions(who, lambda z: stacked_score(z).flatten(1), x, eps, v, order=1)
    s = fd.stencil_outputs(checked_score(who, score, stacked=not serial), x, v, TWO_POINT,
                           serial=serial)  # (2, B, *event)
    head = fused_head("fd_ssmvr_head", backend) if not isinstance(eps2, Tensor) else None
    if head is not None:
        per_sample = head(s[_P].flatten(1), s[_M].flatten(1), v.flatten(1), eps2 ** 0.5)
    else:
        curvature = _dot(fd.apply_stencil(s, TWO_POINT), v)  # v^T (s+ - s-) / 2
        per_sample = _ssmvr_integrand(curvature, 0.5 * (s[_P] + s[_M]), eps2)
    return reduce(who, per_sample, reduction)
