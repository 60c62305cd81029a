"""Taylor mode through complex intermediates (``fdsm.taylor.rules.complex_values``): FFTs, spectral convolutions,
the real and imaginary parts, conjugation, the modulus and the argument, against nested reverse mode in float64 to
1e-9 of the largest |D^T| (as the model families in ``test_taylor.py``); and the refusal of a rule written for real
values when a complex value reaches it."""

import copy

import pytest
import torch
from torch import nn

from fdsm import NotSupported, float64_reference, taylor
from fdsm.models import to_dtype
from fdsm.taylor import register_rule
from fdsm.taylor.propagate import _complex_node
from fdsm.taylor.rules import RULES, rule_for, table, takes_complex
from fdsm.taylor.trace import traced
from tests.test_taylor import assert_agree, rand, reverse_d, taylor_d

aten = torch.ops.aten
C128, F64 = torch.complex128, torch.float64
WEIGHT = rand(4, seed=9).to(C128) * (1 + 0.5j)


def _written_into_zeros(z):
    """A write of a real value into a complex tensor: ``copy`` into complex used to return a constant, so every
    derivative was silently zero."""
    out = torch.zeros(z.shape, dtype=C128)
    out[:, :3] = z[:, :3] * z[:, 1:4]
    return ((out * (1 + 2j)) ** 2).real


def _shifted(z):
    """A complex value away from 0 and the branch cuts: z (0.3 + 0.4i) + 1.5 + 0.5i."""
    return z * (0.3 + 0.4j) + (1.5 + 0.5j)


def _written_into_slices(z):
    out = torch.zeros(2, 6, dtype=C128)
    out[:, 2] = _shifted(z)[:, 0] * _shifted(z)[:, 1]  # select_scatter
    out[:, 3:5] = _shifted(z)[:, :2] ** 2  # slice_scatter
    return out.real


def _written_by_mask(z):
    out = torch.zeros(2, 6, dtype=C128)
    out[torch.tensor([[True, False, True, False, False, True]] * 2)] = _shifted(z)[:, :3].flatten() ** 2
    return out.real


def _written_into_zeros_like(z):
    """FNO's spectral convolution as often written: the empty spectrum is ``zeros_like`` of the transform."""
    spectrum = torch.fft.rfft(z)
    out = torch.zeros_like(spectrum)
    out[:, :3] = spectrum[:, :3] * WEIGHT[:3]
    return torch.fft.irfft(out, n=z.shape[1])


def _constants_of_its_shape(z):
    """New tensors of a complex value's shape, its writes of constants and its tests: constants, whatever the value."""
    s = _shifted(z)
    new = (torch.ones_like(s) + s.new_zeros(s.shape) + torch.full_like(s, 1j) + s.new_ones(s.shape)
           + s.new_full(s.shape, 2 - 1j) + s.clone().zero_() + s.clone().fill_(0.5j))
    written = torch.empty_like(s).copy_(s * s) + s.new_empty(s.shape).copy_(s)
    kept = ~(s.isnan() | s.isinf() | (s == s.flip(1))) & (s != 1j)
    return (new * s + written * kept).real


fft = torch.fft.fft
MATRIX = rand(6, 3, seed=5).to(C128) * (1 - 0.5j)

