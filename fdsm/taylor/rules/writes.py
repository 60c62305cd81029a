r"""Writes, as functionalize spells them: a new tensor with some elements replaced (copy, fill, slice_scatter,
select_scatter, index_put), the scatters and index_add, and the negative log-likelihood of cross-entropy. Each is
linear in its base and source for fixed indices, so it is the op on their series; a write of a value that depends
on x into a tensor f closes over is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fdsm.registry import NotSupported
from fdsm.taylor.jet import Jet, primal_of
from fdsm.taylor.rules.operands import _as_series, _dim, _ndim, _no_jet, _order
from fdsm.taylor.rules.table import Rule, _register_all, register_rule
from fdsm.taylor.trace import INSTEAD

aten = torch.ops.aten


def _copy(destination: object, source: object, non_blocking: bool = False) -> object:
    """``copy(destination, source)``: source, broadcast to the destination's shape and cast to its dtype (none of
    the destination's values survive); into an integer or bool destination, a constant, as ``_to_copy``."""
    shape, dtype = primal_of(destination).shape, primal_of(destination).dtype
    if not isinstance(source, Jet) or not (dtype.is_floating_point or dtype.is_complex):  # integer or bool: a constant
        return primal_of(source).to(dtype).expand(shape)
    return Jet(source.aligned(len(shape)).to(dtype).expand(source.order + 1, *shape))


def _scatter(op: Callable[..., Tensor]) -> Rule:
    """``slice_scatter`` / ``select_scatter(base, source, dim, ...)``: the op on the series of both (a constant one
    as (value, 0, ..., 0)), dim shifted past the coefficient axis. Complex series go through their real views (a
    trailing dim of the real and imaginary parts): autograd has no formula for either op's complex outputs."""

    def rule(base: object, source: object, dim: int = 0, *args) -> Jet:
        order, ndim = _order(base, source), _ndim(base)
        base, source = _as_series(base, order, ndim), _as_series(source, order, _ndim(source))
        if not base.is_complex():
            return Jet(op(base, source, _dim(dim, ndim), *args))
        real = op(torch.view_as_real(base), torch.view_as_real(source.to(base.dtype)), _dim(dim, ndim), *args)
        return Jet(torch.view_as_complex(real))

    return rule


def _indexed(op: Callable[..., Tensor], base: object, dim: int, index: Tensor, source: object, *args,
             expand: bool = True, **kwargs) -> Jet:
    """An op linear in base and source for a fixed index (index_add, scatter_add, scatter, scatter_reduce's sum and
    mean): the op on their series (a constant's as (value, 0, ..., 0)), dim shifted past the coefficient axis, the
    index expanded along it (``expand``; index_add's is a 1-d index of the dim alone)."""
    order, ndim = _order(base, source), _ndim(base)
    index = index.expand(order + 1, *index.shape) if expand else index
    return Jet(op(_as_series(base, order, ndim), _dim(dim, ndim), index, _as_series(source, order, ndim), *args,
                  **kwargs))


def _index_add(base: object, dim: int, index: Tensor, source: object, *, alpha: float = 1) -> Jet:
    return _indexed(torch.index_add, base, dim, index, source, expand=False, alpha=alpha)


def _scatter_add(base: object, dim: int, index: Tensor, source: object) -> Jet:
    """A graph network's message sum."""
    return _indexed(torch.scatter_add, base, dim, index, source)


def _linear_scatter(reduce: str | None) -> dict:
    """scatter's ``reduce`` keyword, if it is linear (None or "add"); "multiply" has no rule."""
    if reduce not in (None, "add"):
        raise NotSupported(f"exact-taylor: scatter with reduce={reduce!r} has no Taylor rule (only None and 'add' are "
                           f"linear); {INSTEAD}")
    return {"reduce": reduce} if reduce else {}


def _scatter_src(base: object, dim: int, index: Tensor, source: object, *, reduce: str | None = None) -> Jet:
    """``scatter(base, dim, index, source)``: linear in base and source for a fixed index (as is its ``reduce="add"``),
    so the op on their series."""
    return _indexed(torch.scatter, base, dim, index, source, **_linear_scatter(reduce))


