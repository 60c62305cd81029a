"""Fused stencil application: build the S perturbed inputs in one pass (perturb), and combine the S outputs with
the stencil weights in one pass (combine).

A finite-difference stencil (paper Lemma 1 / Theorem 1) approximates a directional derivative from S evaluations
of f at the points x + gamma_s v:

.. math::

    (v \\cdot \\nabla)^T f(x) \\approx \\sum_{s=0}^{S-1} w_s \\, f(x + \\gamma_s v).

The batched executor (paper appendix C.1, ``concatenate([data, data + v, data - v])``) stacks the S perturbed
copies of a batch into one (S*B, n) batch, runs f once, and sums the S output blocks with the weights. The two
memory-bound ends of that are the kernels here; f in between is the user's network.

**perturb** (x, v: (B, n); gamma: (S,)) -> X: (S*B, n), with row s*B + b equal to x[b] + gamma_s v[b]
(See NOTE [point-major stacked batch] in fdsm.fd).
Its vector-Jacobian product for an upstream G: (S*B, n), in blocks G_s: (B, n), is

.. math::

    \\bar x = \\sum_s G_s, \\qquad \\bar v = \\sum_s \\gamma_s G_s, \\qquad
    \\bar\\gamma_s = \\langle G_s, v \\rangle,

which is a combine with two weight vectors, (1, ..., 1) and gamma.

**combine** (F: (S, B, k); w: (S,)) -> (B, k) = sum_s w_s F[s]. Its vector-Jacobian product for an upstream
g: (B, k) is F-bar[s] = w_s g, which is a perturb of a zero x along g with offsets w, and
w-bar_s = <F[s], g>.

So each op's backward runs the other op's kernel: two kernels serve four passes.

Bytes moved, in elements (N = B*n or B*k; the S coefficients are negligible):

=================  ===================  ==========================================  ==============
pass               fused kernel         torch reference (below)                      expected gain
=================  ===================  ==========================================  ==============
perturb forward    read 2N, write S N   gamma*v: N -> S N; + x: S N + N -> S N        (3S+2)/(S+2)
combine forward    read S N, write N    w*F: S N -> S N; sum: S N -> N                (3S+1)/(S+1)
=================  ===================  ==========================================  ==============

For S = 3 (a central second-order stencil) that is 2.2x and 2.5x, if both sides run at copy bandwidth. The
references are the literal formulas; ``torch.tensordot(w, F, dims=1)`` is a GEMV that already moves only
(S+1) N elements, so against it the fused combine can only match, not beat, the traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from kernels.backend import jit, tl, triton
from kernels.fused_op import (
    FusedOp,
    check_like,
    check_numel,
    check_shape,
    coefficients,
    compute_dtype,
    new_output,
)

BLOCK = 1024  # elements per program: 4 warps x 32 threads x 8 contiguous elements (two 128-bit loads of fp32)

# %% Torch references: the oracle and the benchmark baseline


def perturb_reference(x: Tensor, v: Tensor, offsets: Tensor) -> Tensor:
    """(B, n), (B, n), (S,) -> (S*B, n): row s*B + b is x[b] + offsets[s] * v[b]."""
    S, (B, n) = offsets.numel(), x.shape
    # gamma*v: read N, write S N; + x: read S N + N, write S N.
    stacked = x.unsqueeze(0) + offsets.view(S, 1, 1) * v.unsqueeze(0)  # (S, B, n)
    return stacked.reshape(S * B, n).to(x.dtype)  # (S*B, n)


def combine_reference(F: Tensor, weights: Tensor) -> Tensor:
    """(S, B, k), (S,) -> (B, k) = sum_s weights[s] * F[s]."""
    S = weights.numel()
    # w*F: read S N, write S N; sum: read S N, write N.
    return (weights.view(S, 1, 1) * F).sum(0).to(F.dtype)  # (B, k)


# %% Triton kernels


@jit
def _perturb_kernel(
    x_ptr,  # pointer to x, flat (N,); not read when HAS_X is False (x = 0)
    v_ptr,  # pointer to v, flat (N,)
    gamma_ptr,  # pointer to the offsets, (S,)
    out_ptr,  # pointer to the output, flat (S*N,): block s starts at s*N
    N,  # elements in x (B*n)
    S,  # number of offsets
    HAS_X: tl.constexpr,  # False for combine's backward, which perturbs a zero x
    ACC: tl.constexpr,  # compute dtype (float32, or float64 for float64 tensors)
    BLOCK: tl.constexpr,  # elements per program
):
    # Map the program id to the block of x and v it reads, once.
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.load(v_ptr + offs, mask=mask).to(ACC)
    if HAS_X:
        x = tl.load(x_ptr + offs, mask=mask).to(ACC)
    else:
        x = tl.zeros([BLOCK], dtype=ACC)
    # Write the S perturbed copies of that block: X[s*N + i] = x[i] + gamma_s v[i].
    for s in range(S):
        gamma_s = tl.load(gamma_ptr + s).to(ACC)
        tl.store(out_ptr + s * N + offs, x + gamma_s * v, mask=mask)


@jit
def _combine_kernel(
    f_ptr,  # pointer to F, flat (S*N,): block s starts at s*N
    w_ptr,  # pointer to the weights, (S,)
    out_ptr,  # pointer to the output, flat (N,)
    w2_ptr,  # pointer to a second weight vector, (S,); read only when TWO
    out2_ptr,  # pointer to the second output, flat (N,); written only when TWO
    N,  # elements in one block of F (B*k)
    S,  # number of blocks
    TWO: tl.constexpr,  # also write out2 = sum_s w2_s F[s], from the same reads (perturb's backward)
    ACC: tl.constexpr,  # compute dtype
    BLOCK: tl.constexpr,  # elements per program
):
    # Map the program id to the block of the output it owns.
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    # Read each of the S blocks of F once, accumulating out = sum_s w_s F[s] (and out2) in ACC.
    acc = tl.zeros([BLOCK], dtype=ACC)
    acc2 = tl.zeros([BLOCK], dtype=ACC)
    for s in range(S):
        f = tl.load(f_ptr + s * N + offs, mask=mask).to(ACC)
        acc += tl.load(w_ptr + s).to(ACC) * f
        if TWO:
            acc2 += tl.load(w2_ptr + s).to(ACC) * f
    tl.store(out_ptr + offs, acc, mask=mask)
    if TWO:
        tl.store(out2_ptr + offs, acc2, mask=mask)


# %% Launchers: check, allocate, launch


def _launch_perturb(x: Tensor | None, v: Tensor, gamma: Tensor, out: Tensor) -> Tensor:
    """out (S*N elements) <- x + gamma_s v for each s; x None means zero."""
    S, N = gamma.numel(), v.numel()
    check_numel("perturb", S * N)
    v = v.contiguous()
    grid = (triton.cdiv(N, BLOCK),)
    _perturb_kernel[grid](
        x.contiguous() if x is not None else v, v, gamma.contiguous(), out, N, S,
        HAS_X=x is not None, ACC=compute_dtype(v.dtype), BLOCK=BLOCK,
    )
    return out


def _launch_combine(F: Tensor, w: Tensor, out: Tensor, w2: Tensor | None = None, out2: Tensor | None = None):
    """out <- sum_s w_s F[s] (and out2 <- sum_s w2_s F[s]) for F with S*N elements."""
    S, N = w.numel(), out.numel()
    check_numel("combine", S * N)
    two = w2 is not None
    grid = (triton.cdiv(N, BLOCK),)
    _combine_kernel[grid](
        F.contiguous(), w.contiguous(), out, (w2 if two else w).contiguous(), out2 if two else out, N, S,
        TWO=two, ACC=compute_dtype(F.dtype), BLOCK=BLOCK,
    )


def _perturb_forward(x: Tensor, v: Tensor, offsets: Tensor) -> Tensor:
    (B, n), S = x.shape, offsets.numel()
    return _launch_perturb(x, v, offsets, new_output((S * B, n), x))  # (S*B, n)


def _perturb_backward(grad: Tensor, x: Tensor, v: Tensor, offsets: Tensor, *, needs_grad) -> tuple:
    S = offsets.numel()
    grad_x, grad_v = new_output(x.shape, x), new_output(v.shape, v)  # (B, n) each
    # x-bar = sum_s G_s and v-bar = sum_s gamma_s G_s, in one read of G.
    _launch_combine(grad, torch.ones_like(offsets), grad_x, offsets, grad_v)
    grad_gamma = grad.view(S, -1) @ v.reshape(-1) if needs_grad[2] else None  # <G_s, v>: (S,)
    return grad_x, grad_v, grad_gamma


def _combine_forward(F: Tensor, weights: Tensor) -> Tensor:
    out = new_output(F.shape[1:], F)  # (B, k)
    _launch_combine(F, weights, out)
    return out


def _combine_backward(grad: Tensor, F: Tensor, weights: Tensor, *, needs_grad) -> tuple:
    # F-bar[s] = w_s g: the perturb kernel with x = 0, v = g, offsets = w.
    grad_F = _launch_perturb(None, grad, weights, new_output(F.shape, F))  # (S, B, k)
    grad_w = F.reshape(F.shape[0], -1) @ grad.reshape(-1) if needs_grad[1] else None  # <F[s], g>: (S,)
    return grad_F, grad_w


# %% Public ops (autograd through kernels.fused_op.FusedOp)

_PERTURB = FusedOp("perturb", perturb_reference, _perturb_forward, _perturb_backward)
_COMBINE = FusedOp("combine", combine_reference, _combine_forward, _combine_backward)


def perturb(x: Tensor, v: Tensor, offsets: Tensor | Sequence[float], *, backend: str = "auto") -> Tensor:
    """The S perturbed copies of a batch, stacked: (B, n), (B, n), (S,) -> (S*B, n).

    Row ``s*B + b`` is ``x[b] + offsets[s] * v[b]``. Differentiable in x, v and (when it is a tensor that requires
    grad) offsets. ``backend``: "auto" | "triton" | "torch" (see :func:`kernels.backend.resolve_backend`).

    >>> x, v = torch.zeros(2, 3), torch.ones(2, 3)
    >>> perturb(x, v, [1.0, -1.0], backend="torch")[:, 0].tolist()
    [1.0, 1.0, -1.0, -1.0]
    """
    check_shape("perturb", "x", x, 2, "(B, n)")
    check_like("perturb", "x", x, v=v)
    return _PERTURB(x, v, coefficients("perturb", "offsets", offsets, x), backend=backend)


def combine(F: Tensor, weights: Tensor | Sequence[float], *, backend: str = "auto") -> Tensor:
    """The stencil combination: (S, B, k), (S,) -> (B, k) = sum_s weights[s] * F[s].

    Differentiable in F and (when it is a tensor that requires grad) the weights.

    >>> F = torch.arange(6.0).view(3, 2, 1)  # blocks [0, 1], [2, 3], [4, 5]
    >>> combine(F, [-0.5, 0.0, 0.5], backend="torch").flatten().tolist()
    [2.0, 2.0]
    """
    check_shape("combine", "F", F, 3, "(S, B, k)")
    weights = coefficients("combine", "weights", weights, F)
    if weights.numel() != F.shape[0]:
        raise ValueError(f"combine: expected {F.shape[0]} weights, one per block of F "
                         f"(shape {tuple(F.shape)}), got {weights.numel()}")
    return _COMBINE(F, weights, backend=backend)


def stencil_apply(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, offsets: Sequence[float],
                  weights: Sequence[float], *, backend: str = "auto") -> Tensor:
    """``sum_s weights[s] * f(x + offsets[s] * v)`` with one batched forward between the two fused kernels.

    x, v: (B, *event); f maps (S*B, *event) to (S*B,) or (S*B, *k), sample by sample; returns (B,) or (B, *k).
    This is the ``fd-fused`` directional derivative of ``fdsm`` (``fd-batched`` with fused ends).
    """
    B, S = x.shape[0], len(offsets)
    inputs = perturb(x.reshape(B, -1), v.reshape(B, -1), offsets, backend=backend)  # (S*B, n)
    out = f(inputs.view(S * B, *x.shape[1:]))  # (S*B, *k)
    combined = combine(out.reshape(S, B, -1), weights, backend=backend)  # (S, B, K) -> (B, K)
    return combined.view(B, *out.shape[1:])  # (B, *k)