# f(z) -> the real value that tanh(.).sum(1) ends in (so that no D^T up to T = 4 is zero by degree); z: (2, 6)
FUNCTIONS = {
    "view-sum": lambda z: fft(z).view(2, 2, 3).sum(1).real,
    "t-mm": lambda z: (fft(z).t().t() @ MATRIX).real,
    "transpose-bmm": lambda z: (fft(z).view(2, 1, 6).transpose(1, 2).transpose(1, 2) @ MATRIX).real.flatten(1),
    "permute-unsqueeze-squeeze": lambda z: fft(z).unsqueeze(0).permute(1, 2, 0).squeeze(-1).real,
    "select-slice": lambda z: torch.stack([fft(z)[:, 1], fft(z)[:, 2:4].sum(1)], 1).imag,
    "flip-roll": lambda z: (fft(z).flip(1) * fft(z).roll(2, 1)).real,
    "index-select-index": lambda z: (fft(z).index_select(1, torch.tensor([0, 2]))
                                     * fft(z)[:, torch.tensor([1, 3])]).imag,
    "expand-repeat": lambda z: (fft(z)[:, :1].expand(2, 3) * fft(z)[:, :3].repeat(1, 2)[:, 1:4]).real,
    "cat-split-unbind": lambda z: (torch.cat([a * b for a, b in zip(fft(z).split(3, 1), fft(z).split([3, 3], 1),
                                                                     strict=True)], 1).real
                                   + torch.stack(fft(z).unbind(1), 1).imag),
    "mean-clone": lambda z: (fft(z).mean(1, keepdim=True) * fft(z).clone()).real,
    "pad": lambda z: torch.nn.functional.pad(_shifted(z) * 1j, (1, 1)).real,
    "detach": lambda z: (_shifted(z).detach() + _shifted(z)).real,
    "write-into-slices": _written_into_slices,
    "write-by-mask": _written_by_mask,
    "add-sub-rsub-neg": lambda z: (_shifted(z) + 1j - (1 - _shifted(z)) * 2 + (-_shifted(z)) - (2 - _shifted(z))
                                   + _shifted(z) * _shifted(z)).real,
    "mul-div": lambda z: (_shifted(z) * 2 * (1 + 1j) / 3 / (1 + 1j) / _shifted(z).flip(1)).real,
    "mv-addmm": lambda z: ((_shifted(z) @ MATRIX[:, 0]).unsqueeze(1)
                           * (torch.ones(3, dtype=C128) + _shifted(z) @ MATRIX)).real,
    "linear": lambda z: nn.functional.linear(_shifted(z), MATRIX.t(), torch.arange(3.0, dtype=F64) * 1j).real,
    "casts": lambda z: (z.to(C128) * (1 + 1j)).pow(2).real + torch.view_as_real(_shifted(z)).to(F64).sum(-1),
    "conj-physical": lambda z: (torch.conj_physical(_shifted(z)) * _shifted(z).conj().flip(1)).imag,
    "a-real-constant-added": lambda z: (_shifted(z) + torch.arange(6.0, dtype=F64)).imag,
    "a-negative-real-to-complex-powers": lambda z: ((-z * z - 0.5) ** (0.5 + 1j) + (-z * z - 0.5) ** (2 + 0j)).real,
    "powers": lambda z: (_shifted(z) ** 0.5 + _shifted(z) ** -1.5 + _shifted(z) ** 3 + _shifted(z) ** (1 + 1j)).real,
    **{name: (lambda fn: lambda z: fn(_shifted(z)).real)(getattr(torch, name))
       for name in ("exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "reciprocal", "sigmoid",
                    "tanh", "sin", "cos", "tan", "sinh", "cosh", "sinc")},
    "real-imag": lambda z: torch.fft.fft(z).real ** 2 + torch.fft.fft(z).imag,
    "conj": lambda z: (torch.fft.fft(z) * torch.fft.fft(z).conj()).real,
    "complex": lambda z: torch.view_as_real(torch.complex(z, 2 * z * z) * (1 + 2j)).flatten(1),
    "view-as-complex": lambda z: torch.view_as_complex(torch.stack([z, z * z], -1)).mul(2 - 1j).imag,
    "rfftn-irfftn": lambda z: torch.fft.irfftn(torch.fft.rfftn(z.view(-1, 2, 3), dim=(1, 2)) ** 2, s=(2, 3),
                                               dim=(1, 2)).flatten(1),
    "fft-shift-ifft": lambda z: torch.fft.ifft(torch.fft.fftshift(torch.fft.fft(z, norm="ortho") ** 2, dim=-1),
                                               norm="forward").real,
    "cast-to-complex": lambda z: (z.to(C128).mul(1j) + 1).pow(2).real,
    "complex-weight": lambda z: (torch.fft.rfft(z) * WEIGHT).real,
    "div": lambda z: (torch.fft.fft(z) / (torch.fft.fft(z) + 3 + 1j)).real,
    "div-by-constant": lambda z: (torch.fft.fft(z) ** 2 / (3 + 1j)).imag,
    "write-into-complex": _written_into_zeros,
    "write-into-zeros-like": _written_into_zeros_like,
    "constants-of-its-shape": _constants_of_its_shape,
    "abs": lambda z: torch.fft.fft(z).abs(),
    "angle": lambda z: torch.fft.fft(z + 0.5).angle()[:, 1:3],  # the sum of all is 0 by symmetry
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_complex_intermediates_match_exact_reverse(name):
    f = lambda z: torch.tanh(FUNCTIONS[name](z)).sum(1)  # noqa: E731
    x, v = rand(2, 6, seed=1), rand(2, 6, seed=2)
    for order in range(1, 5):
        reference = reverse_d(f, x, v, order)
        assert reference.abs().max() > 0
        assert_agree(taylor_d(f, x, v, order), reference, rtol=1e-9)


class SpectralConv(nn.Module):
    """FNO's spectral convolution: the lowest ``modes`` frequencies of the real FFT times a complex weight, the rest
    zero, and back."""

    def __init__(self, channels, modes):
        super().__init__()
        self.modes = modes
        self.weight = nn.Parameter(rand(channels, channels, modes, modes, seed=3).to(C128) * (0.6 - 0.3j))

    def forward(self, x):
        height, width = x.shape[-2:]
        spectrum = torch.fft.rfft2(x, norm="ortho")
        out = torch.zeros(*spectrum.shape, dtype=spectrum.dtype)
        m = self.modes
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", spectrum[:, :, :m, :m], self.weight)
        return torch.fft.irfft2(out, s=(height, width), norm="ortho")


class FourierLayer(nn.Module):
    def __init__(self, channels=2, modes=3):
        super().__init__()
        self.spectral, self.pointwise = SpectralConv(channels, modes), nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return nn.functional.gelu(self.spectral(x) + self.pointwise(x)).flatten(1).sum(1)


def test_a_fourier_layer_and_its_parameter_gradients_match_exact_reverse():
    torch.manual_seed(0)
    net = FourierLayer().double()
    x, v = rand(2, 2, 8, 8, seed=1), rand(2, 2, 8, 8, seed=2)
    for order in range(1, 5):
        assert_agree(taylor_d(net, x, v, order), reverse_d(net, x, v, order), rtol=1e-9)
    params = [net.spectral.weight, net.pointwise.weight]
    got = torch.autograd.grad(taylor_d(net, x, v, 3).sum(), params)
    want = torch.autograd.grad(reverse_d(net, x, v, 3).sum(), params)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and w.abs().max() > 0
        assert_agree(g, w, rtol=1e-8)


def test_a_fourier_layer_in_float32_stays_near_float64():
    torch.manual_seed(0)
    net = FourierLayer().double()
    single = to_dtype(copy.deepcopy(net), torch.float32)
    x, v = rand(2, 2, 8, 8, seed=1), rand(2, 2, 8, 8, seed=2)
    for order in range(1, 5):
        error = (taylor_d(single, x.float(), v.float(), order).double() / reverse_d(net, x, v, order) - 1).abs()
        assert error.median() <= 1e-5 and error.max() <= 1e-4


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype, complex_dtype", [(torch.float64, C128), (torch.float32, torch.complex64),
                                                   (torch.float16, torch.complex32)])