def _scatter_value(base: Jet, dim: int, index: Tensor, value: float, *, reduce: str | None = None) -> Jet:
    """``scatter(base, dim, index, value)`` with a number: the value (or, with ``reduce="add"``, its sum) enters the
    primal; the higher coefficients there are 0 (or base's own)."""
    how = _linear_scatter(reduce)
    d = _dim(dim, base.ndim)
    primal = base.primal.scatter(dim, index, value, **how)
    higher = base.series[1:] if reduce else base.series[1:].scatter(d, index.expand(base.order, *index.shape), 0.0)
    return Jet(torch.cat([primal.unsqueeze(0), higher]))


def _scatter_reduce(base: object, dim: int, index: Tensor, source: object, reduce: str, *,
                    include_self: bool = True) -> Jet:
    """``scatter_reduce``: its "sum" and "mean" are linear in base and source for a fixed index, so the op on the
    series; the others ("prod", "amax", "amin") are not and have no rule."""
    if reduce not in ("sum", "mean"):
        raise NotSupported(f"exact-taylor: scatter_reduce with reduce={reduce!r} has no Taylor rule (only 'sum' and "
                           f"'mean' are linear); {INSTEAD}")
    return _indexed(torch.scatter_reduce, base, dim, index, source, reduce, include_self=include_self)


def _index_put(base: object, indices: Sequence[Tensor | None], values: object, accumulate: bool = False) -> Jet:
    """``base[indices] = values`` (or ``+=``, with ``accumulate``), functionalize's form of a masked or indexed write:
    linear in base and values for fixed indices, so the op on each coefficient (one call per coefficient: the
    indices address z's own dims, masks included)."""
    order = _order(base, values)
    rows, new = _as_series(base, order, _ndim(base)), _as_series(values, order, _ndim(values))
    return Jet(torch.stack([aten.index_put(rows[k], indices, new[k], accumulate) for k in range(order + 1)]))


def _nll_loss(op: Callable[..., tuple[Tensor, Tensor]]) -> Rule:
    """``nll_loss_forward`` / ``nll_loss2d_forward(log_probs, target, weight, reduction, ignore_index)``, the loss of
    ``F.cross_entropy``: for fixed targets and class weights a weighted sum (or mean) of picked entries, linear in
    the log-probabilities, so the op on each coefficient; the total weight is a constant."""

    def rule(log_probs: Jet, target: Tensor, *args) -> tuple[Jet, Tensor]:
        _no_jet(str(op), target, args)
        rows = [op(row, target, *args) for row in log_probs.series]
        return Jet(torch.stack([loss for loss, _ in rows])), rows[0][1]

    return rule


register_rule(aten.nll_loss_forward, _nll_loss(aten.nll_loss_forward))
register_rule(aten.nll_loss2d_forward, _nll_loss(aten.nll_loss2d_forward))
register_rule(aten.index_add, _index_add)
register_rule(aten.scatter_add, _scatter_add)
_register_all([aten.scatter.src, aten.scatter.reduce], _scatter_src)
_register_all([aten.scatter.value, aten.scatter.value_reduce], _scatter_value)
register_rule(aten.scatter_reduce.two, _scatter_reduce)
_register_all([aten.index_put, aten._unsafe_index_put], _index_put)
register_rule(aten.copy.default, _copy)
register_rule(aten.slice_scatter, _scatter(aten.slice_scatter))
register_rule(aten.select_scatter, _scatter(aten.select_scatter))
register_rule(aten.fill.Tensor, _copy)  # fill(z, value): value everywhere, a Jet where it depends on x


def _copy_into_a_leaf(destination: Tensor, source: object, non_blocking: bool = False) -> None:
    """functionalize's write-back of a value into a tensor f closes over (``fdsm.taylor.trace._functional``): where
    that value depends on x, the tensor would hold a Jet's primal only, and later calls would read it."""
    raise NotSupported("exact-taylor: f writes a value computed from x in place into a tensor it closes over (a "
                       f"parameter, a buffer, a captured tensor); compute it out of place, {INSTEAD}")


register_rule(aten.copy_, _copy_into_a_leaf)
