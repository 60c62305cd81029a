r"""Elementwise nonlinearities: :math:`c_m = \varphi^{(m)}(z_0)/m!` in closed form, composed with z.

.. math::
    \varphi(z(t)) = \sum_{m=0}^{K} c_m\, (z(t) - z_0)^m + O(t^{K+1}),

by Horner's rule on the series (``fdsm.taylor.compose``), one autograd node with a closed-form backward where
autograd records it. Each rule is an ``Elementwise`` of its coefficient function ``(z_0, K) -> c_0 .. c_K``, whose
docstring has the closed form: exp, log, the sigmoid family (polynomials in σ' and 1 - 2σ), tanh, SiLU, softplus,
powers, sin / cos, sinh / cosh, tan, atan, the algebraic inverses (asin, acos, asinh, acosh, atanh), erf / erfc,
erfinv, ndtri, GELU, the gamma family, sinc, entr.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fdsm.registry import NotSupported
from fdsm.taylor import compose, series
from fdsm.taylor.jet import Jet
from fdsm.taylor.rules.operands import _plus_primal
from fdsm.taylor.rules.table import register_rule
from kernels.constants import constant

aten = torch.ops.aten


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


def _erfinv_coefficients(z0: Tensor, order: int, *, w: Tensor | None = None, scale: float = 1.0) -> list[Tensor]:
    """erfinv: c_m = P_m(w) g^m / m! (``_erfinv_polynomials``), w = erfinv z_0; times ``scale``, and with w given
    where the caller has a more accurate one (``_ndtri_coefficients``: z_0 is then unused)."""
    w = torch.erfinv(z0) if w is None else w
    g = torch.exp(w * w) * (math.sqrt(math.pi) / 2)
    c, power = [w * scale], torch.ones_like(w)
    for m, poly in enumerate(_erfinv_polynomials(order), start=1):
        power = power * g
        value = torch.zeros_like(w)
        for a in reversed(poly):  # Horner's rule in w
            value = value * w + a
        c.append(value * power * (scale / math.factorial(m)))
    return c


def _ndtri_coefficients(p0: Tensor, order: int) -> list[Tensor]:
    r"""ndtri, the normal quantile: :math:`\mathrm{ndtri}(p) = \sqrt2\, \mathrm{erfinv}(2p - 1)`, so
    :math:`c_m = \sqrt2\, 2^m\, c^{\mathrm{erfinv}}_m` with w = ndtri(p_0)/√2 taken from torch's ndtri, which keeps
    the tails that 2 p_0 - 1 would round away."""
    y0 = torch.special.ndtri(p0)
    c = _erfinv_coefficients(None, order, w=y0 * (1 / math.sqrt(2.0)), scale=math.sqrt(2.0))
    return [y0, *(c[m] * 2.0 ** m for m in range(1, order + 1))]


register_rule(aten.erfinv, Elementwise(_erfinv_coefficients))
register_rule(aten.special_ndtri, Elementwise(_ndtri_coefficients))


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
