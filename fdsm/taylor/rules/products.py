r"""Products along a dim, as trees of Cauchy products: prod (pairs of halves, log2(n) rounds) and cumprod (a
Hillis-Steele scan), exact at zeros since nothing divides; and logcumsumexp, the log of a weighted running sum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fdsm.taylor import series
from fdsm.taylor.jet import Jet
from fdsm.taylor.rules.operands import _dim
from fdsm.taylor.rules.table import register_rule

aten = torch.ops.aten


def _product(s: Tensor, d: int) -> Tensor:
    """The product of a series over its dim d (keeping it, of size 1): pairs of halves multiplied, log2(n) Cauchy
    products of shrinking size (an odd one out is carried to the next round). Exact at zeros, as no division is."""
    while s.shape[d] > 1:
        half = s.shape[d] // 2
        paired = series.cauchy(s.narrow(d, 0, half), s.narrow(d, half, half))
        s = torch.cat([paired, s.narrow(d, 2 * half, s.shape[d] - 2 * half)], d)
    return s


def _prod(z: Jet, dim: int | None = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Jet:
    """prod over one dim (or, with dim None, over every element): ``_product``, in ``dtype`` (cast first, as the op
    does); to an integer dtype, a constant (the op on the primal, as ``_to_copy``)."""
    if dtype is not None and not dtype.is_floating_point:
        return (aten.prod.default(z.primal, dtype=dtype) if dim is None
                else aten.prod.dim_int(z.primal, dim, keepdim, dtype=dtype))
    s = z.series if dtype is None else z.series.to(dtype)
    if dim is None:
        return Jet(_product(s.reshape(len(s), -1), 1).squeeze(1))  # a 0-d z too
    d = _dim(dim, z.ndim)
    out = _product(s, d)
    return Jet(out if keepdim else out.squeeze(d))


def _cumprod(z: Jet, dim: int, *, dtype: torch.dtype | None = None) -> Jet:
    r"""The running product along dim, as a scan (Hillis and Steele): at the shifts s = 1, 2, 4, ..., every element
    from s on is multiplied by the one s before it, :math:`P_i \leftarrow P_i P_{i-s}`: log2(n) Cauchy products."""
    if dtype is not None and not dtype.is_floating_point:  # an integer running product: a constant
        return aten.cumprod.default(z.primal, dim, dtype=dtype)
    d, s, shift = _dim(dim, z.ndim), (z.series if dtype is None else z.series.to(dtype)), 1
    n = s.shape[d]
    while shift < n:
        s = torch.cat([s.narrow(d, 0, shift), series.cauchy(s.narrow(d, shift, n - shift), s.narrow(d, 0, n - shift))],
                      d)
        shift *= 2
    return Jet(s)


def _logcumsumexp(z: Jet, dim: int) -> Jet:
    r""":math:`y_i = \log \sum_{j \le i} e^{z_j}` along dim. With the op's own :math:`y_{i,0}` and the weights
    :math:`w_{ij} = e^{z_{j,0} - y_{i,0}}` (j <= i; each at most 1, and :math:`\sum_j w_{ij} = 1`),

    .. math::
        y_i(t) = y_{i,0} + \log \sum_{j \le i} w_{ij}\, E_j(t), \qquad E_j(t) = e^{z_j(t) - z_{j,0}},

    one matmul of the series E with the (n, n) weights and the log of a series whose primal is 1: no exponential
    of z itself, so no overflow or underflow however far apart the z_j are. O(n^2) memory along dim."""
    if z.ndim == 0:  # of one element: the identity
        return z
    d = _dim(dim, z.ndim)
    s = z.series.movedim(d, -1)  # (K+1, ..., n)
    y0 = torch.logcumsumexp(z.primal, dim).movedim(dim, -1)  # (..., n)
    n = s.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=s.device).tril()
    weights = torch.exp(torch.where(lower, s[0].unsqueeze(-2) - y0.unsqueeze(-1), -math.inf))  # (..., i, j)
    relative = series.exp(torch.cat([torch.zeros_like(s[:1]), s[1:]]))  # E_j(t), E_j(0) = 1
    out = series.log(torch.matmul(weights, relative.unsqueeze(-1)).squeeze(-1))  # (K+1, ..., n)
    return Jet(torch.cat([y0.unsqueeze(0), out[1:]]).movedim(-1, d))


register_rule(aten.logcumsumexp, _logcumsumexp)
register_rule(aten.prod.dim_int, _prod)
register_rule(aten.prod.default, lambda z, *, dtype=None: _prod(z, None, dtype=dtype))
register_rule(aten.cumprod, _cumprod)
