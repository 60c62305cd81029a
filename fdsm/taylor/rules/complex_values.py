r"""Complex values: the FFTs, the views between a complex tensor and its real and imaginary parts, conjugation, the
modulus and the argument, and the list of the other rules that are right for complex values too.

Along the real line x(t) = x + t v, a complex intermediate z(t) = a(t) + i b(t) has the series
:math:`z_k = a_k + i\, b_k`, and t is real, so :math:`\overline{z(t)} = \sum_k \bar z_k t^k`. The ops below are
linear over the reals, :math:`L(\sum_k z_k t^k) = \sum_k L(z_k) t^k`, so each rule is the op on the series, its dims
shifted past the coefficient axis:

- ``_fft_r2c``, ``_fft_c2r``, ``_fft_c2c`` (``torch.fft``'s fft, rfft, irfft, fftn, ... and their norms): a
  spectral convolution (FNO) is an FFT, a product with a constant complex weight, a write into a zero spectrum and an
  inverse FFT;
- ``view_as_real``, ``view_as_complex``, ``complex`` (``.real`` and ``.imag`` trace to ``view_as_real`` and a
  select), ``_conj``.

The modulus and the argument are functions of the parts: :math:`|z| = \sqrt{a^2 + b^2}` (``abs``'s complex branch,
``fdsm.taylor.rules.piecewise``) and :math:`\arg z = \operatorname{atan2}(b, a)`.

A rule written for real values may be wrong for a complex one, silently: a branch on the primal's sign (``where``,
``clamp``, ``relu``), a formula that holds on the real line only (``softplus``, ``elu``). So the pass gives a node
of complex dtype that depends on x only to a rule declared right for it (``allow_complex`` below, or
``register_rule(..., complex_safe=True)``), and refuses it otherwise, naming the op (``fdsm.taylor.propagate``). The
declared ones are
- linear or bilinear, reading no values: views, slices, sums, cat and stack, copies and casts, scatters and writes,
  add, mul and matmuls (the Cauchy product is the same in any field), and div (a times b's reciprocal);
- constant: a new tensor of the value's shape (``zeros_like``, FNO's empty spectrum; ``new_full``, ``fill``, ...)
  and the tests ``isnan``, ``isinf``, ``==`` and ``!=``, whose results hold whatever the value's type;
- or analytic: exp, log, the powers, sqrt and rsqrt, the reciprocal, sigmoid, tanh, the trigonometric and hyperbolic
  functions, sinc. Their Taylor coefficients at z_0 are polynomials in the function's value there (and in 1/z_0, or
  its own derivative), which hold at a complex z_0 as on the real line, on the principal branch that torch's op takes
  (log, sqrt, a non-integer power).

Each is checked against nested reverse mode in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdsm.registry import NotSupported
from fdsm.taylor.jet import Jet
from fdsm.taylor.rules import affine, binary, elementwise, piecewise, structural, writes  # noqa: F401  (their rules)
from fdsm.taylor.rules.operands import _as_series, _dims, _ndim, _order
from fdsm.taylor.rules.table import Rule, allow_complex, register_rule
from fdsm.taylor.trace import INSTEAD

aten = torch.ops.aten


def _along_dims(op: Callable[..., Tensor]) -> Rule:
    """The rule of an FFT, ``op(z, dim, *args)``: the op on the series, its dims shifted past the coefficient axis."""
    return lambda z, dim, *args: Jet(op(z.series, _dims(dim, z.ndim), *args))


for _op in (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c):
    register_rule(_op, _along_dims(_op), complex_safe=True)


def _view_as_complex(z: Jet) -> Jet:
    """The last dim (size 2) as the real and imaginary parts: on the series, made contiguous where a rule before
    left it strided (``view_as_complex`` needs the pairs adjacent)."""
    return Jet(torch.view_as_complex(z.series.contiguous()))


def _complex(real: object, imag: object) -> Jet:
    """``torch.complex(real, imag)``: real + i imag on the series of both (a constant's as (value, 0, ..., 0))."""
    order, ndim = _order(real, imag), max(_ndim(real), _ndim(imag))
    return Jet(torch.complex(_as_series(real, order, ndim), _as_series(imag, order, ndim)))


def _angle(z: Jet) -> object:
    """The argument of z = a + i b: atan2(b, a) on the series of its parts; of a real z, a constant (0 or π, as
    autograd has it)."""
    if not z.series.is_complex():
        return torch.angle(z.primal)
    return binary._atan2(Jet(z.series.imag), Jet(z.series.real))


def _view_dtype(z: Jet, dtype: torch.dtype) -> Tensor:
    """``view(dtype)``, z's bits as another dtype: as an integer or bool dtype a constant, as a cast to one is. Any
    other is refused: between a complex dtype and its real one the view is linear over the reals, but autograd does
    not differentiate it and the trace detaches its result, so its derivatives would come out 0 (``view_as_real``
    and ``view_as_complex`` are the differentiable forms); a float's bits read as another float's (float16 as
    bfloat16) are not a smooth function of x."""
    if not (dtype.is_floating_point or dtype.is_complex):
        return z.primal.view(dtype)
    source = z.series.dtype
    instead = ("torch.view_as_real / torch.view_as_complex, which are differentiable" if source.is_complex
               != dtype.is_complex else "no view: it is the identity" if source == dtype else f".to({dtype}), a cast")
    raise NotSupported(f"exact-taylor: view({dtype}) of a {source} value that depends on x reinterprets its bits, "
                       f"and autograd and the trace take the result for a constant; use {instead}, {INSTEAD}")


register_rule(aten.view.dtype, _view_dtype, complex_safe=True)
register_rule(aten.angle, _angle, complex_safe=True)
register_rule(aten.view_as_real, lambda z: Jet(torch.view_as_real(z.series.resolve_conj())), complex_safe=True)
register_rule(aten.view_as_complex, _view_as_complex, complex_safe=True)
register_rule(aten.complex, _complex, complex_safe=True)
register_rule(aten._conj, lambda z: Jet(z.series.conj_physical()), complex_safe=True)  # no lazy conj bit carried
register_rule(aten._conj_physical, lambda z: Jet(z.series.conj_physical()), complex_safe=True)

allow_complex([
    # structural: the op on every coefficient, dims shifted past the coefficient axis
    aten.view.default, aten._unsafe_view, aten.t, aten.transpose.int, aten.permute, aten.unsqueeze,
    aten.squeeze, aten.select.int, aten.slice.Tensor, aten.flip, aten.roll, aten.index_select, aten.index.Tensor,
    aten.expand, aten.repeat, aten.cat, aten.stack, aten.split.Tensor, aten.split_with_sizes, aten.unbind.int,
    aten.sum, aten.mean, aten.clone, aten._to_copy, aten.constant_pad_nd, aten.detach,
    # writes, linear in base and source for fixed indices
    aten.copy.default, aten.slice_scatter, aten.select_scatter, aten.index_put,
    # affine and bilinear
    aten.add.Tensor, aten.sub.Tensor, aten.rsub, aten.neg, aten.mul.Tensor, aten.div.Tensor, aten.mm, aten.bmm,
    aten.mv, aten.addmm,
    # analytic
    aten.pow.Tensor_Scalar, aten.exp, aten.exp2, aten.expm1, aten.log, aten.log1p, aten.log2, aten.log10, aten.sqrt,
    aten.rsqrt, aten.reciprocal, aten.sigmoid, aten.tanh, aten.sin, aten.cos, aten.tan, aten.sinh, aten.cosh, aten.sinc,
    # with a branch of their own for a complex value
    aten.abs,
    # reading no values at all, or comparing them (``fdsm.taylor.rules.piecewise``'s constants)
    aten.zeros_like, aten.ones_like, aten.full_like, aten.empty_like, aten.new_zeros, aten.new_ones, aten.new_full,
    aten.new_empty, aten.zero, aten.fill.Scalar, aten.isnan, aten.isinf, aten.eq, aten.ne,
])
