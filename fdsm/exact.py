r"""Exact T-th order directional derivatives by automatic differentiation.

Both methods compute :math:`D^T f(x) = \frac{d^T}{dt^T} f(x + t v)\big|_{t=0} = (v^\top\nabla_x)^T f(x)` (paper
eq. 4) by applying the operator :math:`v^\top\nabla_x` T times, each time to the result of the last:

- ``exact_reverse``: T nested ``torch.autograd.grad(..., create_graph=True)``, the paper's "exact compute". Each
  level differentiates the whole graph built by the levels below it, which is why its time and memory grow
  exponentially with T (section 3.3, Figure 2).
- ``exact_forward``: T nested ``torch.func.jvp``.

Both keep the graph, so the result is differentiable with respect to the parameters inside ``f``. Both assume
that ``f`` treats the samples of a batch independently (no batch statistics), as every model here does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor


def _reverse_jvp(g: Tensor, x: Tensor, v: Tensor) -> Tensor:
    r""":math:`(v^\top\nabla_x) g` by reverse mode, graph kept; g: (B,) or (B, k) -> same shape."""
    if not g.requires_grad:  # g no longer depends on x (e.g. a polynomial past its degree)
        return torch.zeros_like(g)
    if g.dim() == 1:
        # Samples are independent, so grad of the batch sum gives every per-sample gradient at once.
        (grad,) = torch.autograd.grad(g.sum(), x, create_graph=True, allow_unused=True)
        if grad is None:
            return torch.zeros_like(g)
        return (grad * v).reshape(len(g), -1).sum(1).to(g.dtype)  # (B, *event) -> (B,), in f's dtype, not x's
    # Vector output: J v from two vector-Jacobian products. u -> J^T u is linear in u, and its VJP with v is J v.
    u = torch.zeros_like(g, requires_grad=True)  # (B, k)
    (vjp,) = torch.autograd.grad(g, x, grad_outputs=u, create_graph=True, allow_unused=True)  # (B, *event)
    if vjp is None or not vjp.requires_grad:  # g no longer depends on x (e.g. a cubic past its third derivative)
        return torch.zeros_like(g)
    (jvp,) = torch.autograd.grad(vjp, u, grad_outputs=v, create_graph=True, allow_unused=True)  # (B, k)
    return torch.zeros_like(g) if jvp is None else jvp


def exact_reverse(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, order: int, *, stencil=None) -> Tensor:
    """T nested reverse-mode gradients (the paper's exact compute)."""
    grad_wanted = torch.is_grad_enabled()
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_()
        g = f(x)
        for _ in range(order):
            g = _reverse_jvp(g, x, v)
    return g if grad_wanted else g.detach()


def _jvp_tangent(g: Callable[[Tensor], Tensor], v: Tensor, x: Tensor) -> Tensor:
    """x -> (v . grad) g(x), by one forward-mode JVP."""
    return torch.func.jvp(g, (x,), (v,))[1]


def exact_forward(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, order: int, *, stencil=None) -> Tensor:
    """T nested ``torch.func.jvp``: the tangent of the tangent of ... of f along v."""
    g = f
    for _ in range(order):
        g = functools.partial(_jvp_tangent, g, v)
    return g(x)
