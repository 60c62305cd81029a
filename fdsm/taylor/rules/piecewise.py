r"""Piecewise rules: the series of the active branch, chosen on the primal (where, ReLU, leaky ReLU, ELU, clamp,
hardtanh, abs, maximum / minimum, fmax / fmin), as nested autograd takes it at a kink; and the ops whose result is
piecewise constant or independent of the values (comparisons, sign, rounding, ``*_like``): the op on the primals,
a constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fdsm.taylor import compose, series
from fdsm.taylor.jet import Jet, primal_of
from fdsm.taylor.rules.elementwise import Elementwise
from fdsm.taylor.rules.operands import _as_series, _ndim, _order, _series_pair
from fdsm.taylor.rules.table import Rule, register_rule

aten = torch.ops.aten


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


def _abs(z: Jet) -> Jet:
    r"""A real z: the series times sign(z_0) (0 at the kink, as autograd has it). A complex z = a + i b: the modulus
    :math:`\sqrt{a^2 + b^2}`, the power 1/2 of the series :math:`a^2 + b^2` of its parts (not differentiable at 0)."""
    if z.series.is_complex():
        return Jet(series.power(series.square(z.series.real) + series.square(z.series.imag), 0.5))
    return Jet(z.series * torch.sign(z.primal))


register_rule(aten.abs, _abs)


def _binary_extreme(pick_a: Callable[[Tensor, Tensor], Tensor]) -> Rule:
    """maximum / minimum: the series of the one picked, and at a tie the mean of both (autograd splits the
    gradient evenly there)."""

    def rule(a: object, b: object) -> Jet:
        a0, b0 = primal_of(a), primal_of(b)
        sa, sb = _series_pair(a, b)
        picked = torch.where(pick_a(a0, b0), sa, sb)
        return Jet(torch.where(a0 == b0, 0.5 * (sa + sb), picked))

    return rule


register_rule(aten.maximum, _binary_extreme(torch.gt))
register_rule(aten.minimum, _binary_extreme(torch.lt))
register_rule(aten.fmax, _binary_extreme(lambda a, b: (a > b) | b.isnan()))  # a NaN loses to a number
register_rule(aten.fmin, _binary_extreme(lambda a, b: (a < b) | b.isnan()))


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
