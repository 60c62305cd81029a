r"""Arithmetic on truncated Taylor series: the recurrences of ``shared/reference/taylor-rules.md``, as torch ops.

A *series* here is one tensor ``u`` of shape (K+1, *shape): the normalized coefficients
:math:`u_k = u^{(k)}(0)/k!` of :math:`u(t) = \sum_{k=0}^{K} u_k t^k`, stacked along a leading coefficient axis.
Normalized coefficients keep the factorials out of the recurrences (and out of float32's range); the caller turns
them into derivatives, :math:`D^k = k!\,u_k`, once at the end.

Every function below is a composition of torch ops on the whole stack, so its result is differentiable with
respect to everything its inputs depend on (the parameters of a network, for a training step). Where a
recurrence is sequential in k, each step is a few ops over every element and every j at once ("vectorized over
the coefficient axis"): O(K) launches per call, O(K^2) multiply-adds per element.

Letters follow jax's ``jet.py``: ``u`` is an input series, ``v`` the output series, ``g`` the series of a
derivative.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from kernels import constants


def degree(u: Tensor) -> int:
    """K, for a series of K+1 coefficients."""
    return u.shape[0] - 1


@functools.lru_cache(maxsize=64)
def _pairs(order: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Index vectors (i, j, i + j) over every pair i + j <= K: the terms of a truncated Cauchy product.
    Never inference tensors (a first call under ``torch.inference_mode`` must not poison later autograd calls)."""
    i, j = zip(*[(i, k - i) for k in range(order + 1) for i in range(k + 1)], strict=True)
    with torch.inference_mode(False):
        first = torch.tensor(i, device=device)
        second = torch.tensor(j, device=device)
        return first, second, first + second


@functools.lru_cache(maxsize=64)
def _ramp(order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1, 2, ..., K) as a (K,) tensor: the j of :math:`j u_j`."""
    with torch.inference_mode(False):
        return torch.arange(1, order + 1, dtype=dtype, device=device)


def _along_coefficients(t: Tensor, ndim: int) -> Tensor:
    """A (K,) tensor shaped to broadcast along the coefficient axis of a series of ``ndim`` dims."""
    return t.view(-1, *([1] * (ndim - 1)))


def accumulate(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out += a * b`` in place, on a fresh tensor whose old value no backward formula saved: one ``addcmul_``.

    ``torch.func.vmap`` has no batching rule for ``addcmul_``: it would fall back to a loop over the samples, and
    warn, at every call. So under a ``torch.func`` transform it is ``out.add_(a * b)``, which vmap batches."""
    if torch._C._are_functorch_transforms_active():
        return out.add_(a * b)
    return out.addcmul_(a, b)


def cauchy(a: Tensor, b: Tensor) -> Tensor:
    r"""The product series, truncated at K: :math:`(ab)_k = \sum_{j=0}^{k} a_j b_{k-j}`.

    a: (K+1, *sa), b: (K+1, *sb), broadcastable -> (K+1, *broadcast(sa, sb)). One multiply and K in-place
    ``addcmul``: a short convolution along the coefficient axis, with no (K+1)^2 temporary.
    """
    order = degree(a)
    out = a * b[0]  # the j = 0 terms a_k b_0, broadcast to (K+1, *s)
    for j in range(1, order + 1):
        accumulate(out[j:], a[:order + 1 - j], b[j])  # + a_{k-j} b_j for k = j..K, in place on the fresh product
    return out


def square(a: Tensor) -> Tensor:
    r""":math:`(a^2)_k = \sum_{j=0}^{k} a_j a_{k-j}`, the Cauchy product of a with itself."""
    return cauchy(a, a)


def scaled_derivative(u: Tensor) -> Tensor:
    r"""The series of t u'(t), without its (zero) constant term: :math:`(j\,u_j)_{j=1..K}`; (K+1, *s) -> (K, *s)."""
    return u[1:] * _along_coefficients(_ramp(degree(u), u.dtype, u.device), u.dim())


def integrate(ju: Tensor, v0: Tensor, g_step: Callable[[list[Tensor]], Tensor], g0: Tensor) -> Tensor:
    r"""The series v with :math:`v' = g\,u'`, given the series of g term by term:

    .. math::
        k\, v_k = \sum_{j=1}^{k} j\, u_j\, g_{k-j}, \qquad k \ge 1,

    where :math:`g_{k-j}` needs only :math:`v_0 .. v_{k-1}`. ``ju`` is ``scaled_derivative(u)``, (K, *s);
    ``g0`` the constant term of g; ``g_step(vs)`` returns :math:`g_m` from the coefficients ``vs`` = v_0..v_m
    computed so far. Computes v_k, then g_k, alternately; each step is one stack, one multiply and one sum over
    j. Returns (K+1, *s).
    """
    order = len(ju)
    v, g_rev = [v0], [g0]  # g_rev: g_{k-1}, ..., g_0, newest first, to line up with j = 1..k
    for k in range(1, order + 1):
        v.append((ju[:k] * torch.stack(g_rev)).sum(0) * (1.0 / k))  # sum_j (j u_j) g_{k-j} / k
        if k < order:
            g_rev.insert(0, g_step(v))
    return torch.stack(v)


