r"""The fast path of every elementwise rule: the Taylor coefficients of φ at z_0, composed with the input series.

For an elementwise φ and a series :math:`z(t) = z_0 + \delta(t)`, :math:`\delta(t) = \sum_{k \ge 1} z_k t^k`,

.. math::
    \varphi(z(t)) = \sum_{m=0}^{K} c_m\, \delta(t)^m + O(t^{K+1}), \qquad c_m = \frac{\varphi^{(m)}(z_0)}{m!},

evaluated by Horner's rule on series, :math:`h_K = c_K`, :math:`h_m = c_m + \delta\, h_{m+1}`, with :math:`h_m`
truncated at order K - m (δ has no constant term, so nothing of higher order reaches :math:`h_0 = \varphi(z)`).
This is Faà di Bruno's formula, computed without enumerating partitions.

The coefficients :math:`c_m` come in closed form from a few elementwise ops on :math:`z_0`: for σ, tanh, softplus
and SiLU, :math:`\varphi^{(m)}` is a polynomial in σ(z_0) (or tanh z_0), whose coefficients are computed once per K
in exact rational arithmetic (``functools.lru_cache``) and applied as one small matmul against the powers of σ.

Cost per element: K(K+1)(K+2)/6 multiply-adds for the composition, and O(K) kernel launches in all (one
``addcmul`` per term of each Horner step, no stacking), where the term-by-term recurrences of ``fdsm.taylor.series``
take O(K) launches *per coefficient*. Those recurrences are the slow, obvious reference that the tests hold these
rules to.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
from torch import Tensor


def horner(c: Tensor, z: Tensor) -> Tensor:
    r""":math:`\sum_m c_m (z(t) - z_0)^m` truncated at K; c, z: (K+1, *s) -> (K+1, *s), with row 0 = c_0.

    Each :math:`h_m` is kept as its constant term :math:`c_m` and its tail (orders 1..K-m), so no step copies the
    series it has built; the product :math:`(\delta h)_k = \sum_j \delta_{k-j} h_j` is one multiply for j = 0 and
    one in-place ``addcmul`` per further j.
    """
    order = z.shape[0] - 1
    delta = z[1:]  # (K, *s): z_1 .. z_K
    head, tail = c[order], None  # h_K = c_K: constant term, no tail
    for m in range(order - 1, -1, -1):
        n = order - m  # h_m has orders 0..n; h_{m+1} = (head, tail) has orders 0..n-1
        product = delta[:n] * head  # the j = 0 terms: δ_k h_0 for k = 1..n
        for j in range(1, n):
            product[j:].addcmul_(delta[:n - j], tail[j - 1])  # + δ_{k-j} h_j for k = j+1..n
        head, tail = c[m], product
    return torch.cat([head.unsqueeze(0), tail])


# ---- the coefficients c_m = φ^(m)(z_0) / m! -------------------------------------------------------------------

def _derivative(poly: tuple[Fraction, ...], inner: tuple[Fraction, ...]) -> tuple[Fraction, ...]:
    r"""d/dz of P(w(z)) as a polynomial in w, given :math:`w' = Q(w)` (``inner``): :math:`P'(w)\,Q(w)`."""
    dp = [i * a for i, a in enumerate(poly)][1:]
    out = [Fraction(0)] * (len(dp) + len(inner) - 1 if dp else 1)
    for i, a in enumerate(dp):
        for j, b in enumerate(inner):
            out[i + j] += a * b
    return tuple(out)


@functools.lru_cache(maxsize=32)
def derivative_polynomials(kind: str, order: int) -> tuple[tuple[Fraction, ...], ...]:
    r"""The polynomials :math:`P_m` with :math:`w^{(m)}(z) = P_m(w)`, m = 0..K, for w = σ(z) (σ' = σ - σ²) or
    w = tanh z (tanh' = 1 - tanh²); coefficients of :math:`w^0, w^1, ...`, exact."""
    inner = {"sigmoid": (Fraction(0), Fraction(1), Fraction(-1)), "tanh": (Fraction(1), Fraction(0), Fraction(-1))}
    polys = [(Fraction(0), Fraction(1))]  # P_0(w) = w
    for _ in range(order):
        polys.append(_derivative(polys[-1], inner[kind]))
    return tuple(polys)


def scaled_rows(kind: str, order: int) -> list[list[Fraction]]:
    """Row m: the coefficients of :math:`P_m / m!` in :math:`w^0 .. w^{K+1}`, exact."""
    return [[a / math.factorial(m) for a in p] + [Fraction(0)] * (order + 2 - len(p))
            for m, p in enumerate(derivative_polynomials(kind, order))]


@functools.lru_cache(maxsize=128)
def table(rows: tuple[tuple[Fraction, ...], ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Exact rows as a tensor, made once; never an inference tensor (a first call under ``torch.inference_mode``
    must not poison later autograd calls)."""
    with torch.inference_mode(False):
        return torch.tensor([[float(a) for a in row] for row in rows], dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def inverse_factorials(order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1/0!, ..., 1/K!) as a (K+1,) tensor."""
    with torch.inference_mode(False):
        return torch.tensor([1.0 / math.factorial(m) for m in range(order + 1)], dtype=dtype, device=device)


def along(t: Tensor, like: Tensor) -> Tensor:
    """A (K+1,) tensor shaped to broadcast along the leading axis of ``like`` (*s) -> (K+1, 1, ..., 1)."""
    return t.view(-1, *([1] * like.dim()))


def polynomial_coefficients(table: Tensor, w: Tensor) -> Tensor:
    r""":math:`c_m = \sum_i \mathrm{table}_{m,i}\, w^i`: one ``addmm`` of a (K+1, K+2) table of exact coefficients
    (``scaled_table``) against the powers :math:`w^1 .. w^{K+1}`, column 0 (w^0) as its bias; w: (*s) -> (K+1, *s)."""
    degree = table.shape[1] - 1
    powers = [w]
    for _ in range(degree - 1):
        powers.append(powers[-1] * w)
    c = torch.addmm(table[:, :1], table[:, 1:], torch.stack(powers).reshape(degree, -1))  # (K+1, N): w^1 .. w^{K+1}
    return c.view(len(table), *w.shape)


def power_coefficients(base: Tensor, ratio: Tensor, weights: list[float]) -> Tensor:
    r""":math:`c_m = \mathrm{weights}_m \cdot \mathrm{base} \cdot \mathrm{ratio}^m`, m = 0..K; base, ratio: (*s)."""
    powers = [torch.ones_like(ratio)]
    for _ in range(len(weights) - 1):
        powers.append(powers[-1] * ratio)
    w = torch.tensor(weights, dtype=ratio.dtype, device=ratio.device)
    return torch.stack(powers) * along(w, ratio) * base  # (K+1, *s)
