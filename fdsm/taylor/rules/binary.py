r"""Binary ops whose both arguments may be Jets: div (a times the reciprocal's series), pow (integer powers by
Cauchy products, other scalar powers by the power recurrence, a tensor exponent by its binomial coefficients, a Jet
exponent as exp(b log a)), atan2, hypot, fmod / remainder and copysign.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fdsm.taylor import series
from fdsm.taylor.jet import Jet, primal_of
from fdsm.taylor.rules.affine import _mul
from fdsm.taylor.rules.elementwise import _composed, _exp, _log, _power_coefficients, _reciprocal
from fdsm.taylor.rules.operands import _ndim, _series_pair
from fdsm.taylor.rules.table import Rule, _register_all, register_rule

aten = torch.ops.aten


def _div(a: object, b: object, *, rounding_mode: str | None = None) -> object:
    if rounding_mode is not None:  # floor / trunc division: piecewise constant
        return aten.div.Tensor_mode(primal_of(a), primal_of(b), rounding_mode=rounding_mode)
    if not isinstance(b, Jet):
        return Jet(a.aligned(_ndim(b)) / b)
    return _mul(a, _reciprocal(b))  # a / b = a * b^-1, the reciprocal's series


_register_all([aten.div.Tensor, aten.div.Scalar], _div)
register_rule(aten.div.Tensor_mode, _div)


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
    :math:`\exp(b \log a)`; a real a to a complex b as the complex a, as torch takes it (the principal branch of
    the log of a negative a)."""
    if isinstance(a, Jet) and not a.series.is_complex() and (isinstance(b, complex) or isinstance(b, Tensor)
                                                             and b.is_complex()):
        complex_dtype = b.dtype if isinstance(b, Tensor) else torch.complex64
        a = Jet(a.series.to(torch.promote_types(a.series.dtype, complex_dtype)))
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
