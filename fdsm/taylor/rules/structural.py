r"""Structural rules: ops that act on every coefficient at once, with the op's dims shifted past the coefficient
axis (views, permutes, slices, indexing, splits, diagonals, tril / triu, cat, sums, cumulative sums, means), and
the batch-stacked ones (convolution, pooling and max unpooling, upsampling, padding, im2col / col2im, shuffles,
copies): the K+1 coefficients stacked along the batch axis, one call of batch (K+1)·B, a bias in the primal
(k = 0) only. For a linear op L, :math:`L(\sum_k z_k t^k) = \sum_k L(z_k) t^k`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fdsm.taylor.jet import Jet
from fdsm.taylor.rules.affine import _add
from fdsm.taylor.rules.operands import _as_series, _dim, _dims, _ndim, _no_jet, _order, add_to_primal
from fdsm.taylor.rules.table import Rule, _register_all, register_rule

aten = torch.ops.aten


def _reshape(z: Jet, shape: Sequence[int]) -> Jet:
    return Jet(z.series.reshape(z.order + 1, *shape))


_register_all([aten.view.default, aten._unsafe_view, aten.reshape], _reshape)  # view.dtype: complex_values
register_rule(aten.t, lambda z: Jet(z.series.transpose(1, 2)) if z.ndim == 2 else Jet(z.series))
register_rule(aten.transpose.int, lambda z, d0, d1: Jet(z.series.transpose(_dim(d0, z.ndim), _dim(d1, z.ndim))))
register_rule(aten.permute, lambda z, dims: Jet(z.series.permute(0, *(_dim(d, z.ndim) for d in dims))))
register_rule(aten.unsqueeze, lambda z, d: Jet(z.series.unsqueeze(_dim(d, z.ndim + 1))))
register_rule(aten.select.int, lambda z, d, index: Jet(z.series.select(_dim(d, z.ndim), index)))
register_rule(aten.slice.Tensor, lambda z, d=0, start=None, end=None, step=1:
              Jet(aten.slice.Tensor(z.series, _dim(d, z.ndim), start, end, step)))
register_rule(aten.flip, lambda z, dims: Jet(z.series.flip(_dims(dims, z.ndim))))
register_rule(aten.roll, lambda z, shifts, dims=(): Jet(z.series.roll(shifts, _dims(dims, z.ndim))))
register_rule(aten.index_select, lambda z, d, index: Jet(z.series.index_select(_dim(d, z.ndim), index)))


def _index(z: Jet, indices: Sequence[Tensor | None]) -> Jet:
    """``z[indices]`` (advanced indexing) on every coefficient: one call with the coefficient axis kept in front, or,
    where the index tensors are not adjacent (the result's indexed dims then come first), one call per
    coefficient."""
    at = [i for i, index in enumerate(indices) if index is not None]
    if at == list(range(at[0], at[-1] + 1)):
        return Jet(aten.index.Tensor(z.series, [None, *indices]))
    return Jet(torch.stack([aten.index.Tensor(row, indices) for row in z.series]))


_register_all([aten.index.Tensor, aten._unsafe_index.Tensor], _index)


def _embedding(table: Jet, indices: Tensor, padding_idx: int = -1, scale_grad_by_freq: bool = False,
               sparse: bool = False) -> Jet:
    """``embedding(table, indices)`` of a table that depends on x: the rows at the indices, of every coefficient.
    ``padding_idx`` and ``scale_grad_by_freq`` shape only autograd's gradient into the table (no gradient into the
    padding row, a scaled one into frequent rows), not the lookup: of a table that depends on x the derivatives are
    the lookup's, and so is their gradient (nested autograd's convention gives other derivatives there). A constant
    table (``nn.Embedding``'s weight) never reaches this rule: the op runs as it is, with autograd's gradient."""
    _no_jet("aten.embedding", indices)
    return Jet(table.series[:, indices])


register_rule(aten.embedding, _embedding)

register_rule(aten.gather, lambda z, d, index, sparse_grad=False:
              Jet(z.series.gather(_dim(d, z.ndim), index.expand(z.order + 1, *index.shape))))
_register_all([aten.diagonal, aten.diagonal_copy], lambda z, offset=0, dim1=0, dim2=1:
              Jet(torch.diagonal(z.series, offset, _dim(dim1, z.ndim), _dim(dim2, z.ndim))))
register_rule(aten.diag_embed, lambda z, offset=0, dim1=-2, dim2=-1:  # dim1, dim2: of the result, one dim more
              Jet(torch.diag_embed(z.series, offset, _dim(dim1, z.ndim + 1), _dim(dim2, z.ndim + 1))))
register_rule(aten.tril, lambda z, diagonal=0: Jet(torch.tril(z.series, diagonal)))  # on the last two dims
register_rule(aten.triu, lambda z, diagonal=0: Jet(torch.triu(z.series, diagonal)))
register_rule(aten.cumsum, lambda z, dim, *, dtype=None: Jet(z.series.cumsum(_dim(dim, z.ndim), dtype=dtype)))
register_rule(aten.detach, lambda z: z.primal.detach())  # no derivative flows through detach, as in autograd


def _squeeze(z: Jet, dims: int | Sequence[int] | None = None) -> Jet:
    dims = [d - 1 for d in _dims(dims, z.ndim)]
    return Jet(z.series.squeeze([d + 1 for d in dims if z.shape[d] == 1]))


register_rule(aten.squeeze, _squeeze)


def _expand(z: Jet, sizes: Sequence[int], *, implicit: bool = False) -> Jet:
    return Jet(z.aligned(len(sizes)).expand(z.order + 1, *sizes))


register_rule(aten.expand, _expand)


def _repeat(z: Jet, repeats: Sequence[int]) -> Jet:
    return Jet(z.aligned(len(repeats)).repeat(1, *repeats))


register_rule(aten.repeat, _repeat)


def _cat(tensors: Sequence[object], dim: int = 0) -> Jet:
    order, ndim = _order(tensors), max(_ndim(t) for t in tensors)
    return Jet(torch.cat([_as_series(t, order, ndim) for t in tensors], _dim(dim, ndim)))


def _stack(tensors: Sequence[object], dim: int = 0) -> Jet:
    order, ndim = _order(tensors), max(_ndim(t) for t in tensors)
    return Jet(torch.stack([_as_series(t, order, ndim) for t in tensors], _dim(dim, ndim + 1)))


register_rule(aten.cat, _cat)
register_rule(aten.stack, _stack)


def _split(z: Jet, split: int | Sequence[int], dim: int = 0) -> tuple[Jet, ...]:
    return tuple(Jet(s) for s in torch.split(z.series, split, _dim(dim, z.ndim)))


_register_all([aten.split.Tensor, aten.split_with_sizes, aten.unsafe_split.Tensor, aten.unsafe_split_with_sizes],
              _split)
register_rule(aten.unbind.int, lambda z, dim=0: tuple(Jet(s) for s in z.series.unbind(_dim(dim, z.ndim))))


def _sum(z: Jet, dim: Sequence[int] | None = None, keepdim: bool = False, *, dtype: torch.dtype | None = None
         ) -> Jet:
    return Jet(z.series.sum(_dims(dim, z.ndim), keepdim=keepdim, dtype=dtype))


def _mean(z: Jet, dim: Sequence[int] | None = None, keepdim: bool = False, *, dtype: torch.dtype | None = None
          ) -> Jet:
    return Jet(z.series.mean(_dims(dim, z.ndim), keepdim=keepdim, dtype=dtype))


register_rule(aten.sum, _sum)
register_rule(aten.mean, _mean)


def _stacked(op: Callable[..., Tensor]) -> Rule:
    """The rule of an op that treats dim 0 as a batch of independent samples (pooling, upsampling, padding, a
    memory-format copy): one call on the (K+1)·B batch of every coefficient; (K+1, B, ...) -> (K+1, B, ...)."""

    def rule(z: Jet, *args, **kwargs) -> Jet:
        _no_jet(str(op), args, list(kwargs.values()))
        out = op(z.series.flatten(0, 1), *args, **kwargs)  # ((K+1)·B, ...); im2col of one sample: ((K+1)·C·k, L)
        return Jet(out.unflatten(0, (z.order + 1, -1)))

    return rule


for _op in (aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d, aten._adaptive_avg_pool2d, aten.upsample_nearest1d,
            aten.upsample_nearest2d, aten.upsample_nearest3d, aten.upsample_bilinear2d, aten.upsample_linear1d,
            aten.upsample_bicubic2d, aten.upsample_trilinear3d, aten._upsample_bilinear2d_aa,
            aten._upsample_bicubic2d_aa, aten.reflection_pad1d, aten.reflection_pad2d, aten.reflection_pad3d,
            aten.replication_pad1d, aten.replication_pad2d, aten.replication_pad3d, aten.im2col, aten.col2im,
            aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle, aten.clone, aten.alias,
            aten.lift_fresh_copy):
    register_rule(_op, _stacked(_op))


def _max_unpool(op: Callable[..., Tensor]) -> Rule:
    """Max unpooling (``nn.MaxUnpool1d`` to ``3d``): each value written to the index its max pooling recorded, zeros
    elsewhere, linear for the fixed indices: one call on the (K+1)·B stacked coefficients, the indices repeated for
    each coefficient."""

    def rule(z: Jet, indices: Tensor, *args) -> Jet:
        _no_jet(str(op), [indices, *args])
        repeated = indices.expand(z.order + 1, *indices.shape).flatten(0, 1)
        return Jet(op(z.series.flatten(0, 1), repeated, *args).unflatten(0, (z.order + 1, -1)))

    return rule


register_rule(aten.max_unpool2d, _max_unpool(aten.max_unpool2d))
register_rule(aten.max_unpool3d, _max_unpool(aten.max_unpool3d))

_copy_stacked = _stacked(aten._to_copy)


def _to_copy(z: Jet, *args, dtype: torch.dtype | None = None, **kwargs) -> object:
    """A cast or copy: to a floating or complex dtype, coefficientwise (a cast between real and complex is linear
    over the reals); to an integer or bool dtype, a constant (the op on the primal: its derivatives are zero almost
    everywhere, as autograd has it)."""
    if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
        return aten._to_copy(z.primal, *args, dtype=dtype, **kwargs)
    return _copy_stacked(z, *args, dtype=dtype, **kwargs)


register_rule(aten._to_copy, _to_copy)


def _constant_pad(z: Jet, pad: Sequence[int], value: float = 0.0) -> Jet:
    """The padding is a constant: ``value`` in the primal, 0 in every higher coefficient."""
    higher = aten.constant_pad_nd(z.series[1:], pad, 0.0)
    return Jet(torch.cat([aten.constant_pad_nd(z.primal, pad, value).unsqueeze(0), higher]))


register_rule(aten.constant_pad_nd, _constant_pad)


def _convolution(z: object, weight: object, bias: Tensor | None, *args) -> Jet:
    r"""A convolution of a Jet with a constant weight: one convolution of the (K+1)·B stacked coefficients, without
    the bias, then the bias added to the primal's block. Both Jets: the Cauchy product, one convolution per pair."""
    if isinstance(z, Jet) and not isinstance(weight, Jet):
        out = aten.convolution(z.series.flatten(0, 1), weight, None, *args)  # ((K+1)·B, C_out, ...)
        if bias is not None and not isinstance(bias, Jet):  # on the primal's B rows, before the view below
            out, bias = add_to_primal(out, bias.view(-1, *([1] * (out.dim() - 2))), rows=z.shape[0]), None
        out = out.unflatten(0, (z.order + 1, z.shape[0]))  # (K+1, B, C_out, ...)
    else:
        order = _order(z, weight)
        zs, ws = _as_series(z, order, _ndim(z)), _as_series(weight, order, _ndim(weight))
        out = torch.stack([sum(aten.convolution(zs[i], ws[k - i], None, *args) for i in range(k + 1))
                           for k in range(order + 1)])
    if isinstance(bias, Jet):
        return _add(Jet(out), Jet(bias.series.view(bias.order + 1, -1, *([1] * (out.dim() - 3)))))
    if bias is not None:
        out = add_to_primal(out, bias.view(-1, *([1] * (out.dim() - 3))))  # the fresh output's primal only
    return Jet(out)


register_rule(aten.convolution, _convolution)
