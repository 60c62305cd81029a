r"""The rule table: one Taylor rule per aten op, in the style of jax's ``jet.py`` (``jet_rules``).

A rule has the op's own signature, with a ``Jet`` in place of every argument that depends on x, and returns the
op's result with a ``Jet`` in place of every output that depends on x:

    rule(*args, **kwargs) -> Jet | Tensor | tuple

The interpreter (``fdsm.taylor.propagate``) calls the rule of a node only when one of its arguments is a Jet;
nodes that do not depend on x (constants, the parameters' own preprocessing) run as they are. An op with a Jet
argument and no rule raises ``fdsm.NotSupported`` (a ``NotImplementedError``) naming the op.
``register_rule(op, rule)`` adds a rule for an op of a user's network; the built-in rules below are registered the
same way, right after their definition, in families (jet's ``deflinear``, ``def_deriv``, ``defzero``):

================== ===================================================================================
family             rule
================== ===================================================================================
structural         views, permutes, slices, indexing, splits, diagonals, tril/triu, cat, sums, cumulative sums,
                   means act on every coefficient at once: the op with its dims shifted past the leading
                   coefficient axis
batch-stacked      convolution, average pooling, upsampling (nearest, (bi/tri)linear, bicubic, antialiased),
                   padding, im2col / col2im (Unfold, Fold), pixel and channel shuffles: the K+1 coefficients
                   stacked along the batch axis, one call of batch (K+1)·B; a bias enters the primal (k = 0) only
affine             add, sub, neg, matmul with one constant factor: coefficientwise; a constant term enters
                   the primal only
bilinear           mul, div, a matmul of two Jets, atan2, hypot: the Cauchy (Leibniz) product; prod and
                   cumprod as trees of it; logcumsumexp as the log of a weighted running sum
elementwise        exp, exp2, log, tanh, sigmoid, softplus, SiLU, GELU, pow, sin, cos, tan, sinh, cosh, atan,
                   asin, acos, asinh, acosh, atanh, sinc, erf, erfinv, lgamma, digamma, polygamma, ...: their
                   derivative coefficients at z_0, composed by Horner's rule (``fdsm.taylor.compose``)
piecewise          ReLU, ELU, where, clamp, copysign, fmod / remainder, amax / max / min, fmax / fmin: the
                   series of the active branch, chosen on the primal
picking            max / min over a dim, sort, topk, median, kthvalue, mode, cummax / cummin, adaptive max
                   pooling: the series at the indices the primal picks
writes             copy, fill, slice_scatter, select_scatter, index_put (functionalize's form of in-place and
                   masked writes), scatter, index_add, scatter_add, scatter_reduce's sum and mean, and the
                   negative log-likelihood of cross-entropy: linear for fixed indices, the op on the series
zero               comparisons, sign, floor, ``*_like``: the op on the primals, a constant
linear algebra     inverse, solves, Cholesky, LU, eigh, svdvals, determinants: the recurrence
                   of each op's defining identity, in ``fdsm.taylor.linalg``
================== ===================================================================================

Composites without a rule (mish, hardswish, hardsigmoid, PReLU, log-sigmoid, GLU, logaddexp, addcmul, lerp,
baddbmm, masked_fill, vector norms and distances, max pooling, grid sampling, the regression losses, scaled
dot-product attention on the CPU, ...) reach the rules above through torch's own decompositions
(``fdsm.taylor.trace.TORCH_DECOMPOSED``), and cdist, pdist, nn.Bilinear and RReLU in eval mode through ours
(``fdsm.taylor.trace.DECOMPOSITIONS``). Ops with neither (erfcx, i0, singular vectors, eig, qr, the nonlinear
scatter reductions, RReLU in training, attention's CUDA kernels, ...) raise ``NotSupported`` naming the op.

Every rule is written in torch ops, so its result is differentiable in the parameters of f.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fdsm.registry import NotSupported, Registry
from fdsm.taylor import compose, series
from fdsm.taylor.jet import Jet, jets_in, primal_of
from fdsm.taylor.trace import INSTEAD, clear_cache
from kernels.constants import constant

aten = torch.ops.aten
Rule = Callable[..., object]

RULES: Registry[Rule] = Registry("Taylor rule")


def rule_key(op: object) -> str:
    """The table's key for an op: ``aten.add.Tensor`` for one overload, ``aten.add`` for all of them."""
    if isinstance(op, str):
        return op
    if isinstance(op, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(op)
    raise TypeError(f"register_rule(op, rule): expected an aten op (e.g. torch.ops.aten.exp.default) or its "
                    f"name, got {type(op).__name__}")


def register_rule(op: object, rule: Rule, *, replace: bool = False) -> Rule:
    """Register ``rule`` for ``op``: an ``OpOverload`` (one overload), an ``OpOverloadPacket`` (every overload) or
    the name of either. The rule takes the op's arguments, with a ``Jet`` for each that depends on x. An op that has
    a rule already is a ValueError, unless ``replace=True``: the new rule then serves every later call (the traced
    graphs, whose plans hold the old one, are forgotten). Returns the rule."""
    key = rule_key(op)
    if (key in RULES or not isinstance(op, str) and rule_for(op) is not None) and not replace:
        raise ValueError(f"register_rule: {key} has a Taylor rule already; pass replace=True to replace it")
    if replace:
        clear_cache()
    return RULES.register(key, rule, replace=replace)


def rule_for(op: object) -> Rule | None:
    """The rule of an op: its overload's own, else its packet's; None when there is none."""
    for key in (str(op), str(getattr(op, "overloadpacket", op))):
        if key in RULES:
            return RULES.get(key)
    return None


def _register_all(ops: Sequence[object], rule: Rule) -> None:
    for op in ops:
        register_rule(op, rule)


# ---- helpers --------------------------------------------------------------------------------------------------

def _ndim(value: object) -> int:
    if isinstance(value, Jet):
        return value.ndim
    return value.dim() if isinstance(value, Tensor) else 0


def _order(*values: object) -> int:
    return next(j for v in values for j in jets_in(v)).order


def _as_series(value: object, order: int, ndim: int) -> Tensor:
    """A Jet's series, or a constant's (value, 0, ..., 0), aligned to ``ndim`` dims after the coefficient axis."""
    if isinstance(value, Jet):
        return value.aligned(ndim)
    constant = value if isinstance(value, Tensor) else torch.tensor(value)
    return Jet(series.constant(constant, order)).aligned(ndim)


def _dim(d: int, ndim: int) -> int:
    """A dim of z, as the dim of its series (one past the coefficient axis)."""
    return (d % ndim if ndim else 0) + 1


def _dims(dims: int | Sequence[int] | None, ndim: int) -> list[int]:
    if dims is None or (not isinstance(dims, int) and len(dims) == 0):
        return list(range(1, ndim + 1))
    return [_dim(d, ndim) for d in ([dims] if isinstance(dims, int) else dims)]


def _no_jet(who: str, *values: object) -> None:
    if any(True for v in values for _ in jets_in(v)):
        raise NotSupported(f"exact-taylor: the Taylor rule of {who} takes a Jet in its first argument only; "
                           "here another argument depends on x too; register a rule for it with "
                           f"fdsm.taylor.register_rule, {INSTEAD}")


def _plus_primal(series: Tensor, value: Tensor | float) -> Tensor:
    """series + value e_0, e_0 = (1, 0, ..., 0) along the coefficient axis, out of place: one pass over the series
    (value · 0 = 0 leaves the higher coefficients as they are), adding the small product e_0 value (an ``addcmul``
    of the two broadcast factors runs a slower loop)."""
    e0 = compose.along(constant((1.0,) + (0.0,) * (series.shape[0] - 1), series.dtype, series.device), series[0])
    return series + e0 * value if isinstance(value, Tensor) else torch.add(series, e0, alpha=float(value))


class _AddToPrimal(torch.autograd.Function):
    r"""``series[:rows] += value`` in place on a fresh series, recorded by autograd as one node: the gradient of the
    series passes through as it is, and the value's is the primal rows' gradient summed to its shape,
    :math:`\bar v = \sum \bar z_{:rows}` over the dims it was broadcast along. Autograd's own record of the slice
    update (``CopySlices``) clones the whole gradient in the backward; the out-of-place ``_plus_primal`` makes one
    more pass over the whole series in the forward and reduces the whole gradient in the backward."""

    @staticmethod
    def forward(ctx, series: Tensor, value: Tensor | float, rows: int) -> Tensor:  # noqa: D102
        ctx.rows = rows
        ctx.shape = value.shape if isinstance(value, Tensor) else None
        series[:rows].add_(value)
        ctx.mark_dirty(series)
        return series

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:  # noqa: D102
        grad_value = grad[:ctx.rows].sum_to_size(ctx.shape) if ctx.needs_input_grad[1] else None
        return grad, grad_value, None


def add_to_primal(series: Tensor, value: Tensor | float, rows: int = 1) -> Tensor:
    """series + value on its primal, for a series that nothing else holds (a rule's fresh result): the first
    ``rows`` entries along dim 0 (1 for a (K+1, *s) series; B for its (K+1)·B-row form, a convolution's output)
    gain ``value``, in place. Where autograd records it, through ``_AddToPrimal``; on a view (whose in-place update
    autograd records on its base) or under a ``torch.func`` transform, out of place."""
    if torch.is_grad_enabled() and (series.requires_grad or isinstance(value, Tensor) and value.requires_grad):
        if series._is_view() or torch._C._are_functorch_transforms_active():
            return torch.cat([series[:rows] + value, series[rows:]])
        return _AddToPrimal.apply(series, value, rows)
    series[:rows].add_(value)
    return series


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


# ---- structural: the op on every coefficient, dims shifted past the coefficient axis ---------------------------

def _reshape(z: Jet, shape: Sequence[int]) -> Jet:
    return Jet(z.series.reshape(z.order + 1, *shape))


_register_all([aten.view, aten._unsafe_view, aten.reshape], _reshape)
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


_copy_stacked = _stacked(aten._to_copy)


def _to_copy(z: Jet, *args, dtype: torch.dtype | None = None, **kwargs) -> object:
    """A cast or copy: to a floating dtype, coefficientwise; to an integer or bool dtype, a constant (the op on the
    primal: its derivatives are zero almost everywhere, as autograd has it)."""
    if dtype is not None and not dtype.is_floating_point:
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


# ---- affine and bilinear --------------------------------------------------------------------------------------

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


def _div(a: object, b: object, *, rounding_mode: str | None = None) -> object:
    if rounding_mode is not None:  # floor / trunc division: piecewise constant
        return aten.div.Tensor_mode(primal_of(a), primal_of(b), rounding_mode=rounding_mode)
    if not isinstance(b, Jet):
        return Jet(a.aligned(_ndim(b)) / b)
    return _mul(a, _reciprocal(b))  # a / b = a * b^-1, the reciprocal's series


_register_all([aten.add.Tensor, aten.add.Scalar], _add)
_register_all([aten.sub.Tensor, aten.sub.Scalar], _sub)


def _rsub(a: object, b: object, *, alpha: float = 1) -> object:
    """b - alpha * a."""
    return _add(_mul(a, -alpha) if isinstance(a, Jet) else -alpha * a, b)


register_rule(aten.rsub, _rsub)
register_rule(aten.neg, _neg)
_register_all([aten.mul.Tensor, aten.mul.Scalar], _mul)
_register_all([aten.div.Tensor, aten.div.Scalar], _div)
register_rule(aten.div.Tensor_mode, _div)


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


# ---- elementwise nonlinearities: c_m = φ^(m)(z_0)/m! in closed form, composed with z (fdsm.taylor.compose) ----

Coefficients = Callable[[Tensor, int], Tensor | Sequence[Tensor]]  # (z_0, K) -> c_0 .. c_K


def _composed(z: Jet, coefficients: Coefficients) -> Jet:
    r""":math:`\varphi(z(t)) = \sum_m c_m (z(t) - z_0)^m` for ``coefficients(z_0, K)`` -> c_0 .. c_K (a (K+1, *s)
    tensor or K+1 tensors of shape (*s)), by Horner's rule, as one autograd node with a closed-form backward
    (``compose.Composed``) where autograd records it."""
    return Jet(compose.compose(z.series, coefficients))


@dataclass(frozen=True)
class Elementwise:
    r"""The rule of an elementwise φ from its Taylor coefficients at z_0 (``_composed``).

    ``coefficients(z_0, K, **keywords)`` gives c_0 .. c_K, with ``keywords(*args, **kwargs)`` the keywords that the
    op's own arguments after z set (softplus' beta and threshold); None for an op without any.

    ``shift``: a constant added to φ, :math:`c_0 + \mathrm{shift}`. The plan (``fdsm.taylor.propagate``) folds a
    constant add that is the only reader of this rule's value into it (``shifted``): the deep EBM's
    softplus(z) - log 2 then costs no pass over the series of its own.
    """

    coefficients: Callable[..., Tensor | Sequence[Tensor]]
    keywords: Callable[..., dict] | None = None
    shift: float = 0.0

    def __call__(self, z: Jet, *args, **kwargs) -> Jet:
        c = self.coefficients if self.keywords is None else functools.partial(
            self.coefficients, **self.keywords(*args, **kwargs))
        if self.shift:
            c = functools.partial(_shifted, coefficients=c, shift=self.shift)
        return _composed(z, c)

    def shifted(self, shift: float) -> Elementwise:
        """This rule for φ + shift."""
        return replace(self, shift=self.shift + shift)


def _shifted(z0: Tensor, order: int, *, coefficients: Coefficients, shift: float) -> list[Tensor]:
    """The coefficients of φ + shift: c_0 + shift, c_1, ..., c_K."""
    c = coefficients(z0, order)
    return [c[0] + shift, *c[1:]]


def _replace_first(c: Tensor | Sequence[Tensor], first: Tensor) -> list[Tensor]:
    """c with c_0 replaced (by a more accurate primal: expm1, log1p)."""
    return [first, *c[1:]]


def _exp_coefficients(z0: Tensor, order: int) -> Tensor | list[Tensor]:
    """exp: c_m = e^{z_0} / m!."""
    return compose.scaled_rows([1.0 / math.factorial(m) for m in range(order + 1)], torch.exp(z0))


def _log_coefficients(z0: Tensor, order: int, *, shift: float = 0.0) -> list[Tensor]:
    """log(shift + z): c_0 = log(shift + z_0), c_m = (-1)^{m+1} / (m (shift + z_0)^m)."""
    weights = [0.0] + [(-1.0) ** (m + 1) / m for m in range(1, order + 1)]
    c = compose.power_coefficients(torch.ones_like(z0), 1.0 / (z0 + shift) if shift else 1.0 / z0, weights)
    return _replace_first(c, torch.log1p(z0) if shift == 1.0 else torch.log(z0))


def _power_coefficients(z0: Tensor, order: int, p: float) -> Tensor | list[Tensor]:
    r"""z^p: :math:`c_m = \binom{p}{m} z_0^{p - m}`."""
    weights = [math.prod(p - i for i in range(m)) / math.factorial(m) for m in range(order + 1)]
    return compose.power_coefficients(torch.pow(z0, p), 1.0 / z0, weights)


def _sigmoid_derivatives(w: Tensor, order: int, *, beta: float = 1.0, shift: int = 0) -> list[Tensor]:
    r""":math:`\beta^n \sigma^{(n)} / (n + \mathrm{shift})!`, n = 1..order, from w = σ: polynomials in
    q = σ' = w - w² and p = 1 - 2w (``compose.derivative_tables``); (*s) -> order tensors (*s)."""
    return compose.derivative_coefficients("sigmoid", order, beta, shift, torch.addcmul(w, w, w, value=-1),
                                           torch.rsub(w, 1, alpha=2))


def _sigmoid_coefficients(z0: Tensor, order: int) -> list[Tensor]:
    """σ: c_0 = σ(z_0), c_m = σ^(m)(z_0) / m!."""
    w = torch.sigmoid(z0)
    return [w, *_sigmoid_derivatives(w, order)]


def _tanh_coefficients(z0: Tensor, order: int) -> list[Tensor]:
    """tanh: c_0 = tanh z_0, c_m = tanh^(m)(z_0) / m!, polynomials in q = tanh' = 1 - tanh² and p = tanh."""
    w = torch.tanh(z0)
    one = constant((1.0,), w.dtype, w.device)
    return [w, *compose.derivative_coefficients("tanh", order, 1.0, 0, torch.addcmul(one, w, w, value=-1), w)]


def _silu_coefficients(z0: Tensor, order: int) -> list[Tensor]:
    r"""SiLU = z σ(z): :math:`(z\sigma)^{(m)}/m! = z_0\, s_m + s_{m-1}`, with :math:`s_m = \sigma^{(m)}(z_0)/m!`."""
    w = torch.sigmoid(z0)
    s = [w, *_sigmoid_derivatives(w, order)]  # s_0 .. s_K
    return [z0 * w, *(torch.addcmul(s[m - 1], z0, s[m]) for m in range(1, order + 1))]


def _cyclic_coefficients(cycle: Sequence[Tensor], order: int, shift: int) -> list[Tensor]:
    """c_m = cycle[(m + shift) mod len(cycle)] / m!, for a function whose derivatives cycle: sin (shift 0) and cos
    (shift 1) through (sin, cos, -sin, -cos), since sin^(m)(z) = sin(z + m π/2); sinh and cosh through (sinh,
    cosh)."""
    return [cycle[(m + shift) % len(cycle)] * (1.0 / math.factorial(m)) for m in range(order + 1)]


def _sin_cos_coefficients(z0: Tensor, order: int, *, shift: int) -> list[Tensor]:
    s, c = torch.sin(z0), torch.cos(z0)
    return _cyclic_coefficients((s, c, -s, -c), order, shift)


_exp = register_rule(aten.exp, Elementwise(_exp_coefficients))
register_rule(aten.expm1, Elementwise(lambda z0, k: _replace_first(_exp_coefficients(z0, k), torch.expm1(z0))))
_log = register_rule(aten.log, Elementwise(_log_coefficients))
register_rule(aten.log1p, Elementwise(lambda z0, k: _log_coefficients(z0, k, shift=1.0)))
register_rule(aten.log2, Elementwise(lambda z0, k: [c / math.log(2.0) for c in _log_coefficients(z0, k)]))
register_rule(aten.log10, Elementwise(lambda z0, k: [c / math.log(10.0) for c in _log_coefficients(z0, k)]))
register_rule(aten.sigmoid, Elementwise(_sigmoid_coefficients))
register_rule(aten.tanh, Elementwise(_tanh_coefficients))
register_rule(aten.silu, Elementwise(_silu_coefficients))
register_rule(aten.sqrt, Elementwise(lambda z0, k: _power_coefficients(z0, k, 0.5)))
register_rule(aten.rsqrt, Elementwise(lambda z0, k: _power_coefficients(z0, k, -0.5)))
_reciprocal = register_rule(aten.reciprocal, Elementwise(lambda z0, k: _power_coefficients(z0, k, -1.0)))
register_rule(aten.sin, Elementwise(lambda z0, k: _sin_cos_coefficients(z0, k, shift=0)))
register_rule(aten.cos, Elementwise(lambda z0, k: _sin_cos_coefficients(z0, k, shift=1)))


register_rule(aten.sinh, Elementwise(lambda z0, k: _cyclic_coefficients((torch.sinh(z0), torch.cosh(z0)), k, 0)))
register_rule(aten.cosh, Elementwise(lambda z0, k: _cyclic_coefficients((torch.sinh(z0), torch.cosh(z0)), k, 1)))
register_rule(aten.exp2, Elementwise(lambda z0, k: compose.scaled_rows(  # 2^z = e^{z ln 2}: c_m = 2^{z_0} ln^m 2 / m!
    [math.log(2.0) ** m / math.factorial(m) for m in range(k + 1)], torch.exp2(z0))))


def _atan_coefficients(z0: Tensor, order: int) -> list[Tensor]:
    r"""atan: with θ = arccot z_0 ∈ (0, π), so that sin θ = (1 + z_0^2)^{-1/2},
    :math:`\arctan^{(m)}(z_0) = (-1)^{m-1} (m-1)!\, \sin^m\theta\, \sin(m\theta)`, and c_m is that over m!:
    :math:`c_m = (-1)^{m-1} \sin^m\theta \sin(m\theta) / m`."""
    theta = torch.atan2(torch.ones_like(z0), z0)
    s = torch.rsqrt(1 + z0 * z0)
    c, power = [torch.atan(z0)], torch.ones_like(z0)
    for m in range(1, order + 1):
        power = power * s
        c.append(power * torch.sin(theta * m) * ((-1) ** (m - 1) / m))
    return c


def _hermite(y: Tensor, degree: int) -> list[Tensor]:
    r"""The probabilists' Hermite polynomials He_0 .. He_degree at y: :math:`He_{n+1} = y He_n - n He_{n-1}`, so
    that the normal density's derivatives are :math:`\varphi^{(n)} = (-1)^n He_n \varphi`."""
    hermite = [torch.ones_like(y), y]
    for n in range(1, degree):
        hermite.append(y * hermite[n] - n * hermite[n - 1])
    return hermite[:degree + 1]


def _erf_coefficients(z0: Tensor, order: int, *, sign: float = 1.0) -> list[Tensor]:
    r"""erf (``sign`` 1) and erfc = 1 - erf (``sign`` -1). With y = √2 z_0, erf(z) = 2Φ(√2 z) - 1, so
    :math:`\mathrm{erf}^{(m)}(z_0) = 2\, 2^{m/2} \varphi^{(m-1)}(y) = 2\, 2^{m/2} (-1)^{m-1} He_{m-1}(y) \varphi(y)`
    (``_hermite``); c_m is that over m!."""
    y = z0 * math.sqrt(2.0)
    density = torch.exp(-z0 * z0) * (sign * 2 / math.sqrt(2 * math.pi))  # 2 φ(y), signed
    hermite = _hermite(y, order - 1)
    first = torch.erf(z0) if sign > 0 else torch.erfc(z0)
    return [first, *(density * hermite[m - 1] * ((-1) ** (m - 1) * 2 ** (m / 2) / math.factorial(m))
                     for m in range(1, order + 1))]


register_rule(aten.atan, Elementwise(_atan_coefficients))
register_rule(aten.erf, Elementwise(_erf_coefficients))
register_rule(aten.erfc, Elementwise(lambda z0, k: _erf_coefficients(z0, k, sign=-1.0)))


def _tan_coefficients(z0: Tensor, order: int) -> list[Tensor]:
    r"""tan: :math:`t' = 1 + t^2`, so :math:`(m + 1)\, c_{m+1} = [m = 0] + \sum_{i=0}^{m} c_i c_{m-i}`."""
    c = [torch.tan(z0)]
    for m in range(order):
        square = sum(c[i] * c[m - i] for i in range(m + 1))
        c.append(((1.0 + square) if m == 0 else square) * (1.0 / (m + 1)))
    return c


def _algebraic_coefficients(z0: Tensor, order: int, *, function: Callable[[Tensor], Tensor],
                            quadratic: tuple[float, float, float], p: float, sign: float = 1.0) -> list[Tensor]:
    r"""φ with :math:`\varphi' = \pm q^p`, q = a + b z + c z^2 (asin: 1 - z^2, p = -1/2; acos the same, negated;
    acosh: z^2 - 1; atanh: 1 - z^2, p = -1; ...): :math:`c_0 = \varphi(z_0)`, :math:`c_m = \pm d_{m-1} / m`, with d
    the Taylor coefficients of :math:`q^p` at z_0, the power recurrence (``series.power``) of q's own
    (q(z_0), q'(z_0), c, 0, ...)."""
    a, b, c = quadratic
    rows = [a + z0 * (b + c * z0), b + (2 * c) * z0, torch.full_like(z0, c)] + [torch.zeros_like(z0)] * order
    d = series.power(torch.stack(rows[:order]), p)
    return [function(z0), *(d[m - 1] * (sign / m) for m in range(1, order + 1))]


def _algebraic(function: Callable[[Tensor], Tensor], quadratic: tuple[float, float, float], p: float,
               sign: float = 1.0) -> Elementwise:
    return Elementwise(functools.partial(_algebraic_coefficients, function=function, quadratic=quadratic, p=p,
                                         sign=sign))


register_rule(aten.tan, Elementwise(_tan_coefficients))
register_rule(aten.asin, _algebraic(torch.asin, (1.0, 0.0, -1.0), -0.5))  # asin' = (1 - z^2)^(-1/2)
register_rule(aten.acos, _algebraic(torch.acos, (1.0, 0.0, -1.0), -0.5, sign=-1.0))  # acos = pi/2 - asin
register_rule(aten.asinh, _algebraic(torch.asinh, (1.0, 0.0, 1.0), -0.5))  # asinh' = (1 + z^2)^(-1/2)
register_rule(aten.acosh, _algebraic(torch.acosh, (-1.0, 0.0, 1.0), -0.5))  # acosh' = (z^2 - 1)^(-1/2)
register_rule(aten.atanh, _algebraic(torch.atanh, (1.0, 0.0, -1.0), -1.0))  # atanh' = 1 / (1 - z^2)


def _polygamma_coefficients(z0: Tensor, order: int, *, n: int, primal: Tensor | None = None) -> list[Tensor]:
    r"""The n-th polygamma :math:`\psi^{(n)}` (digamma: n = 0): :math:`c_m = \psi^{(n+m)}(z_0) / m!`; lgamma, whose
    derivative is the digamma, as n = -1 with its own primal."""
    c = [torch.polygamma(n, z0) if primal is None else primal]
    return c + [torch.polygamma(n + m, z0) * (1.0 / math.factorial(m)) for m in range(1, order + 1)]


register_rule(aten.lgamma, Elementwise(lambda z0, k: _polygamma_coefficients(z0, k, n=-1, primal=torch.lgamma(z0))))
register_rule(aten.digamma, Elementwise(lambda z0, k: _polygamma_coefficients(z0, k, n=0)))
register_rule(aten.polygamma, lambda n, z: _composed(z, functools.partial(_polygamma_coefficients, n=n)))


@functools.lru_cache(maxsize=16)
def _erfinv_polynomials(order: int) -> tuple[tuple[int, ...], ...]:
    r"""The integer polynomials :math:`P_m` with :math:`\mathrm{erfinv}^{(m)} = P_m(w)\, g^m`, w = erfinv z,
    :math:`g = \tfrac{\sqrt\pi}{2} e^{w^2}` (so w' = g and g' = 2 w g^2): :math:`P_1 = 1`,
    :math:`P_{m+1} = P_m' + 2 m\, w P_m`; coefficients by ascending power of w."""
    polys = [(1,)]
    for m in range(1, order):
        p = polys[-1]
        derivative = [i * p[i] for i in range(1, len(p))]
        shifted = [0] + [2 * m * a for a in p]
        polys.append(tuple(x + y for x, y in zip(derivative + [0] * 2, shifted, strict=False)))
    return tuple(polys)


def _erfinv_coefficients(z0: Tensor, order: int) -> list[Tensor]:
    """erfinv: c_m = P_m(w) g^m / m! (``_erfinv_polynomials``)."""
    w = torch.erfinv(z0)
    g = torch.exp(w * w) * (math.sqrt(math.pi) / 2)
    c, power = [w], torch.ones_like(w)
    for m, poly in enumerate(_erfinv_polynomials(order), start=1):
        power = power * g
        value = torch.zeros_like(w)
        for a in reversed(poly):  # Horner's rule in w
            value = value * w + a
        c.append(value * power * (1.0 / math.factorial(m)))
    return c


register_rule(aten.erfinv, Elementwise(_erfinv_coefficients))


_SINC_SMALL = 0.5  # below it, c_m from the Maclaurin series of sinc; above it, the series division by pi z


def _sinc_coefficients(z0: Tensor, order: int) -> list[Tensor]:
    r"""sinc(z) = sin(πz)/(πz), analytic at 0. For :math:`|z_0| \ge 1/2`, the division of sin(π(z_0 + δ)), whose
    coefficients are :math:`s_m = \pi^m \sin(\pi z_0 + m\pi/2)/m!`, by π(z_0 + δ):
    :math:`c_0 = s_0/(\pi z_0)`, :math:`c_m = (s_m - \pi c_{m-1})/(\pi z_0)`. For :math:`|z_0| < 1/2`, from the
    Maclaurin series :math:`\mathrm{sinc}(z) = \sum_j a_{2j} z^{2j}`, :math:`a_{2j} = (-\pi^2)^j/(2j+1)!`:
    :math:`c_m = \sum_{n \ge m} a_n \binom{n}{m} z_0^{n-m}` (to n = m + 40: the rest is below 1e-30)."""
    small = z0.abs() < _SINC_SMALL
    safe = torch.where(small, torch.ones_like(z0), z0) * math.pi  # no division by 0 in the unused branch
    c, previous = [], None
    for m in range(order + 1):
        s_m = torch.sin(math.pi * z0 + m * math.pi / 2) * (math.pi ** m / math.factorial(m))
        previous = s_m / safe if m == 0 else (s_m - math.pi * previous) / safe
        near = torch.zeros_like(z0)
        for n in reversed(range(m, m + 41)):  # Horner in z_0 over n - m
            a_n = 0.0 if n % 2 else (-math.pi ** 2) ** (n // 2) / math.factorial(n + 1)
            near = near * z0 + a_n * math.comb(n, m)
        c.append(torch.where(small, near, previous))
    c[0] = torch.sinc(z0)
    return c


register_rule(aten.sinc, Elementwise(_sinc_coefficients))


def _entr(z: Jet) -> Jet:
    r"""entr(z) = -z log z (0 at z = 0, -inf for z < 0): the op's primal, the higher coefficients of -z log z by the
    Cauchy product (infinite or NaN at z_0 <= 0, where its derivatives are)."""
    higher = -series.cauchy(z.series, series.log(z.series))[1:]
    return Jet(torch.cat([torch.special.entr(z.primal).unsqueeze(0), higher]))


register_rule(aten.special_entr, _entr)


def _softplus_coefficients(z0: Tensor, order: int, *, beta: float, threshold: float) -> list[Tensor]:
    r"""softplus(βz)/β, whose derivative is w = σ(βz): c_0 = softplus(z_0), c_1 = w and
    :math:`c_m = \beta^{m-1} \sigma^{(m-1)}(\beta z_0) / m!` for m >= 2. Where βz_0 > threshold torch's softplus is
    the identity, and so are its derivatives: w is then exactly 1 (w is torch's own ``softplus_backward`` of a unit
    gradient), whence q = w - w² = 0 and c = (z_0, 1, 0, ...)."""
    w = aten.softplus_backward(constant((1.0,), z0.dtype, z0.device).expand(z0.shape), z0, beta, threshold)
    c = [aten.softplus(z0, beta, threshold), w]
    if order >= 2:
        c += _sigmoid_derivatives(w, order - 1, beta=beta, shift=1)
    return c


register_rule(aten.softplus, Elementwise(_softplus_coefficients, lambda beta=1.0, threshold=20.0:
                                         {"beta": beta, "threshold": threshold}))


def _integer_power(u: Tensor, p: int) -> Tensor:
    """u^p for an integer p >= 0 by repeated Cauchy products (exact at u_0 = 0, where the power recurrence is not)."""
    result, base = None, u
    while p:
        if p & 1:
            result = base if result is None else series.cauchy(result, base)
        p >>= 1
        if p:
            base = series.square(base)
    return result


def _tensor_power_coefficients(z0: Tensor, order: int, p: Tensor) -> list[Tensor]:
    r"""z^p for a constant tensor p, elementwise: :math:`c_m = \binom{p}{m} z_0^{p - m}`, each power taken as it is,
    so that a negative z_0 with an integer p, and z_0 = 0 with p >= m, are exact (as ``torch.pow``'s own). Where the
    binomial is zero (an integer p < m) the power is taken at exponent 0, so that z_0 = 0 gives 0, not 0 · inf."""
    c, binomial = [torch.pow(z0, p)], 1.0
    for m in range(1, order + 1):
        binomial = binomial * (p - (m - 1)) / m
        c.append(binomial * torch.pow(z0, torch.where(binomial == 0, 0.0, p - m)))
    return c


def _pow(a: object, b: object) -> Jet:
    r""":math:`a^b`: an integer power p >= 0 by Cauchy products; any other scalar power by the power recurrence; a
    constant tensor exponent by its binomial coefficients; a Jet exponent, or one that requires a gradient, as
    :math:`\exp(b \log a)`."""
    if isinstance(a, Jet) and isinstance(b, (int, float)):
        if float(b).is_integer() and b >= 0:
            return Jet(_integer_power(a.series, int(b)) if b else series.constant(torch.ones_like(a.primal), a.order))
        return _composed(a, functools.partial(_power_coefficients, p=float(b)))
    if isinstance(a, Jet) and isinstance(b, Tensor) and not b.requires_grad:  # a learnable b needs exp(b log a)'s
        shape = torch.broadcast_shapes(a.shape, b.shape)                         # gradient
        if shape != a.shape:
            a = Jet(a.aligned(len(shape)).expand(a.order + 1, *shape).contiguous())
        return _composed(a, functools.partial(_tensor_power_coefficients, p=b))
    log_a = _log(a) if isinstance(a, Jet) else torch.log(torch.as_tensor(a, dtype=b.dtype))
    return _exp(_mul(b, log_a))  # one of b, log a is a Jet


_register_all([aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar], _pow)


def _series_pair(a: object, b: object) -> tuple[Tensor, Tensor]:
    """The series of a binary op's two arguments (a constant's as (value, 0, ..., 0)), aligned to one ndim, in the
    dtype the op itself returns (``torch.result_type``: a 0-d constant does not promote a Jet, and a Python number
    is taken in that dtype, not rounded to float32 first)."""
    order, ndim = _order(a, b), max(_ndim(a), _ndim(b))
    dtype = torch.result_type(primal_of(a), primal_of(b))
    a, b = (torch.tensor(t, dtype=dtype) if isinstance(t, (int, float)) else t for t in (a, b))
    return _as_series(a, order, ndim).to(dtype), _as_series(b, order, ndim).to(dtype)


def _atan2(y: object, x: object) -> Jet:
    r""":math:`v = \operatorname{atan2}(y, x)`: :math:`v' = (x y' - y x') / r^2`, :math:`r^2 = x^2 + y^2`, so
    :math:`k v_k = \sum_j j (y_j g_{k-j} + x_j h_{k-j})` with the series g = x / r^2 and h = -y / r^2
    (``series.from_derivative`` of each; both parts of v' at once, the branch of v_0 from ``torch.atan2``)."""
    sy, sx = _series_pair(y, x)
    inverse = series.power(series.square(sx) + series.square(sy), -1.0)
    v0 = torch.atan2(sy[0], sx[0])
    along_y = series.from_derivative(sy, v0, series.cauchy(sx, inverse))
    along_x = series.from_derivative(sx, torch.zeros_like(v0), -series.cauchy(sy, inverse))
    return Jet(along_y + along_x)


def _hypot(a: object, b: object) -> Jet:
    r""":math:`\sqrt{a^2 + b^2}`, the power 1/2 of the series :math:`a^2 + b^2` (not differentiable where both are
    0)."""
    sa, sb = _series_pair(a, b)
    return Jet(series.power(series.square(sa) + series.square(sb), 0.5))


def _modulo(rounding: str) -> Rule:
    r"""fmod (``rounding`` "trunc") and remainder ("floor"): :math:`a - q b` with the quotient
    :math:`q = \operatorname{round}(a_0 / b_0)` piecewise constant, so the series :math:`a_k - q b_k` for k >= 1
    (autograd's derivatives 1 and -q), and the op itself on the primals."""
    op = torch.fmod if rounding == "trunc" else torch.remainder

    def rule(a: object, b: object) -> Jet:
        sa, sb = _series_pair(a, b)
        quotient = torch.div(sa[0], sb[0], rounding_mode=rounding)
        return Jet(torch.cat([op(sa[0], sb[0]).unsqueeze(0), sa[1:] - quotient * sb[1:]]))

    return rule


def _copysign(a: object, b: object) -> object:
    """|a| with the sign of b: a's series times ±1 (0 where a_0 = 0, as autograd's); b, piecewise constant, adds
    nothing."""
    b0 = primal_of(b)
    if not isinstance(a, Jet):
        return torch.copysign(torch.as_tensor(a, dtype=b0.dtype), b0)
    primal = torch.copysign(a.primal, b0)
    flip = torch.where(torch.signbit(primal) == torch.signbit(a.primal), 1.0, -1.0).to(a.dtype)
    factor = torch.where(a.primal == 0, 0.0, flip)
    return Jet(torch.cat([primal.unsqueeze(0), a.aligned(primal.dim())[1:] * factor]))


register_rule(aten.atan2, _atan2)
_register_all([aten.copysign.Tensor, aten.copysign.Scalar], _copysign)
register_rule(aten.hypot, _hypot)
register_rule(aten.fmod, _modulo("trunc"))
register_rule(aten.remainder, _modulo("floor"))


# ---- products along a dim: trees of Cauchy products -------------------------------------------------------------

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


# ---- piecewise: the series of the active branch, chosen on the primal -----------------------------------------

def _where(condition: Tensor, a: object, b: object) -> Jet:
    order = _order(a, b)
    ndim = max(_ndim(condition), _ndim(a), _ndim(b))
    return Jet(torch.where(condition, _as_series(a, order, ndim), _as_series(b, order, ndim)))


register_rule(aten.where.self, _where)


def _relu(z: Jet) -> Jet:
    """max(z, 0): z's series where z_0 > 0, else 0 (at z_0 = 0 the zero branch, as relu's backward; at z_0 = -inf
    0 too, where a product with the mask would be 0 · inf; a NaN primal stays NaN)."""
    return Jet(torch.where(z.primal <= 0, 0.0, z.series))


register_rule(aten.relu, _relu)
register_rule(aten.leaky_relu, lambda z, slope=0.01:  # the slope in z's dtype (a Python float would round to float32)
              Jet(z.series * torch.where(z.primal > 0, z.primal.new_tensor(1.0), z.primal.new_tensor(slope))))


def _scaled(t: Tensor, factor: float) -> Tensor:
    """t * factor, without the multiply when factor is 1."""
    return t if factor == 1 else t * factor


def _elu_coefficients(z0: Tensor, order: int, *, alpha: float, scale: float, input_scale: float) -> list[Tensor]:
    r"""scale·z where z_0 > 0, else scale·α(e^{input_scale·z} - 1) (at z_0 = 0 the exponential branch, as elu's
    backward): on that branch, with s = input_scale, :math:`c_m = \text{scale}\,\alpha\, s^m e^{s z_0}/m!`; on the
    linear one c = (scale·z_0, scale, 0, ...). The exponential is taken of min(z_0, 0) only, so the unused branch
    cannot overflow."""
    positive = z0 > 0
    u0 = _scaled(torch.where(positive, 0.0, z0), input_scale)
    e = torch.exp(u0)
    c = [torch.where(positive, _scaled(z0, scale), _scaled(torch.expm1(u0), scale * alpha)),
         torch.where(positive, scale, _scaled(e, scale * alpha * input_scale))]
    if order >= 2:
        rates = [scale * alpha * input_scale ** m / math.factorial(m) for m in range(2, order + 1)]
        c += compose.scaled_rows(rates, torch.where(positive, 0.0, e))  # c_2 .. c_K
    return c


register_rule(aten.elu, Elementwise(_elu_coefficients, lambda alpha=1.0, scale=1.0, input_scale=1.0:
                                    {"alpha": alpha, "scale": scale, "input_scale": input_scale}))


def _gelu_coefficients(z0: Tensor, order: int, *, approximate: str) -> Tensor | list[Tensor]:
    r"""GELU, z Φ(z), and its tanh form.

    Exact (``approximate="none"``): with the normal density φ and the Hermite polynomials :math:`He_n`
    (:math:`He_{n+1} = z He_n - n He_{n-1}`, so that :math:`\varphi^{(n)} = (-1)^n He_n \varphi`),
    :math:`(z\Phi)' = \Phi + z\varphi` and, for m >= 2,
    :math:`(z\Phi)^{(m)} = z\varphi^{(m-1)} + m\,\varphi^{(m-2)} = (-1)^m \varphi\,(He_{m-2} - He_m)`;
    :math:`c_m` is that over m!.

    ``approximate="tanh"``, :math:`\tfrac12 z (1 + \tanh(\sqrt{2/\pi}(z + 0.044715 z^3)))`: its coefficients are
    those of the series of the same expression in u = z_0 + t (``fdsm.taylor.series``), since
    :math:`\mathrm{gelu}(z_0 + t) = \sum_m c_m t^m`."""
    if approximate == "tanh":
        u = torch.stack([z0, torch.ones_like(z0), *(torch.zeros_like(z0) for _ in range(order - 1))])
        inner = (u + 0.044715 * series.cauchy(series.square(u), u)) * math.sqrt(2 / math.pi)
        composed = series.cauchy(u, _plus_primal(series.tanh(inner), 1.0)) * 0.5
        return _replace_first(composed, aten.gelu(z0, approximate="tanh"))  # torch's own primal
    if approximate != "none":
        raise NotSupported(f"exact-taylor: aten.gelu with approximate={approximate!r}; the rule takes 'none' "
                           "or 'tanh'")
    phi = torch.exp(-0.5 * z0 * z0) * (1 / math.sqrt(2 * math.pi))
    hermite = _hermite(z0, order)
    c = [aten.gelu(z0), torch.special.ndtr(z0) + z0 * phi]
    for m in range(2, order + 1):
        c.append(phi * (hermite[m - 2] - hermite[m]) * ((-1) ** m / math.factorial(m)))
    return c


register_rule(aten.gelu, Elementwise(_gelu_coefficients, lambda approximate="none": {"approximate": approximate}))


def _clamp(z: Jet, low: float | None = None, high: float | None = None, *, at_bound: bool = True) -> Jet:
    """z inside [low, high], the bound (a constant) outside it. At a bound, z's series where ``at_bound`` (clamp's
    backward: low <= z <= high), else the constant (hardtanh's backward: low < z < high), as nested autograd."""
    clamped = torch.clamp(z.primal, low, high)
    inside = clamped == z.primal
    if not at_bound:
        inside &= (z.primal != low) & (z.primal != high)
    return Jet(torch.cat([clamped.unsqueeze(0), z.series[1:] * inside]))


register_rule(aten.clamp.default, _clamp)
register_rule(aten.clamp_min.default, lambda z, low: _clamp(z, low, None))
register_rule(aten.clamp_max.default, lambda z, high: _clamp(z, None, high))
register_rule(aten.hardtanh, lambda z, low=-1.0, high=1.0: _clamp(z, low, high, at_bound=False))
register_rule(aten.abs, lambda z: Jet(z.series * torch.sign(z.primal)))  # sign(0) = 0 at the kink, as autograd


def _select_max(z: Jet, dims: Sequence[int], keepdim: bool, which: Callable[..., Tensor]) -> Jet:
    """max / min over dims: the series of the extreme element (ties share it equally, as autograd's amax does).
    The primal is the extreme itself, so that an infinite element elsewhere (attention's -inf mask) is not 0 · inf."""
    extreme = which(z.primal, dims, True)
    hit = (z.primal == extreme).to(z.dtype)
    weights = hit / hit.sum(dims, keepdim=True)
    higher = (z.series[1:] * weights).sum(_dims(dims, z.ndim), keepdim=keepdim)
    return Jet(torch.cat([(extreme if keepdim else which(z.primal, dims, False)).unsqueeze(0), higher]))


register_rule(aten.amax, lambda z, dim=(), keepdim=False: _select_max(z, dim, keepdim, torch.amax))
register_rule(aten.max.default, lambda z: _select_max(z, (), False, torch.amax))
register_rule(aten.min.default, lambda z: _select_max(z, (), False, torch.amin))
register_rule(aten.amin, lambda z, dim=(), keepdim=False: _select_max(z, dim, keepdim, torch.amin))


def _binary_extreme(pick_a: Callable[[Tensor, Tensor], Tensor]) -> Rule:
    """maximum / minimum: the series of the one picked, and at a tie the mean of both (autograd splits the
    gradient evenly there)."""

    def rule(a: object, b: object) -> Jet:
        a0, b0 = primal_of(a), primal_of(b)
        sa, sb = _series_pair(a, b)
        picked = torch.where(pick_a(a0, b0), sa, sb)
        return Jet(torch.where(a0 == b0, 0.5 * (sa + sb), picked))

    return rule


def _gathered(z: Jet, picked: tuple[Tensor, Tensor], dim: int, keepdim: bool = True) -> tuple[Jet, Tensor]:
    """An op that picks elements of z along dim by its primal (max / min over a dim, sort, topk): the series at the
    primal's indices, and the indices themselves, a constant. As autograd, a tie takes the index the op returns."""
    indices = picked[1] if keepdim else picked[1].unsqueeze(dim)
    d = _dim(dim, z.ndim)
    values = z.series.gather(d, indices.expand(z.order + 1, *indices.shape))
    return Jet(values if keepdim else values.squeeze(d)), picked[1]


register_rule(aten.max.dim, lambda z, dim, keepdim=False: _gathered(z, torch.max(z.primal, dim, keepdim), dim, keepdim))
register_rule(aten.min.dim, lambda z, dim, keepdim=False: _gathered(z, torch.min(z.primal, dim, keepdim), dim, keepdim))
register_rule(aten.sort.default, lambda z, dim=-1, descending=False: _gathered(z, torch.sort(z.primal, dim, descending),
                                                                                dim))
register_rule(aten.sort.stable, lambda z, *, stable=None, dim=-1, descending=False:
              _gathered(z, torch.sort(z.primal, stable=stable, dim=dim, descending=descending), dim))
register_rule(aten.topk, lambda z, k, dim=-1, largest=True, sorted=True:
              _gathered(z, torch.topk(z.primal, k, dim, largest, sorted), dim))
register_rule(aten.maximum, _binary_extreme(torch.gt))
register_rule(aten.minimum, _binary_extreme(torch.lt))
register_rule(aten.fmax, _binary_extreme(lambda a, b: (a > b) | b.isnan()))  # a NaN loses to a number
register_rule(aten.fmin, _binary_extreme(lambda a, b: (a < b) | b.isnan()))
for _op, _pick in ((aten.median, torch.median), (aten.nanmedian, torch.nanmedian)):
    register_rule(_op.dim, functools.partial(lambda z, dim, keepdim=False, *, pick: _gathered(
        z, pick(z.primal, dim, keepdim), dim, keepdim), pick=_pick))
    register_rule(_op.default, functools.partial(lambda z, *, pick: _gathered(  # of every element: the flat one's
        Jet(z.series.reshape(z.order + 1, -1)), pick(z.primal.flatten(), 0), 0, keepdim=False)[0], pick=_pick))
register_rule(aten.kthvalue, lambda z, k, dim=-1, keepdim=False:
              _gathered(z, torch.kthvalue(z.primal, k, dim, keepdim), dim, keepdim))
register_rule(aten.mode, lambda z, dim=-1, keepdim=False:
              _gathered(z, torch.mode(z.primal, dim, keepdim), dim, keepdim))
register_rule(aten.cummax, lambda z, dim: _gathered(z, torch.cummax(z.primal, dim), dim))
register_rule(aten.cummin, lambda z, dim: _gathered(z, torch.cummin(z.primal, dim), dim))


def _adaptive_max_pool(op: Callable[..., tuple[Tensor, Tensor]], spatial: int) -> Rule:
    """Adaptive max pooling over the last ``spatial`` dims: the op on the primal, which returns the flat indices
    of each window's maximum within a channel's plane; the series at those indices."""

    def rule(z: Jet, *args) -> tuple[Jet, Tensor]:
        out, indices = op(z.primal, *args)
        flat = z.series.flatten(-spatial)
        picked = flat.gather(-1, indices.flatten(-spatial).expand(z.order + 1, *flat.shape[1:-1], -1))
        return Jet(picked.view(z.order + 1, *out.shape)), indices

    return rule


register_rule(aten.adaptive_max_pool2d, _adaptive_max_pool(aten.adaptive_max_pool2d, 2))
register_rule(aten.adaptive_max_pool3d, _adaptive_max_pool(aten.adaptive_max_pool3d, 3))


# ---- writes, as functionalize spells them: a new tensor with some elements replaced -------------------------

def _copy(destination: object, source: object, non_blocking: bool = False) -> object:
    """``copy(destination, source)``: source, broadcast to the destination's shape and cast to its dtype (none of
    the destination's values survive); into an integer or bool destination, a constant, as ``_to_copy``."""
    shape, dtype = primal_of(destination).shape, primal_of(destination).dtype
    if not isinstance(source, Jet) or not dtype.is_floating_point:  # into an integer or bool tensor: a constant
        return primal_of(source).to(dtype).expand(shape)
    return Jet(source.aligned(len(shape)).to(dtype).expand(source.order + 1, *shape))


def _scatter(op: Callable[..., Tensor]) -> Rule:
    """``slice_scatter`` / ``select_scatter(base, source, dim, ...)``: the op on the series of both (a constant one
    as (value, 0, ..., 0)), dim shifted past the coefficient axis."""

    def rule(base: object, source: object, dim: int = 0, *args) -> Jet:
        order, ndim = _order(base, source), _ndim(base)
        return Jet(op(_as_series(base, order, ndim), _as_series(source, order, _ndim(source)), _dim(dim, ndim), *args))

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


# ---- zero: piecewise constant, or no dependence on the values at all ------------------------------------------

def _zero(op: Callable[..., Tensor]) -> Rule:
    """The op on the primals: its result is a constant (derivative zero, or a comparison's booleans)."""
    return lambda *args, **kwargs: op(*primal_of(list(args)), **kwargs)


for _op in (aten.gt, aten.lt, aten.ge, aten.le, aten.eq, aten.ne, aten.sign, aten.floor, aten.ceil, aten.round,
            aten.trunc, aten.argmax, aten.argmin, aten.isnan, aten.isinf, aten.logical_not, aten.logical_and,
            aten.logical_or, aten.zeros_like, aten.ones_like, aten.full_like, aten.empty_like, aten.new_zeros,
            aten.new_ones, aten.new_empty, aten.new_full, aten.sym_size, aten.lift_fresh, aten.fill.Scalar,
            aten.zero, aten.isfinite, aten.isposinf, aten.isneginf, aten.signbit, torch.ops.prims.signbit):
    register_rule(_op, _zero(_op))
