r"""Affine and bilinear rules: add, sub, neg and a product with a constant act coefficientwise (a constant term
enters the primal only); a product of two Jets is the Cauchy (Leibniz) product
:math:`(ab)_k = \sum_{i+j=k} a_i b_j` (``fdsm.taylor.series.cauchy``), with matmul in place of · for mm, bmm, mv and
addmm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fdsm.taylor import series
from fdsm.taylor.jet import Jet
from fdsm.taylor.rules.operands import _ndim, _order, _plus_primal, add_to_primal
from fdsm.taylor.rules.table import _register_all, register_rule

aten = torch.ops.aten


def _add_primal(z: Jet, c: object) -> Jet:
    """z + c for a constant c: c enters the primal only. A finite Python number in one pass over the series, z + c
    e_0 with e_0 = (1, 0, ..., 0) along the coefficient axis (``_plus_primal``; where the add is the only reader of
    an elementwise rule's value, the plan folds it into that rule instead, ``Elementwise.shifted``). A tensor (or
    an infinite number) goes to the primal, and the higher coefficients expand with its broadcast."""
    if isinstance(c, (int, float)) and math.isfinite(c):
        return Jet(_plus_primal(z.series, c))
    primal = z.primal + c
    higher = z.aligned(primal.dim())[1:].expand(z.order, *primal.shape)
    return Jet(torch.cat([primal.unsqueeze(0), higher]))


def _add(a: object, b: object, *, alpha: float = 1) -> object:
    if alpha != 1:
        b = _mul(b, alpha) if isinstance(b, Jet) else b * alpha
    if isinstance(a, Jet) and isinstance(b, Jet):
        ndim = max(a.ndim, b.ndim)
        return Jet(a.aligned(ndim) + b.aligned(ndim))
    return _add_primal(a, b) if isinstance(a, Jet) else _add_primal(b, a)


def _sub(a: object, b: object, *, alpha: float = 1) -> object:
    return _add(a, _neg(b) if isinstance(b, Jet) else -b, alpha=alpha)


def _neg(z: Jet) -> Jet:
    return Jet(-z.series)


def _mul(a: object, b: object) -> object:
    if isinstance(a, Jet) and isinstance(b, Jet):
        ndim = max(a.ndim, b.ndim)
        return Jet(series.cauchy(a.aligned(ndim), b.aligned(ndim)))
    z, c = (a, b) if isinstance(a, Jet) else (b, a)
    return Jet(z.aligned(_ndim(c)) * c)


_register_all([aten.add.Tensor, aten.add.Scalar], _add)
_register_all([aten.sub.Tensor, aten.sub.Scalar], _sub)


def _rsub(a: object, b: object, *, alpha: float = 1) -> object:
    """b - alpha * a."""
    return _add(_mul(a, -alpha) if isinstance(a, Jet) else -alpha * a, b)


register_rule(aten.rsub, _rsub)
register_rule(aten.neg, _neg)
_register_all([aten.mul.Tensor, aten.mul.Scalar], _mul)


def _matmul_pairs(a: object, b: object) -> Tensor:
    r"""The Cauchy product with matmul in place of ·: :math:`(AB)_k = \sum_{i+j=k} A_i B_j`, every pair in one batched
    matmul; a series' leading axis is the pair index, a constant broadcasts over it."""
    order = _order(a, b)
    if not isinstance(b, Jet):
        return torch.matmul(a.series, b)  # (K+1, ..., n, m) @ (m, p): every coefficient at once
    if not isinstance(a, Jet):
        return torch.matmul(a, b.series)
    i, j, k = series._pairs(order, a.series.device)
    terms = torch.matmul(a.series.index_select(0, i), b.series.index_select(0, j))  # (P, ..., n, p)
    return terms.new_zeros((order + 1, *terms.shape[1:])).index_add(0, k, terms)


register_rule(aten.mm, lambda a, b: Jet(_matmul_pairs(a, b)))
register_rule(aten.bmm, lambda a, b: Jet(_matmul_pairs(a, b)))


def _mv(a: object, b: object) -> Jet:
    """A matrix times a vector, as a matmul with a one-column matrix."""
    column = Jet(b.series.unsqueeze(-1)) if isinstance(b, Jet) else b.unsqueeze(-1)
    return Jet(_matmul_pairs(a, column).squeeze(-1))


register_rule(aten.mv, _mv)


def _addmm(bias: object, a: object, b: object, *, beta: float = 1, alpha: float = 1) -> Jet:
    """beta * bias + alpha * (a @ b); a constant bias enters the primal only."""
    product = _matmul_pairs(a, b)
    if alpha != 1:
        product = product * alpha
    if isinstance(bias, Jet):
        return _add(Jet(product), _mul(bias, beta))
    product = add_to_primal(product, bias if beta == 1 else beta * bias)  # the fresh product's primal only
    return Jet(product)


register_rule(aten.addmm, _addmm)
