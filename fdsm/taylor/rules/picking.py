r"""Rules of ops that pick elements by the primal: max / min (over a dim, or over all of them, ties sharing),
sort, topk, median, kthvalue, mode, cummax / cummin and adaptive max pooling: the series at the indices the primal
picks, the indices themselves a constant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fdsm.taylor.jet import Jet
from fdsm.taylor.rules.operands import _dim, _dims
from fdsm.taylor.rules.table import Rule, register_rule

aten = torch.ops.aten


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
