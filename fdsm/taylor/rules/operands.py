r"""What the rules share: a rule's arguments as series, and a constant added to a series' primal.

A Jet's series is (K+1, *shape): the coefficient axis first, so dim d of the value is dim d + 1 of its series
(``_dim``, ``_dims``). A constant c enters a series as (c, 0, ..., 0) (``_as_series``; ``_series_pair`` for the two
arguments of a binary op, in the dtype the op returns), and a constant term of an affine op the primal row only
(``_plus_primal`` out of place, ``add_to_primal`` in place on a fresh series).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fdsm.registry import NotSupported
from fdsm.taylor import compose, series
from fdsm.taylor.jet import Jet, jets_in, primal_of
from fdsm.taylor.trace import INSTEAD
from kernels.constants import constant

aten = torch.ops.aten


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
    more pass over the whole series in the forward and reduces the whole gradient in the backward. In forward mode
    the tangents add the same way, in place on the series' tangent."""

    @staticmethod
    def forward(ctx, series: Tensor, value: Tensor | float, rows: int) -> Tensor:  # noqa: D102
        ctx.rows, ctx.series_shape = rows, series.shape
        ctx.shape = value.shape if isinstance(value, Tensor) else None
        series[:rows].add_(value)
        ctx.mark_dirty(series)
        return series

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:  # noqa: D102
        grad_value = grad[:ctx.rows].sum_to_size(ctx.shape) if ctx.needs_input_grad[1] else None
        return grad, grad_value, None

    @staticmethod
    def jvp(ctx, series_tangent: Tensor | None, value_tangent: Tensor | None, _) -> Tensor:  # noqa: D102
        if series_tangent is None:  # only the value has a tangent
            series_tangent = value_tangent.new_zeros(ctx.series_shape)
        if value_tangent is not None:
            series_tangent[:ctx.rows].add_(value_tangent)
        return series_tangent


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


def _series_pair(a: object, b: object) -> tuple[Tensor, Tensor]:
    """The series of a binary op's two arguments (a constant's as (value, 0, ..., 0)), aligned to one ndim, in the
    dtype the op itself returns (``torch.result_type``: a 0-d constant does not promote a Jet, and a Python number
    is taken in that dtype, not rounded to float32 first)."""
    order, ndim = _order(a, b), max(_ndim(a), _ndim(b))
    dtype = torch.result_type(primal_of(a), primal_of(b))
    a, b = (torch.tensor(t, dtype=dtype) if isinstance(t, (int, float)) else t for t in (a, b))
    return _as_series(a, order, ndim).to(dtype), _as_series(b, order, ndim).to(dtype)
