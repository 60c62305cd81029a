"""Fused FD loss heads: the per-sample FD-SSM, FD-DSM and FD-SSMVR losses (paper section 4) from the network's
outputs at the perturbed points, and their gradients, each in one pass over its inputs.

A head is what an FD objective computes after the network: a handful of elementwise operations that PyTorch runs
as one kernel each, reading and writing the whole batch every time. One kernel per head does it in one read of
the inputs; a ``BACKWARD`` switch makes the same kernel, with the same intermediates, read the inputs and the
upstream gradient once and write every input gradient.

**FD-SSM** (eq. 9), from a = log p(x + v), b = log p(x - v), c = log p(x), all (B,), with ``scale`` = 1/eps^2:

.. math::

    \\ell = \\mathrm{scale}\\,\\Big[a + b - 2c + \\tfrac{1}{8}(a - b)^2\\Big], \\qquad
    \\partial_a \\ell = \\mathrm{scale}\\,\\big(1 + \\tfrac{d}{4}\\big),\\;
    \\partial_b \\ell = \\mathrm{scale}\\,\\big(1 - \\tfrac{d}{4}\\big),\\;
    \\partial_c \\ell = -2\\,\\mathrm{scale}, \\quad d = a - b.

**FD-DSM** (eq. 10), from a = log p(x~ + v), b = log p(x~ - v), t = v . (x~ - x), all (B,), and sigma (a float or
(B,); no gradient), with ``scale`` = 1/(4 eps^2):

.. math::

    \\ell = \\mathrm{scale}\\, u^2, \\quad u = a - b + \\frac{2t}{\\sigma^2}, \\qquad
    \\partial_a \\ell = 2\\,\\mathrm{scale}\\, u = -\\partial_b \\ell, \\;
    \\partial_t \\ell = \\frac{4\\,\\mathrm{scale}\\, u}{\\sigma^2}.

**FD-SSMVR** (section 4), from s+ = s(x + v), s- = s(x - v) and v, all (B, n), a row reduction:

.. math::

    \\ell = \\frac{\\lVert s_+ + s_- \\rVert^2}{8n} + \\frac{v^\\top s_+ - v^\\top s_-}{2\\epsilon^2}, \\qquad
    \\partial_{s_\\pm} \\ell = \\frac{s_+ + s_-}{4n} \\pm \\frac{v}{2\\epsilon^2}, \\;
    \\partial_v \\ell = \\frac{s_+ - s_-}{2\\epsilon^2}.

v gets a gradient too when it requires one (the kernel writes it only then); the objectives draw v at random and
do not ask for it.

Bytes moved, in elements (N = B for the per-sample heads, B*n for FD-SSMVR), forward:

==========  ===============  ====================================================  =============
head        fused kernel     torch reference (one kernel per operation)              expected gain
==========  ===============  ====================================================  =============
FD-SSM      read 3N, write N  a+b, 2c, -, a-b, ^2, /8, +, *scale: 20N                5x
FD-DSM      read 4N, write N  2t, /sigma^2 (2 ops), a-b, +, ^2, *scale: 19N          3.8x
FD-SSMVR    read 3N, write B  s+ + s-, ^2, sum, v*s+, sum, v*s-, sum: 14N            4.7x
==========  ===============  ====================================================  =============

Backward, FD-SSMVR reads 3N + B and writes 2N; autograd through the reference moves several times that. The
per-sample heads move kilobytes for a realistic batch and are launch-bound; their gain is in kernel count.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from kernels.backend import jit, tl, triton
from kernels.fused_op import (
    FusedOp,
    check_like,
    check_numel,
    check_shape,
    compute_dtype,
    new_output,
    scalar,
)

BLOCK = 1024  # samples per program for the per-sample heads; columns per step for the FD-SSMVR row loop

# %% Torch references: the oracle and the benchmark baseline


def fd_ssm_reference(lp_plus: Tensor, lp_minus: Tensor, lp_zero: Tensor, *, scale: float = 1.0) -> Tensor:
    """(B,) x 3 -> (B,): scale * [a + b - 2c + (a - b)^2 / 8] (eq. 9)."""
    return scale * (lp_plus + lp_minus - 2 * lp_zero + (lp_plus - lp_minus) ** 2 / 8)


def fd_dsm_reference(lp_plus: Tensor, lp_minus: Tensor, v_dot_delta: Tensor, sigma: Tensor, *,
                     scale: float = 1.0) -> Tensor:
    """(B,) x 3, sigma (B,) -> (B,): scale * (a - b + 2t / sigma^2)^2 (eq. 10)."""
    return scale * (lp_plus - lp_minus + 2 * v_dot_delta / sigma**2) ** 2


def fd_ssmvr_reference(s_plus: Tensor, s_minus: Tensor, v: Tensor, *, eps: float) -> Tensor:
    """(B, n) x 3 -> (B,): ||s+ + s-||^2 / (8n) + (v.s+ - v.s-) / (2 eps^2) (FD-SSMVR, section 4)."""
    n = s_plus.shape[1]
    return (s_plus + s_minus).square().sum(1) / (8 * n) + ((v * s_plus).sum(1) - (v * s_minus).sum(1)) / (
        2 * eps**2
    )


# %% Triton kernels
# The per-sample heads share one calling convention, so that one launcher serves both:
#   (inputs..., scale_ptr, grad_ptr, outputs..., B, BACKWARD, ACC, BLOCK)
# Forward writes the loss to the first output; backward reads the upstream gradient and writes one output per
# differentiable input.


@jit
def _fd_ssm_kernel(
    a_ptr,  # (B,) log p(x + v)
    b_ptr,  # (B,) log p(x - v)
    c_ptr,  # (B,) log p(x)
    scale_ptr,  # (1,) scale, 1/eps^2 in eq. 9
    grad_ptr,  # (B,) upstream gradient dJ/d(loss); read only in BACKWARD
    out_ptr,  # (B,) loss (forward) or d(loss)/da (backward)
    out_b_ptr,  # (B,) d(loss)/db; backward only
    out_c_ptr,  # (B,) d(loss)/dc; backward only
    B,  # batch size
    BACKWARD: tl.constexpr,  # False: write the loss; True: write the three input gradients
    ACC: tl.constexpr,  # compute dtype
    BLOCK: tl.constexpr,  # samples per program
):
    # Map the program id to its block of samples.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    a = tl.load(a_ptr + offs, mask=mask).to(ACC)
    b = tl.load(b_ptr + offs, mask=mask).to(ACC)
    scale = tl.load(scale_ptr).to(ACC)
    d = a - b
    if BACKWARD:
        g = scale * tl.load(grad_ptr + offs, mask=mask).to(ACC)
        tl.store(out_ptr + offs, g * (1 + d / 4), mask=mask)
        tl.store(out_b_ptr + offs, g * (1 - d / 4), mask=mask)
        tl.store(out_c_ptr + offs, -2 * g, mask=mask)
    else:
        c = tl.load(c_ptr + offs, mask=mask).to(ACC)
        tl.store(out_ptr + offs, scale * (a + b - 2 * c + d * d / 8), mask=mask)


@jit
def _fd_dsm_kernel(
    a_ptr,  # (B,) log p(x~ + v)
    b_ptr,  # (B,) log p(x~ - v)
    t_ptr,  # (B,) v . (x~ - x)
    sigma_ptr,  # (B,) noise level; no gradient
    scale_ptr,  # (1,) scale, 1/(4 eps^2) in eq. 10
    grad_ptr,  # (B,) upstream gradient; read only in BACKWARD
    out_ptr,  # (B,) loss (forward) or d(loss)/da (backward)
    out_b_ptr,  # (B,) d(loss)/db; backward only
    out_t_ptr,  # (B,) d(loss)/dt; backward only
    B,  # batch size
    BACKWARD: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    a = tl.load(a_ptr + offs, mask=mask).to(ACC)
    b = tl.load(b_ptr + offs, mask=mask).to(ACC)
    t = tl.load(t_ptr + offs, mask=mask).to(ACC)
    sigma = tl.load(sigma_ptr + offs, mask=mask, other=1).to(ACC)
    scale = tl.load(scale_ptr).to(ACC)
    var = sigma * sigma
    u = a - b + 2 * t / var  # the bracket of eq. 10
    if BACKWARD:
        g = 2 * scale * u * tl.load(grad_ptr + offs, mask=mask).to(ACC)  # d(scale u^2)/du, times upstream
        tl.store(out_ptr + offs, g, mask=mask)
        tl.store(out_b_ptr + offs, -g, mask=mask)
        tl.store(out_t_ptr + offs, 2 * g / var, mask=mask)
    else:
        tl.store(out_ptr + offs, scale * u * u, mask=mask)


@jit
def _fd_ssmvr_kernel(
    sp_ptr,  # (B, n) s(x + v), rows contiguous
    sm_ptr,  # (B, n) s(x - v)
    v_ptr,  # (B, n) v
    eps_ptr,  # (1,) eps
    grad_ptr,  # (B,) upstream gradient; read only in BACKWARD
    out_ptr,  # (B,) loss (forward) or (B, n) d(loss)/ds+ (backward)
    out_m_ptr,  # (B, n) d(loss)/ds-; backward only
    out_v_ptr,  # (B, n) d(loss)/dv; backward with GRAD_V only
    n,  # row length
    BACKWARD: tl.constexpr,
    GRAD_V: tl.constexpr,  # also write d(loss)/dv
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,  # columns per step of the row loop
):
    # Map the program id to its row; walk the row in BLOCK-column steps, reading each input element once.
    row = tl.program_id(0)
    base = row * n
    eps = tl.load(eps_ptr).to(ACC)
    c_v = 1 / (2 * eps * eps)  # the 1/(2 eps^2) of the v-term
    if BACKWARD:
        g = tl.load(grad_ptr + row).to(ACC)
    acc_sq = tl.zeros([BLOCK], dtype=ACC)  # running sum of (s+ + s-)^2
    acc_vd = tl.zeros([BLOCK], dtype=ACC)  # running sum of v (s+ - s-)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n
        sp = tl.load(sp_ptr + base + cols, mask=mask, other=0).to(ACC)
        sm = tl.load(sm_ptr + base + cols, mask=mask, other=0).to(ACC)
        v = tl.load(v_ptr + base + cols, mask=mask, other=0).to(ACC)
        if BACKWARD:
            common = g * (sp + sm) / (4 * n)  # g (s+ + s-) / (4n)
            tl.store(out_ptr + base + cols, common + g * c_v * v, mask=mask)
            tl.store(out_m_ptr + base + cols, common - g * c_v * v, mask=mask)
            if GRAD_V:
                tl.store(out_v_ptr + base + cols, g * c_v * (sp - sm), mask=mask)
        else:
            acc_sq += (sp + sm) * (sp + sm)
            acc_vd += v * (sp - sm)
    if not BACKWARD:
        tl.store(out_ptr + row, tl.sum(acc_sq, axis=0) / (8 * n) + c_v * tl.sum(acc_vd, axis=0))


# %% Launchers: check, allocate, launch


def _per_sample_launchers(kernel, n_grad: int) -> tuple[Callable, Callable]:
    """Forward and backward launchers for a per-sample head whose first ``n_grad`` inputs are differentiable."""

    def launch(inputs: tuple[Tensor, ...], scale: float, grad: Tensor | None) -> list[Tensor]:
        like = inputs[0]  # (B,)
        outs = [new_output(like.shape, like) for _ in range(n_grad if grad is not None else 1)]  # (B,) each
        ptrs = outs + outs[:1] * (n_grad - len(outs))  # forward: the unused gradient slots get a dummy
        kernel[(triton.cdiv(like.numel(), BLOCK),)](
            *(t.contiguous() for t in inputs), scalar(scale, like), like if grad is None else grad, *ptrs,
            like.numel(), BACKWARD=grad is not None, ACC=compute_dtype(like.dtype), BLOCK=BLOCK,
        )
        return outs

    def forward(*inputs: Tensor, scale: float) -> Tensor:
        return launch(inputs, scale, None)[0]

    def backward(grad: Tensor, *inputs: Tensor, needs_grad, scale: float) -> tuple:
        return (*launch(inputs, scale, grad), *[None] * (len(inputs) - n_grad))

    return forward, backward


def _fd_ssmvr_launch(s_plus: Tensor, s_minus: Tensor, v: Tensor, eps: float, grad: Tensor | None,
                     grad_v: bool = False) -> list[Tensor]:
    """Forward (grad None): [loss (B,)]. Backward: [d/ds+, d/ds-] (B, n) each, and d/dv when ``grad_v``."""
    (B, n), backward = s_plus.shape, grad is not None
    check_numel("fd_ssmvr_head", B * n)
    outs = [new_output(s_plus.shape, s_plus) for _ in range(2 + grad_v)] if backward else [new_output((B,), s_plus)]
    ptrs = outs + outs[:1] * (3 - len(outs))  # dummies for the slots this pass does not write
    _fd_ssmvr_kernel[(B,)](
        s_plus.contiguous(), s_minus.contiguous(), v.contiguous(), scalar(eps, s_plus),
        grad if backward else s_plus, *ptrs, n,
        BACKWARD=backward, GRAD_V=grad_v, ACC=compute_dtype(s_plus.dtype),
        BLOCK=min(BLOCK, triton.next_power_of_2(n)),
    )
    return outs


def _fd_ssmvr_forward(s_plus: Tensor, s_minus: Tensor, v: Tensor, *, eps: float) -> Tensor:
    return _fd_ssmvr_launch(s_plus, s_minus, v, eps, None)[0]


def _fd_ssmvr_backward(grad: Tensor, s_plus: Tensor, s_minus: Tensor, v: Tensor, *, needs_grad,
                       eps: float) -> tuple:
    grads = _fd_ssmvr_launch(s_plus, s_minus, v, eps, grad, grad_v=needs_grad[2])
    return grads[0], grads[1], grads[2] if needs_grad[2] else None


# %% Public ops (autograd through kernels.fused_op.FusedOp)

_FD_SSM = FusedOp("fd_ssm_head", fd_ssm_reference, *_per_sample_launchers(_fd_ssm_kernel, n_grad=3))
_FD_DSM = FusedOp("fd_dsm_head", fd_dsm_reference, *_per_sample_launchers(_fd_dsm_kernel, n_grad=3))
_FD_SSMVR = FusedOp("fd_ssmvr_head", fd_ssmvr_reference, _fd_ssmvr_forward, _fd_ssmvr_backward)


def _check_per_sample(caller: str, first: str, t: Tensor, **others: Tensor) -> None:
    check_shape(caller, first, t, 1, "(B,)")
    check_like(caller, first, t, **others)


def fd_ssm_head(lp_plus: Tensor, lp_minus: Tensor, lp_zero: Tensor, *, scale: float = 1.0,
                backend: str = "auto") -> Tensor:
    """Per-sample FD-SSM loss (eq. 9): (B,) x 3 -> (B,).

    ``scale * [lp_plus + lp_minus - 2 lp_zero + (lp_plus - lp_minus)^2 / 8]``, with lp_plus = log p(x + v),
    lp_minus = log p(x - v), lp_zero = log p(x); the paper's scale is 1/eps^2. Differentiable in all three.

    >>> import torch
    >>> fd_ssm_head(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]), backend="torch").tolist()
    [0.5]
    """
    _check_per_sample("fd_ssm_head", "lp_plus", lp_plus, lp_minus=lp_minus, lp_zero=lp_zero)
    return _FD_SSM(lp_plus, lp_minus, lp_zero, backend=backend, scale=float(scale))


def fd_dsm_head(lp_plus: Tensor, lp_minus: Tensor, v_dot_delta: Tensor, sigma: float | Tensor, *,
                scale: float = 1.0, backend: str = "auto") -> Tensor:
    """Per-sample FD-DSM loss (eq. 10): (B,) x 3, sigma float or (B,) -> (B,).

    ``scale * (lp_plus - lp_minus + 2 v_dot_delta / sigma^2)^2``, with lp_plus = log p(x~ + v),
    lp_minus = log p(x~ - v), v_dot_delta = v . (x~ - x); the paper's scale is 1/(4 eps^2). Differentiable in the
    first three; sigma is a constant (detached).

    >>> import torch
    >>> fd_dsm_head(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.5]), 1.0, backend="torch").tolist()
    [4.0]
    """
    _check_per_sample("fd_dsm_head", "lp_plus", lp_plus, lp_minus=lp_minus, v_dot_delta=v_dot_delta)
    # (1,) or (B,), detached
    sigma = sigma.detach().to(lp_plus).reshape(-1) if isinstance(sigma, Tensor) else lp_plus.new_full((1,), sigma)
    if sigma.numel() not in (1, lp_plus.numel()):
        raise ValueError(f"fd_dsm_head: expected sigma to be a float or hold one value per sample "
                         f"({lp_plus.numel()}), got {sigma.numel()} values")
    sigma = sigma.expand(lp_plus.shape)  # (B,)
    return _FD_DSM(lp_plus, lp_minus, v_dot_delta, sigma, backend=backend, scale=float(scale))


def fd_ssmvr_head(s_plus: Tensor, s_minus: Tensor, v: Tensor, eps: float, *, backend: str = "auto") -> Tensor:
    """Per-sample FD-SSMVR loss (section 4): (B, n) x 3 -> (B,).

    ``||s_plus + s_minus||^2 / (8n) + (v . s_plus - v . s_minus) / (2 eps^2)``, with s_plus = s(x + v),
    s_minus = s(x - v) flattened to rows of length n. Differentiable in s_plus, s_minus and v.

    >>> import torch
    >>> s = torch.ones(1, 2)
    >>> fd_ssmvr_head(s, s, torch.zeros(1, 2), 0.1, backend="torch").tolist()
    [0.5]
    """
    check_shape("fd_ssmvr_head", "s_plus", s_plus, 2, "(B, n)")
    check_like("fd_ssmvr_head", "s_plus", s_plus, s_minus=s_minus, v=v)
    if not float(eps) > 0:
        raise ValueError(f"fd_ssmvr_head: expected eps > 0, got {eps}")
    return _FD_SSMVR(s_plus, s_minus, v, backend=backend, eps=float(eps))