def test_to_dtype_casts_complex_parameters_to_the_same_precision_and_keeps_their_imaginary_part(dtype, complex_dtype):
    net = FourierLayer()  # complex128 spectral weight, float32 pointwise conv
    cast = to_dtype(copy.deepcopy(net), dtype)
    assert cast.spectral.weight.dtype == complex_dtype and cast.pointwise.weight.dtype == dtype
    assert torch.equal(cast.spectral.weight.to(C128), net.spectral.weight.to(complex_dtype).to(C128))
    assert cast.spectral.weight.imag.abs().max() > 0  # nn.Module.to(dtype) would have dropped it
    with pytest.raises(ValueError, match="expected a real floating dtype, got torch.complex64"):
        to_dtype(net, torch.complex64)


def test_float64_reference_of_a_float32_model_with_complex_weights_is_its_complex128_copy():
    single = to_dtype(FourierLayer(), torch.float32)
    double = to_dtype(copy.deepcopy(single), torch.float64)
    assert double.spectral.weight.dtype == C128
    x, v = rand(2, 2, 8, 8, seed=1), rand(2, 2, 8, 8, seed=2)
    reference = float64_reference(single, x.float(), v.float(), 3)
    assert reference.dtype == torch.float64
    assert_agree(reference, reverse_d(double, x.float().double(), v.float().double(), 3), rtol=1e-9)