def from_derivative(u: Tensor, v0: Tensor, g: Tensor) -> Tensor:
    r"""v with :math:`v' = g\,u'` for a g whose whole series is already known: every :math:`k v_k =
    \sum_{j=1}^{k} j u_j g_{k-j}` at once, as one shifted Cauchy product; u, g: (K+1, *s) -> (K+1, *s)."""
    ju = torch.cat([torch.zeros_like(u[:1]), scaled_derivative(u)])  # (K+1, *s): (0, 1 u_1, ..., K u_K)
    ks = torch.cat([_ramp(degree(u), u.dtype, u.device).new_ones(1), _ramp(degree(u), u.dtype, u.device)])
    tail = cauchy(ju, g)[1:] / _along_coefficients(ks[1:], u.dim())  # (K, *s)
    return torch.cat([v0.unsqueeze(0), tail])


def exp(u: Tensor) -> Tensor:
    r""":math:`v = e^u`: :math:`v' = v\,u'`, so :math:`k v_k = \sum_j j u_j v_{k-j}` (g = v)."""
    v0 = torch.exp(u[0])
    return integrate(scaled_derivative(u), v0, lambda v: v[-1], v0)


def sigmoid(u: Tensor) -> Tensor:
    r""":math:`v = \sigma(u)`: :math:`v' = (v - v^2)\,u'` (g = v - v·v)."""
    v0 = torch.sigmoid(u[0])
    return integrate(scaled_derivative(u), v0, lambda v: v[-1] - _square_term(v), v0 - v0 * v0)


def tanh(u: Tensor) -> Tensor:
    r""":math:`v = \tanh u`: :math:`v' = (1 - v^2)\,u'` (g = 1 - v·v; the 1 is in :math:`g_0` only)."""
    v0 = torch.tanh(u[0])
    return integrate(scaled_derivative(u), v0, lambda v: -_square_term(v), 1 - v0 * v0)


def _square_term(v: list[Tensor]) -> Tensor:
    r"""The newest coefficient of v·v from v_0..v_m: :math:`(v^2)_m = \sum_{i=0}^{m} v_i v_{m-i}`."""
    return (torch.stack(v) * torch.stack(v[::-1])).sum(0)


def log(u: Tensor) -> Tensor:
    r""":math:`v = \log u`: :math:`u v' = u'`, so :math:`v_k = (u_k - \tfrac1k \sum_{j=1}^{k-1} j v_j u_{k-j}) / u_0`.

    Written as :math:`v' = g u'` with g = 1/u, the reciprocal series (``power(u, -1)``)."""
    return from_derivative(u, torch.log(u[0]), power(u, -1.0))


def power(u: Tensor, p: float) -> Tensor:
    r""":math:`v = u^p` for a scalar p (sqrt: 1/2, rsqrt: -1/2, reciprocal: -1):

    .. math::
        v_k = \frac{1}{k\,u_0} \sum_{j=1}^{k} \bigl(p\,j - (k - j)\bigr)\, u_j\, v_{k-j}.

    Needs :math:`u_0 \ne 0` (and :math:`u_0 > 0` for a non-integer p), as the derivatives do.
    """
    order = degree(u)
    v = [torch.pow(u[0], p)]
    inv = 1.0 / u[0]
    for k in range(1, order + 1):
        j = torch.arange(1, k + 1, dtype=u.dtype, device=u.device)
        weights = _along_coefficients((p * j - (k - j)) / k, u.dim())  # (k, 1, ...): (p j - (k - j)) / k
        v.append((weights * u[1:k + 1] * torch.stack(v[::-1])).sum(0) * inv)  # v[::-1]: v_{k-1}, ..., v_0
    return torch.stack(v)


def sin_cos(u: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`s = \sin u, c = \cos u` together: :math:`k s_k = \sum_j j u_j c_{k-j}`,
    :math:`k c_k = -\sum_j j u_j s_{k-j}`."""
    ju = scaled_derivative(u)
    s, c = [torch.sin(u[0])], [torch.cos(u[0])]
    for k in range(1, degree(u) + 1):
        s_next = (ju[:k] * torch.stack(c[::-1])).sum(0) * (1.0 / k)
        c.append((ju[:k] * torch.stack(s[::-1])).sum(0) * (-1.0 / k))
        s.append(s_next)
    return torch.stack(s), torch.stack(c)


def constant(value: Tensor, order: int) -> Tensor:
    """The series of a value that does not depend on t: (value, 0, ..., 0); (*s) -> (K+1, *s)."""
    return torch.cat([value.unsqueeze(0), value.new_zeros((order, *value.shape))])


def factorials(order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(0!, 1!, ..., K!): normalized coefficients times these are the derivatives D^0..D^K."""
    return constants.constant(tuple(float(math.factorial(k)) for k in range(order + 1)), dtype, device)