@pytest.mark.parametrize("f, match", [
    (lambda z: (torch.where(z > 0, z * (1 + 1j), z * 2j) ** 2).imag, r"aten\.where\.self .* written for real values"),
    (lambda z: torch.atan(_shifted(z)).real, r"aten\.atan\.default .* written for real values"),
    (lambda z: torch.asinh(_shifted(z)).real, r"aten\.asinh\.default .* written for real values"),
])
def test_a_complex_value_reaching_a_rule_for_real_values_is_refused(f, match):
    x, v = rand(2, 6, seed=1), rand(2, 6, seed=2)
    assert reverse_d(lambda z: f(z).sum(1), x, v, 2).abs().max() > 0
    with pytest.raises(NotSupported, match=match):
        taylor_d(lambda z: f(z).sum(1), x, v, 2)


def test_complex_safe_in_register_rule_declares_a_rule_for_complex_values(monkeypatch):
    monkeypatch.setattr(RULES, "_entries", dict(RULES._entries))  # registration is global: undone below
    monkeypatch.setattr(table, "COMPLEX_SAFE", dict(table.COMPLEX_SAFE))
    f = lambda z: (z * 1j).exp().real.sum(1)  # noqa: E731  cos(z)
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    builtin = rule_for(aten.exp.default)
    users = lambda *args, **kwargs: builtin(*args, **kwargs)  # noqa: E731
    register_rule(aten.exp, users, replace=True)  # as a user's rule, for real values only
    assert not takes_complex(aten.exp.default)
    with pytest.raises(NotSupported, match=r"aten\.exp\.default .* written for real values"):
        taylor_d(f, x, v, 2)
    register_rule(aten.exp, users, replace=True, complex_safe=True)  # the user vouches for it
    assert takes_complex(aten.exp.default)
    for order in range(1, 5):
        assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-9)
    monkeypatch.undo()
    taylor.clear_cache()
    assert takes_complex(aten.exp.default)


DTYPE_VIEWS = [  # f, the way out that the refusal names
    (lambda z: torch.tanh(fft(z).view(F64)).sum(1), r"use torch\.view_as_real / torch\.view_as_complex"),
    (lambda z: torch.tanh(torch.stack([z, z * z], -1).flatten(1).view(C128).real).sum(1), r"view_as_complex"),
    (lambda z: z.half().view(torch.bfloat16).double().sum(1), r"use \.to\(torch\.bfloat16\), a cast"),
    (lambda z: torch.tanh(z.view(F64)).sum(1), r"use no view: it is the identity"),
]


@pytest.mark.parametrize("f, instead", DTYPE_VIEWS)
def test_a_view_as_another_floating_or_complex_dtype_is_refused(f, instead):
    """view(dtype) reinterprets the bits; between a complex dtype and its real one autograd drops the derivative (0
    where view_as_real gives the true one), and the trace detaches the view: its derivatives would be 0."""
    x, v = rand(2, 6, seed=1), rand(2, 6, seed=2)
    with pytest.raises(NotSupported, match=r"view\(torch\.\w+\) of a torch\.\w+ value that depends on x .*" + instead):
        taylor_d(f, x, v, 1)


def _complex_ops(f, x):
    """The keys of the rules that the complex nodes of f's trace reach."""
    graph, _ = traced(f, x)
    return {table._key_for(node.target) for node in graph.graph.nodes
            if node.op == "call_function" and _complex_node(node)}


def test_every_rule_declared_complex_safe_is_checked_here():
    reached = _complex_ops(FourierLayer().double(), rand(2, 2, 8, 8, seed=1))
    for f in FUNCTIONS.values():
        reached |= _complex_ops(lambda z, f=f: torch.tanh(f(z)).sum(1), rand(2, 6, seed=1))
    for f, _ in DTYPE_VIEWS:  # refused by a rule of its own, with the way out
        reached |= _complex_ops(f, rand(2, 6, seed=1))
    assert set(table.COMPLEX_SAFE) <= reached
