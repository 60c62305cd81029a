"""Taylor mode (``fdsm.taylor``, method ``exact-taylor``) against nested autograd, closed forms and its own recurrences.

What is held to what, and why those tolerances (float64 unless said otherwise):
- every model family: exact-taylor against exact-reverse, to 1e-9 of the batch's largest |D^T|. Both are exact;
  they differ only by the rounding of different op orders (observed ~1e-14).
- NCSN: PyTorch's own nested autograd through ``F.instance_norm`` (and ``F.layer_norm``) is wrong once a derivative
  needs a third backward (scalar output, T >= 3; a vector output, whose every D^T costs one backward more, T >= 2)
  and forward mode from T = 2. So NCSN is compared with exact-reverse directly at T = 1 and, from T = 2, with
  exact-reverse on the same network with the instance norm written out (mean, centred, biased variance, rsqrt);
  ``test_pytorch_nested_autograd_through_f_norms_is_wrong`` documents the discrepancy itself.
- closed forms: 1e-10 of max |D^T| (D^T of a polynomial, and of elementwise functions along a direction).
- the registered rules (closed-form coefficients composed by Horner's rule) against the term-by-term recurrences of
  ``fdsm.taylor.series``: each coefficient to 1e-12 of its largest entry (the same sums in another order).
- parameter gradients: 1e-8 of the largest gradient entry (one more level of differentiation, same arithmetic).
- float32 against float64: median over the batch of the relative error <= 1e-5, worst sample <= 1e-4 (float32's
  unit roundoff is 6e-8; a deep net's D^T loses up to a few hundred of it to cancellation).

A case that fails because of a bug in fdsm.taylor is an ``xfail(strict=True)`` whose reason says what is wrong.
"""

import copy
import functools
import gc
import math
import re
import threading
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from numpy.polynomial.hermite import hermval
from numpy.polynomial.hermite_e import hermeval
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fdsm.models.ncsn as ncsn_module
from fdsm import METHODS, NotSupported, directional_derivative, float64_reference, taylor
from fdsm.models import MODELS, build
from fdsm.models.activations import ACTIVATIONS
from fdsm.taylor import RULES, STATS, Jet, register_rule, rules, series, taylor_coefficients
from fdsm.taylor.rules import rule_for
from tests.test_derivatives import sigmoid_derivative_polys

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests run thousands of ops on tiny tensors, where a second intra-op thread only adds synchronization
    (on a busy 2-core machine 10x and more: 18 s on one thread, 255 s on two). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
aten = torch.ops.aten


def rand(*shape, seed, scale=1.0, dtype=F64):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def uniform(*shape, seed, low=0.0, high=1.0, dtype=F64):
    return low + (high - low) * torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def taylor_d(f, x, v, order):
    return directional_derivative(f, x, v, order, method="exact-taylor")


def reverse_d(f, x, v, order):
    return directional_derivative(f, x, v, order, method="exact-reverse")


def assert_agree(d, ref, rtol):
    """|d - ref| <= rtol * max|ref| everywhere, the shapes equal. An all-zero ref (ReLU's D^3, a quadratic's D^3)
    asks |d| <= 1e-15: float64 roundoff of the D^1 ~ 1e-5 of these tiny nets would be far above that."""
    assert d.shape == ref.shape and d.dtype == ref.dtype
    scale = ref.abs().max().item()
    torch.testing.assert_close(d, ref, rtol=0, atol=rtol * scale if scale > 0 else 1e-15)


def family(name, seed=0, dtype=F64, **overrides):
    """``build(name, size="cpu", **overrides)`` with seeded weights (the global RNG left as it was), in ``dtype``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(name, size="cpu", **overrides).to(dtype)


def rademacher(*shape, seed):
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)).to(F64) * 2 - 1


# ---- 1. every model family: exact-taylor == exact-reverse ------------------------------------------------------
# Each case: () -> (f, x). The models are tiny (a 2-channel deep EBM, 8-wide MLPs, NCSN at ngf = 2 on 8x8 images).


def deep_ebm_case(activation):
    return family("deep-ebm", n_chan=2, activation=activation), rand(2, 1, 32, 32, seed=1)


def mlp_ebm_case(activation):
    return family("mlp-ebm", hidden=(8, 8), activation=activation), rand(3, 2, seed=1)


def nice_case():
    model = family("nice", dim=8, hidden=8)
    with torch.no_grad():
        model.log_scale.copy_(rand(8, seed=7, scale=0.3))  # not the identity scaling of the init
    return model.log_density, rand(3, 8, seed=1)


def dkef_case():
    model = family("dkef", dim=4, n_inducing=6, hidden=5)
    alpha = model.solve_alpha(rand(10, 4, seed=3), rademacher(10, 4, seed=4)).detach()
    return (lambda z: model.log_density(z, alpha)), rand(3, 4, seed=1)


def vae_score_case(**overrides):
    model = family("vae-score", z_dim=4, hidden=8, **overrides)
    images = rand(3, *model.config.data_shape, seed=5)
    return (lambda z: model.score(z, images)), rand(3, 4, seed=1)


def wae_score_case(**overrides):
    model = family("wae-score", z_dim=4, hidden=8, **overrides)
    return model.score, rand(3, 4, seed=1)


def gaussian_case(interface):
    model = family("gaussian", dim=5)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(rand(*p.shape, seed=20 + i, scale=0.3))  # a non-standard N(mu, P^-1)
    return getattr(model, interface), rand(3, 5, seed=1)


def ncsn_case():
    model = family("ncsn", ngf=2, image_size=8, n_levels=3)
    labels = torch.tensor([0, 2])
    return (lambda z: model(z, labels).flatten(1)), uniform(2, 3, 8, 8, seed=1)


SMALL = {
    **{f"mlp-ebm-{a}": functools.partial(mlp_ebm_case, a) for a in ACTIVATIONS.names()},
    "nice": nice_case,
    "dkef": dkef_case,
    "vae-score": vae_score_case,
    "wae-score": wae_score_case,
    "gaussian": functools.partial(gaussian_case, "log_density"),
    "gaussian-score": functools.partial(gaussian_case, "score"),
}
CONV = {
    **{f"deep-ebm-{a}": functools.partial(deep_ebm_case, a) for a in ACTIVATIONS.names()},
    "vae-score-celeba": functools.partial(vae_score_case, dataset="celeba", nf=1),
    "wae-score-celeba": functools.partial(wae_score_case, dataset="celeba", nf=1),
}
CASES = SMALL | CONV | {"ncsn": ncsn_case}  # NCSN: test_ncsn_matches_exact_reverse_on_the_written_out_norm
FAMILY_ORDERS = [(n, t) for n in SMALL for t in range(1, 7)] + [(n, t) for n in CONV for t in range(1, 5)]


@functools.cache
def case(name):
    """Each model is built (and traced) once per session; no test here mutates one of these."""
    return CASES[name]()


def test_every_differentiated_model_family_has_a_case():
    differentiated = {e.name for e in MODELS if e.value.interface != "sampler"}
    covered = {name for name in differentiated if any(c == name or c.startswith(name + "-") for c in CASES)}
    assert covered == differentiated


@pytest.mark.parametrize("name, order", FAMILY_ORDERS)
def test_exact_taylor_equals_exact_reverse_on_every_model_family(name, order):
    f, x = case(name)
    v = rand(*x.shape, seed=2)
    assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-9)


def written_out_instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                              momentum=0.1, eps=1e-5):
    """``F.instance_norm`` as ncsn.py calls it (no running stats, no affine), as plain ops."""
    assert running_mean is None and running_var is None and weight is None and bias is None and use_input_stats
    centered = x - x.mean((2, 3), keepdim=True)
    return centered * torch.rsqrt((centered * centered).mean((2, 3), keepdim=True) + eps)


def written_out_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    assert weight is None and bias is None
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    centered = x - x.mean(dims, keepdim=True)
    return centered * torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)


class WrittenOutF:
    """``torch.nn.functional`` with ``instance_norm`` written out: what ncsn.py's ``F`` becomes in the tests."""

    instance_norm = staticmethod(written_out_instance_norm)

    def __getattr__(self, name):
        return getattr(F, name)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ncsn_matches_exact_reverse_on_the_written_out_norm(order, monkeypatch):
    """T = 1: exact-reverse as it is. From T = 2 its vector output needs 3+ nested backwards through
    F.instance_norm, which PyTorch gets wrong, so the reference is exact-reverse with the norm written out."""
    f, x = case("ncsn")
    v = rand(*x.shape, seed=2)
    d = taylor_d(f, x, v, order)  # through F.instance_norm (and traced) before the patch
    if order >= 2:
        monkeypatch.setattr(ncsn_module, "F", WrittenOutF())
    assert_agree(d, reverse_d(f, x, v, order), rtol=1e-9)


NORMS = {
    "instance_norm": (F.instance_norm, written_out_instance_norm),
    "layer_norm": (lambda h: F.layer_norm(h, h.shape[1:]), lambda h: written_out_layer_norm(h, h.shape[1:])),
    "group_norm": (lambda h: F.group_norm(h, 1), lambda h: written_out_layer_norm(h, h.shape[1:])),  # one group
}


def norm_functions(norm, vector):
    """f(x) = w . norm(x) (scalar) or norm(x) * w flattened (vector), with the norm as F's and as written out."""
    w = rand(2, 4, 4, seed=3)
    out = (lambda h: (h * w).flatten(1)) if vector else (lambda h: (h * w).flatten(1).sum(1))
    through_f, written = NORMS[norm]
    return (lambda z: out(through_f(z))), (lambda z: out(written(z)))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("vector", [False, True], ids=["scalar", "vector"])
@pytest.mark.parametrize("norm", NORMS)
def test_taylor_through_f_norms_matches_the_written_out_formula(norm, vector, order):
    through_f, written = norm_functions(norm, vector)
    x, v = rand(2, 2, 4, 4, seed=1), rand(2, 2, 4, 4, seed=2)
    assert_agree(taylor_d(through_f, x, v, order), reverse_d(written, x, v, order), rtol=1e-9)


@pytest.mark.parametrize("vector, order", [(False, 3), (True, 2)], ids=["scalar-T3", "vector-T2"])
@pytest.mark.parametrize("norm", ["instance_norm", "layer_norm"])
def test_pytorch_nested_autograd_through_f_norms_is_wrong(norm, vector, order):
    """A PyTorch bug, documented: native_batch_norm / native_layer_norm's double backward breaks nested autograd
    three backwards deep, while Taylor mode through the same F.<norm> matches the written-out formula."""
    through_f, written = norm_functions(norm, vector)
    x, v = rand(2, 2, 4, 4, seed=1), rand(2, 2, 4, 4, seed=2)
    ref = reverse_d(written, x, v, order)
    assert_agree(taylor_d(through_f, x, v, order), ref, rtol=1e-9)  # asserted whatever torch does
    torch_error = ((reverse_d(through_f, x, v, order) - ref).abs().max() / ref.abs().max()).item()
    # The PyTorch half is an xfail(strict=False) in effect: it passes while torch is wrong (error > 1e-3; observed
    # 0.05 to 0.3), and once a torch release fixes the double backward it reports xfail (drop it then) instead of
    # failing. The Taylor half above stays a hard assertion either way.
    if torch_error <= 1e-3:
        pytest.xfail(f"nested autograd through F.{norm} now agrees with the written-out norm ({torch_error:.1e})")


# ---- 2. closed forms --------------------------------------------------------------------------------------------


def test_polynomial_coefficients_are_the_derivatives_not_divided_by_k_factorial():
    """f = (a.x)^4: D^k = 4!/(4-k)! (a.x)^(4-k) (a.v)^k for k <= 4, and 0 beyond."""
    a, x, v = rand(5, seed=1), rand(3, 5, seed=2), rand(3, 5, seed=3)
    d = taylor_coefficients(lambda z: (z @ a) ** 4, x, v, 6)
    expected = torch.stack([math.perm(4, k) * (x @ a) ** max(4 - k, 0) * (v @ a) ** k for k in range(7)])
    assert d.shape == (7, 3)
    assert_agree(d, expected, rtol=1e-10)


SIGMOID_POLYS = sigmoid_derivative_polys(7)


def sig(x, n):
    """sigmoid^(n)(x), n >= 0."""
    return torch.from_numpy(SIGMOID_POLYS[n](torch.sigmoid(x).numpy()))


def falling(p, n):
    """p (p - 1) ... (p - n + 1): the n-th derivative of z^p is falling(p, n) z^(p - n)."""
    return math.prod(p - i for i in range(n)) if n else 1.0


def gelu_derivative(x: torch.Tensor, t: int) -> torch.Tensor:
    """GELU's t-th derivative, x Phi(x): Phi + x phi for t = 1, else x phi^(t-1) + t phi^(t-2), with the normal
    density's derivatives phi^(n) = (-1)^n He_n phi from numpy's probabilists' Hermite series."""
    phi = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    if t == 1:
        return torch.special.ndtr(x) + x * phi

    def phi_derivative(n: int) -> torch.Tensor:
        return (-1) ** n * torch.from_numpy(hermeval(x.numpy(), [0] * n + [1])) * phi

    return x * phi_derivative(t - 1) + t * phi_derivative(t - 2)


def atan_derivative(x: torch.Tensor, t: int) -> torch.Tensor:
    """atan's t-th derivative from partial fractions, 1 / (1 + x^2) = Im 1 / (x - i):
    (-1)^(t-1) (t-1)! Im (x - i)^(-t)."""
    return (-1) ** (t - 1) * math.factorial(t - 1) * ((x - 1j) ** -t).imag


def erf_derivative(x: torch.Tensor, t: int) -> torch.Tensor:
    """erf's t-th derivative, 2 / sqrt(pi) (e^(-x^2))^(t-1), with (e^(-x^2))^(n) = (-1)^n H_n e^(-x^2) from numpy's
    physicists' Hermite series."""
    hermite = torch.from_numpy(hermval(x.numpy(), [0] * (t - 1) + [1]))
    return 2 / math.sqrt(math.pi) * (-1) ** (t - 1) * hermite * torch.exp(-x * x)


EXPONENT = uniform(4, 6, seed=9, low=-1.5, high=2.5)  # a constant tensor exponent, for x ** EXPONENT
MIXED, POSITIVE, NEGATIVE, LARGE = (-2.0, 2.0), (0.3, 2.0), (-2.0, -0.3), (25.0, 30.0)
SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
# name: (phi, phi^(T)(x, T), domain of x). D^T of phi(x + t v), elementwise, is phi^(T)(x) v^T.
ELEMENTWISE = {
    "exp": (torch.exp, lambda x, t: torch.exp(x), MIXED),
    "expm1": (torch.expm1, lambda x, t: torch.exp(x), MIXED),
    "sin": (torch.sin, lambda x, t: torch.sin(x + t * math.pi / 2), MIXED),
    "cos": (torch.cos, lambda x, t: torch.cos(x + t * math.pi / 2), MIXED),
    "log": (torch.log, lambda x, t: (-1) ** (t - 1) * math.factorial(t - 1) * x ** -t, POSITIVE),
    "log1p": (torch.log1p, lambda x, t: (-1) ** (t - 1) * math.factorial(t - 1) * (1 + x) ** -t, POSITIVE),
    "log2": (torch.log2, lambda x, t: (-1) ** (t - 1) * math.factorial(t - 1) * x ** -t / math.log(2), POSITIVE),
    "sqrt": (torch.sqrt, lambda x, t: falling(0.5, t) * x ** (0.5 - t), POSITIVE),
    "rsqrt": (torch.rsqrt, lambda x, t: falling(-0.5, t) * x ** (-0.5 - t), POSITIVE),
    "reciprocal": (torch.reciprocal, lambda x, t: falling(-1, t) * x ** (-1 - t), POSITIVE),
    "div": (lambda x: 3.0 / x, lambda x, t: 3 * falling(-1, t) * x ** (-1 - t), NEGATIVE),
    "pow-2.5": (lambda x: x ** 2.5, lambda x, t: falling(2.5, t) * x ** (2.5 - t), POSITIVE),
    "pow-3": (lambda x: x ** 3, lambda x, t: falling(3, t) * x ** (3 - t), MIXED),
    "pow--2": (lambda x: x ** -2, lambda x, t: falling(-2, t) * x ** (-2 - t), NEGATIVE),
    "pow-scalar-base": (lambda x: 2.0 ** x, lambda x, t: math.log(2) ** t * 2.0 ** x, MIXED),
    "pow-tensor-exponent": (lambda x: x ** EXPONENT, lambda x, t: falling(EXPONENT, t) * x ** (EXPONENT - t),
                            POSITIVE),
    "sigmoid": (torch.sigmoid, sig, MIXED),
    "tanh": (torch.tanh, lambda x, t: 2 ** (t + 1) * sig(2 * x, t), MIXED),  # tanh x = 2 sigmoid(2x) - 1
    "softplus": (F.softplus, lambda x, t: sig(x, t - 1), MIXED),
    "softplus-beta-2": (lambda x: F.softplus(x, beta=2.0), lambda x, t: 2.0 ** (t - 1) * sig(2 * x, t - 1), MIXED),
    "softplus-above-threshold": (F.softplus, lambda x, t: torch.full_like(x, float(t == 1)), LARGE),  # identity
    "silu": (F.silu, lambda x, t: x * sig(x, t) + t * sig(x, t - 1), MIXED),  # (x s)^(T) = x s^(T) + T s^(T-1)
    "elu": (F.elu, lambda x, t: torch.where(x > 0, float(t == 1), torch.exp(x)), MIXED),
    "elu-alpha": (lambda x: F.elu(x, alpha=1.7), lambda x, t: torch.where(x > 0, float(t == 1), 1.7 * torch.exp(x)),
                  MIXED),
    # aten's elu(x, alpha, scale, input_scale): scale x above 0, scale alpha (e^(input_scale x) - 1) below
    "elu-scaled": (lambda x: torch.ops.aten.elu(x, 1.7, 1.05, 2.0),
                   lambda x, t: torch.where(x > 0, 1.05 * float(t == 1), 1.05 * 1.7 * 2.0 ** t * torch.exp(2 * x)),
                   MIXED),
    "selu": (F.selu, lambda x, t: torch.where(x > 0, SELU_SCALE * float(t == 1),
                                              SELU_SCALE * SELU_ALPHA * torch.exp(x)), MIXED),
    "celu": (lambda x: F.celu(x, alpha=2.0), lambda x, t: torch.where(x > 0, float(t == 1),
                                                                        2.0 ** (1 - t) * torch.exp(x / 2)), MIXED),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.01), lambda x, t: torch.full_like(x, 0.01 * (t == 1)), NEGATIVE),
    "gelu": (F.gelu, gelu_derivative, (-3.0, 3.0)),
    "atan": (torch.atan, lambda x, t: atan_derivative(x, t), (-3.0, 3.0)),
    "erf": (torch.erf, lambda x, t: erf_derivative(x, t), (-2.5, 2.5)),
    "erfc": (torch.erfc, lambda x, t: -erf_derivative(x, t), (-2.5, 2.5)),
    "lgamma": (torch.lgamma, lambda x, t: torch.polygamma(t - 1, x), POSITIVE),
    "digamma": (torch.digamma, lambda x, t: torch.polygamma(t, x), POSITIVE),
    "polygamma-2": (lambda x: torch.polygamma(2, x), lambda x, t: torch.polygamma(t + 2, x), POSITIVE),
    # atanh = (log(1 + x) - log(1 - x)) / 2
    "atanh": (torch.atanh, lambda x, t: math.factorial(t - 1) / 2 * ((-1) ** (t - 1) * (1 + x) ** -t + (1 - x) ** -t),
              (-0.8, 0.8)),
}
ELEMENTWISE_CASES = [(n, t) for n in ELEMENTWISE for t in range(1, 7)]
# name: (phi, domain of x): elementwise functions whose derivatives have no short closed form, against nested autograd
AGAINST_REVERSE = {"tan": (torch.tan, (-1.2, 1.2)), "asin": (torch.asin, (-0.8, 0.8)),
                   "acos": (torch.acos, (-0.8, 0.8)), "asinh": (torch.asinh, (-3.0, 3.0)),
                   "acosh": (torch.acosh, (1.2, 4.0)), "erfinv": (torch.erfinv, (-0.9, 0.9)),
                   "ndtri": (torch.special.ndtri, (0.02, 0.98))}


@pytest.mark.parametrize("name, order", ELEMENTWISE_CASES)
def test_elementwise_functions_match_their_closed_forms(name, order):
    """phi applied elementwise to x (B, 6): a vector output (B, 6) whose D^T is phi^(T)(x) v^T. exact-reverse, on
    the sum over the 6 (its vector path needs a D^(T-1) that still depends on x), checks the closed form itself."""
    phi, derivative, (low, high) = ELEMENTWISE[name]
    x, v = uniform(4, 6, seed=1, low=low, high=high), rand(4, 6, seed=2)
    expected = derivative(x, order) * v ** order
    assert_agree(taylor_d(phi, x, v, order), expected, rtol=1e-10)
    assert_agree(reverse_d(lambda z: phi(z).sum(1), x, v, order), expected.sum(1), rtol=1e-10)


@pytest.mark.parametrize("order", range(1, 7))
@pytest.mark.parametrize("name", AGAINST_REVERSE)
def test_elementwise_functions_without_a_short_closed_form_match_nested_autograd(name, order):
    phi, (low, high) = AGAINST_REVERSE[name]
    x, v = uniform(4, 6, seed=1, low=low, high=high), rand(4, 6, seed=2)
    f = lambda z: phi(z) @ torch.cos(1.7 * torch.arange(6, dtype=F64) + 0.3)  # noqa: E731
    assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-10)


@pytest.mark.parametrize("order", range(1, 7))
def test_ndtri_in_its_tails_matches_high_precision_derivatives(order):
    """ndtri (the normal quantile) at p_0 = 1e-12 and 1 - 1e-6, where 2 p_0 - 1 rounds its tail away: its rule takes
    w from torch's ndtri, not from erfinv(2 p_0 - 1). The reference is mpmath's derivative of -sqrt(2) erfinv(1 - 2p)
    at 60 digits."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    points = [1e-12, 1e-4, 0.3, 1 - 1e-6]
    x = torch.tensor([points], dtype=F64)
    expected = torch.tensor([[float(mpmath.diff(lambda p: -mpmath.sqrt(2) * mpmath.erfinv(1 - 2 * p), mpmath.mpf(p0),
                                                order)) for p0 in points]], dtype=F64)
    assert_agree(taylor_d(torch.special.ndtri, x, torch.ones_like(x), order), expected, rtol=1e-12)


@pytest.mark.parametrize("order", range(1, 7))
def test_gelu_in_its_tanh_form_matches_nested_autograd(order):
    f = lambda z: F.gelu(z, approximate="tanh").sum(1)  # noqa: E731
    x, v = uniform(4, 6, seed=1, low=-3.0, high=3.0), rand(4, 6, seed=2)
    assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-10)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_in_float32_stays_within_1e_5_of_float64_at_t_6(approximate):
    weight = rand(8, 8, seed=3) / 3
    x, v = uniform(64, 8, seed=1, low=-4.0, high=4.0), rand(64, 8, seed=2)

    def f(w):
        return lambda z: F.gelu(z @ w, approximate=approximate).pow(2).sum(1)

    exact = taylor_d(f(weight), x, v, 6)
    single = taylor_d(f(weight.float()), x.float(), v.float(), 6).double()
    assert ((single - exact).abs() / exact.abs()).median() < 1e-5


# At a kink: x holds exact zeros, clamp bounds and ties. The rules pick one side (their docstrings say which, "as
# autograd"); nested autograd is the reference. Where they differ, the case is an xfail naming the two conventions.
KINK_X = torch.tensor([[0.0, -1.0, 1.0, 0.0, 0.5, -0.5]], dtype=F64)
KINK_V = torch.tensor([[1.0, 2.0, -1.0, -3.0, 0.5, 1.5]], dtype=F64)
KINK_Y = torch.tensor([[0.0, -2.0, 1.0, 1.0, 0.5, 1.0]], dtype=F64)  # ties KINK_X at 0, 2 and 4
KINK_W = torch.tensor([0.3, -0.7, 1.1, 0.9, -1.3, 0.6], dtype=F64)
KINKS = {
    "relu": F.relu,
    "elu": F.elu,
    "clamp": lambda z: torch.clamp(z, -0.5, 0.5),
    "clamp_min": lambda z: torch.clamp_min(z, 0.0),
    "leaky_relu-0.5": lambda z: F.leaky_relu(z, 0.5),
    "amax-ties": lambda z: z.view(1, 3, 2).amax(2),
    "abs": torch.abs,
    "hardtanh": lambda z: F.hardtanh(z, -0.5, 0.5),
    "maximum-ties": lambda z: torch.maximum(z, KINK_Y),
}
# PyTorch is inconsistent with itself at ELU's kink: elu_backward takes the exponential branch at x = 0 (x <= 0),
# its double backward the identity branch (x < 0). The rule follows the first (every order on the exponential
# branch), so nested autograd's D^2, D^3 at exactly 0 differ from it: a convention, not a bug of either side.
KINK_XFAILS = {
    ("elu", 2): "ELU at z0 = 0: the rule takes the exponential branch for every order (D^2 = alpha v^2), autograd's "
                "elu_backward uses x <= 0 but its double backward x < 0 (D^2 = 0)",
    ("elu", 3): "ELU at z0 = 0: as for T = 2",
}
KINK_CASES = [pytest.param(n, t, marks=pytest.mark.xfail(strict=True, reason=KINK_XFAILS[n, t])
                           if (n, t) in KINK_XFAILS else ()) for n in KINKS for t in (1, 2, 3)]


@pytest.mark.parametrize("name, order", KINK_CASES)
def test_piecewise_rules_at_a_kink_match_nested_autograd(name, order):
    fn = KINKS[name]
    w = KINK_W[: fn(KINK_X).shape[1]]  # distinct weights: no element's derivative hides in the sum
    f = lambda z: (fn(z) * w).sum(1)  # noqa: E731
    assert_agree(taylor_d(f, KINK_X, KINK_V, order), reverse_d(f, KINK_X, KINK_V, order), rtol=1e-12)


# The other rules (structural, batch-stacked, bilinear, decomposed): each op on x (2, 2, 3, 4), its output weighted
# by fixed distinct weights and summed to (B,), against exact-reverse. OP_C, OP_M, OP_R are constants.
OP_C, OP_M, OP_R, OP_RV = rand(2, 3, 4, seed=11), rand(4, 3, seed=12), rand(3, seed=13), rand(3, seed=14).abs() + 0.5
OP_I = torch.tensor([2, 0, 1])
OPS = {
    "bmm-of-two-jets": lambda z: torch.tanh(z[:, 0, :3, :3]) @ z[:, 1, :3, :3],
    "matmul-constant-left": lambda z: OP_M @ torch.tanh(z[:, 0]),
    "matmul-constant-right": lambda z: torch.tanh(z[:, 0]) @ OP_M,
    "mm-t-of-two-jets": lambda z: torch.stack([torch.tanh(z[i, 0]).t() @ z[i, 1] for i in range(len(z))]),
    "mv": lambda z: torch.stack([torch.mv(z[i, 0] ** 2, OP_M[:, 0]) for i in range(len(z))]),
    "cat-with-a-constant": lambda z: torch.cat([z, OP_C[:1].expand(len(z), 1, 3, 4)], 1) ** 2,
    "stack": lambda z: torch.stack([z[:, 0], torch.sin(z[:, 1])], -1),
    "permute-transpose": lambda z: torch.sin(z.permute(0, 3, 1, 2)).transpose(1, 2) * z.transpose(-1, -2),
    "index-gather": lambda z: z[:, :, OP_I].gather(3, OP_I.view(1, 1, 3, 1).expand(len(z), 2, 3, 1)) ** 2,
    "index_select": lambda z: z.index_select(2, OP_I) * z[:, :, :3],
    "squeeze-unsqueeze": lambda z: z[:, :1].squeeze(1).unsqueeze(-1) ** 3,
    "flip-roll": lambda z: z.flip(2) * z.roll(1, 3),
    "split-unbind": lambda z: sum(p.sin() for p in z.split(1, 2)) + torch.stack(z.unbind(1), 1).sin()[:, :, :1],
    "repeat-expand": lambda z: z.repeat(1, 2, 1, 1) * z.sum(1, keepdim=True).expand(-1, 4, -1, -1),
    "constant_pad": lambda z: F.pad(z, (1, 2, 0, 1), value=0.5) ** 2,
    "reflection_pad": lambda z: F.pad(z, (1, 1, 1, 1), mode="reflect") ** 2,
    "replication_pad": lambda z: F.pad(z, (1, 1, 1, 1), mode="replicate") ** 2,
    "avg_pool": lambda z: F.avg_pool2d(z ** 2, 2),
    "adaptive_avg_pool": lambda z: F.adaptive_avg_pool2d(z ** 2, (2, 3)),
    "upsample-nearest": lambda z: F.interpolate(z ** 2, scale_factor=2, mode="nearest"),
    "upsample-bilinear": lambda z: F.interpolate(z ** 2, size=(5, 7), mode="bilinear", align_corners=False),
    "pixel_shuffle": lambda z: F.pixel_shuffle(z.repeat(1, 2, 1, 1) ** 2, 2),
    "conv_transpose2d": lambda z: F.conv_transpose2d(torch.tanh(z), OP_C[:, None, :2, :2].contiguous(), stride=2),
    "conv1d-with-bias": lambda z: F.conv1d(torch.tanh(z.flatten(2)), OP_C[:, :2, :3].contiguous(), bias=OP_R[:2]),
    "softmax": lambda z: F.softmax(z, -1),
    "log_softmax": lambda z: F.log_softmax(z, 1),
    "logsumexp": lambda z: torch.logsumexp(z, (2, 3)),
    "var-std": lambda z: z.var(-1) * z.std((2, 3), keepdim=True).squeeze(-1),
    "batch_norm-eval": lambda z: F.batch_norm(z.transpose(1, 2).flatten(2), OP_R, OP_RV, training=False),
    "group_norm-affine": lambda z: F.group_norm(z.repeat(1, 2, 1, 1), 2, OP_RV[:1].repeat(4), OP_R[:1].repeat(4)),
    "div-of-two-jets": lambda z: z / (z ** 2 + 1),
    "rsub": lambda z: 1 - torch.sigmoid(z),
    "where-with-a-constant": lambda z: torch.where(z > 0, torch.sin(z), 2.0),
    "clamp": lambda z: torch.clamp(z, -0.5, 0.5) * z,
    "amin": lambda z: z.amin(-1),
    "minimum": lambda z: torch.minimum(z, OP_C) * z,
    "log10": lambda z: torch.log10(z ** 2 + 1),
    "pow-with-a-jet-exponent": lambda z: (z ** 2 + 1) ** torch.sigmoid(z),
    "mean": lambda z: z.mean((1, 2)) ** 2,
    "clone-contiguous": lambda z: z.transpose(2, 3).contiguous().clone() ** 2,
    "detach": lambda z: z.detach() * z,
    "neg-sub-scalar": lambda z: -(z - 2.0) * (3.0 - z),
}


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("name", OPS)
def test_other_rules_match_exact_reverse(name, order):
    op = OPS[name]
    x, v = rand(2, 2, 3, 4, seed=1), rand(2, 2, 3, 4, seed=2)
    w = torch.cos(1.7 * torch.arange(op(x).flatten(1).shape[1], dtype=F64) + 0.3)  # distinct weights
    f = lambda z: op(z).flatten(1) @ w  # noqa: E731
    assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-10)


def written_in_place(z):
    """Writes that functionalize turns into copy / fill / slice_scatter / select_scatter."""
    y = z ** 2
    y.add_(1)
    y[:, 0, 1] = 0.5
    y[:, 1, :, 2] = torch.tanh(z[:, 0, :, 0])
    y[:, :, 0].fill_(2.0)
    return y * z


# Ops that arrive through torch's own decompositions (DECOMPOSITIONS), or as writes that survive the first
# functionalization, and the picking and elementwise rules beside them; a piecewise-linear op is multiplied by z so
# that its D^T is not zero. At T = 2 and 3: the rules they reach are tested at every order above.
OP_P, OP_E = torch.tensor([2.0, 3.0, 1.0, 4.0], dtype=F64), rand(3, 4, seed=15).abs()  # exponents
OP_SCATTER = torch.tensor([3, 0, 1, 1]).expand(2, 2, 3, 4)  # scatter_add's index along the last dim
OP_PERMUTATION = torch.tensor([3, 0, 1, 2]).expand(2, 2, 3, 4)  # scatter's index along the last dim, one write each
OP_FIRST = torch.zeros(2, 2, 3, 1, dtype=torch.long)
with torch.random.fork_rng():
    torch.manual_seed(5)
    OP_LSTM = nn.LSTM(12, 3, batch_first=True).double()
    OP_BILINEAR = nn.Bilinear(4, 4, 3).double()


def flat(*parts):
    return torch.cat([p.reshape(len(p), -1) for p in parts], 1)


def written_by_index(z):
    """A masked write, an indexed write of a value of x, and an accumulating index_put."""
    y = z ** 2
    y[z > 0.5] = 0.0
    y[:, 1, [0, 2]] = torch.sin(z[:, 0, :2])
    return flat(y * z, torch.stack([s.index_put((torch.tensor([1, 1]),), torch.sin(s[:2]), accumulate=True)
                                    for s in z]) ** 2)
COMPOSITE_OPS = {
    "pow-with-a-constant-tensor-exponent": lambda z: (z - 0.5) ** torch.tensor(3.0, dtype=F64) + z ** OP_P,
    "pow-of-relu-by-a-tensor-at-zero": lambda z: F.relu(z) ** torch.tensor(2.0, dtype=F64),
    "pow-by-a-tensor-of-a-larger-shape": lambda z: (z[:, :1, 0].abs() + 1) ** OP_E,
    "copy-into-integer-and-bool": lambda z: torch.zeros(2, 2, 3, 4, dtype=torch.long).copy_(10 * z).double() * z
    + torch.zeros(2, 2, 3, 4, dtype=torch.bool).copy_(z > 0.3).double() * z ** 2,
    "relu-and-max-beside-minus-infinity": lambda z: torch.exp(F.relu(z.masked_fill(OP_C > 0.5, -math.inf)))
    * torch.amax(z.masked_fill(OP_C > 0.5, -math.inf), -1, keepdim=True),
    "circular_pad": lambda z: F.pad(z, (1, 1, 1, 1), mode="circular") ** 2,
    "channels-last-global-pool": lambda z: F.adaptive_avg_pool2d(z.contiguous(memory_format=torch.channels_last) ** 2,
                                                                   1),
    "written-in-place": written_in_place,
    "index_add-scatter_add": lambda z: torch.zeros(2, 2, 3, 4, dtype=F64).index_add(2, OP_I, torch.tanh(z))
    + torch.sin(z).scatter_add(3, OP_SCATTER, z ** 2),
    "lstm": lambda z: OP_LSTM(z.flatten(2))[0] ** 2,  # its gates split by unsafe_split
    "view-as-integer": lambda z: z * (z.view(torch.int64) > 0) + z ** 2 * z.view(torch.int32)[..., ::2].sign(),
    "casts-to-integer-and-bool": lambda z: (1000 * z).long().double() * z + (z > 0.2).double() * z ** 2
    + (10 * z).to(torch.bool).double(),
    "normalize": lambda z: F.normalize(z, dim=-1),
    "cosine_similarity": lambda z: F.cosine_similarity(z, z ** 2, dim=-1),
    "vector_norm": lambda z: torch.linalg.vector_norm(z, dim=(-2, -1)) * z.norm(dim=(1, 2))[:, :2],
    "max_pool2d": lambda z: F.max_pool2d(z ** 2, 2) * z[:, :, :1, :2],
    "max_pool1d": lambda z: F.max_pool1d(z.flatten(2), 3),
    "max-min-dim": lambda z: z.max(-1).values * z.min(2, keepdim=True).values.squeeze(2)[..., :3] ** 2,
    "max-of-all": lambda z: torch.stack([z[i].max() * z[i].min() for i in range(len(z))])[:, None],
    "sort-topk": lambda z: torch.sort(z, -1).values ** 2 * torch.topk(z, 2, dim=2).values.sum(2, keepdim=True),
    "cumsum": lambda z: torch.cumsum(z ** 2, -1) * z,
    "sinh-cosh": lambda z: torch.sinh(z) * torch.cosh(z[:, :1]),
    "exp2": lambda z: torch.exp2(z),
    "mish": F.mish,
    "hardswish": lambda z: F.hardswish(2 * z) * z,
    "logsigmoid": F.logsigmoid,
    "prelu": lambda z: F.prelu(z, OP_R[:2].abs()) * z,
    "softshrink-hardshrink": lambda z: (F.softshrink(z, 0.3) + F.hardshrink(z, 0.4)) * z,
    "threshold": lambda z: F.threshold(z, 0.1, -1.0) * z,
    "glu": lambda z: F.glu(z, -1),
    "logaddexp": lambda z: torch.logaddexp(z, z ** 2),
    "logit-xlogy": lambda z: torch.logit(torch.sigmoid(z)) ** 2 + torch.xlogy(z, z ** 2 + 1),
    "addcmul-addcdiv-lerp": lambda z: torch.addcmul(z, z, z, value=0.5) + torch.addcdiv(z, z, z ** 2 + 1)
    + torch.lerp(z, z ** 2, 0.3),
    "baddbmm-addmv": lambda z: torch.baddbmm(z[:, 0, :, :3], z[:, 0], z[:, 1].transpose(1, 2) ** 2)
    + torch.stack([torch.addmv(z[i, 0, 0, :3], z[i, 1, :, :3].t(), z[i, 0, :, 0]) for i in range(len(z))])[:, None],
    "masked_fill": lambda z: (z ** 2).masked_fill(OP_C > 0, 1.0),
    "clamp-by-tensors": lambda z: torch.clamp(z, min=-OP_RV[0], max=OP_C.abs()) * z,
    "losses": lambda z: torch.stack([F.mse_loss(z[i], OP_C, reduction="none") + F.huber_loss(z[i], OP_C, delta=0.5,
                                     reduction="none") + F.smooth_l1_loss(z[i], OP_C, reduction="none")
                                     for i in range(len(z))]),
    "tril-triu-dot-trace": lambda z: torch.tril(z) ** 2 + torch.triu(z, 1) * z
    + torch.stack([torch.dot(z[i, 0, 0], z[i, 1, 1]) + torch.trace(z[i, 0])
                   for i in range(len(z))])[:, None, None, None],
    "atan2-hypot": lambda z: torch.atan2(z, z ** 2 + 0.3) + torch.hypot(z, z ** 2 + 0.5) + torch.atan2(OP_C, z),
    "fmod-remainder-frac": lambda z: (torch.fmod(5 * z, 1.3) + torch.remainder(5 * z, z ** 2 + 0.5) + torch.frac(3 * z))
    * z,
    "copysign": lambda z: torch.copysign(z ** 2, z - 0.3) * z + torch.copysign(z, -1.0) ** 2,
    "prod-cumprod": lambda z: flat(z.prod(2), z.prod(-1, keepdim=True), z.cumprod(-1), z.cumprod(2),
                                   torch.stack([s.prod() for s in z])),
    "median-kthvalue-mode": lambda z: flat(z.median(-1).values ** 2, z.nanmedian(2).values * z[:, :, 0],
                                           z.kthvalue(2, -1).values ** 2, z.mode(1).values * z[:, 0],
                                           torch.stack([s.median() * s.nanmedian() for s in z])),
    "cummax-cummin": lambda z: z.cummax(-1).values ** 2 + z.cummin(2).values * z,
    "diag_embed-diag": lambda z: flat(torch.diag_embed(z ** 2, 1, 1, 3), torch.stack([torch.diag(s[0, 0]) for s in z])
                                      ** 2),
    "adaptive_max_pool": lambda z: flat(F.adaptive_max_pool2d(z, (2, 3)) ** 2, F.adaptive_max_pool3d(z, (1, 2, 3)) ** 2,
                                        F.adaptive_max_pool1d(z.flatten(2), 5) * z[:, :, 0, :1]),
    "max_pool3d": lambda z: F.max_pool3d(z[:, None] ** 2, 2) * z[:, None, :1, :1, :2],
    "max_unpool": lambda z: flat(F.max_unpool2d(*F.max_pool2d(z, 2, return_indices=True), 2, output_size=(3, 4)) * z,
                                 F.max_unpool1d(*F.max_pool1d(z.flatten(2) ** 2, 3, return_indices=True), 3),
                                 F.max_unpool3d(*F.max_pool3d(z[:, None], 2, return_indices=True), 2,
                                                output_size=(2, 3, 4)) * z[:, None]),
    "scatter-scatter_reduce": lambda z: flat(z.scatter(3, OP_PERMUTATION, z ** 2) ** 2,
                                             torch.zeros_like(z).scatter(3, OP_PERMUTATION, torch.sin(z)),
                                             z.scatter(3, OP_FIRST, 0.5) ** 2,
                                             z.scatter_reduce(3, OP_SCATTER, z ** 2, "sum") ** 2,
                                             z.scatter_reduce(3, OP_SCATTER, z ** 2, "mean", include_self=False) ** 2),
    "index_put-masked-write": written_by_index,
    "advanced-indices-not-adjacent": lambda z: (z[:, [0, 1], :, [1, 2]] ** 2).permute(1, 0, 2),
    "norm-dist-renorm": lambda z: flat(z.norm(p=3, dim=-1), z.norm(dim=(1, 2)), F.pairwise_distance(z[:, 0], z[:, 1]),
                                       torch.stack([torch.dist(s[0], s[1], p=1.5) for s in z]),
                                       torch.renorm(z, 2, 0, 1.0) ** 2),
    "std_mean-cross": lambda z: flat(torch.std_mean(z, -1)[0], torch.std_mean(z, (1, 2))[1] ** 2,
                                     torch.linalg.cross(z[..., :3], z[..., 1:]) ** 2),
    "unfold-fold": lambda z: flat(F.unfold(z, 2) ** 2, F.fold(F.unfold(z, 2) ** 2, (3, 4), 2),
                                  torch.stack([F.unfold(s, 2) for s in z]) ** 2),
    "channel_shuffle-3d-upsampling-padding": lambda z: flat(
        F.channel_shuffle(z, 2) ** 2, F.interpolate(z[:, None], scale_factor=2, mode="trilinear") ** 2,
        F.interpolate(z, size=(2, 2), mode="bilinear", antialias=True) ** 2,
        F.interpolate(z, size=(2, 2), mode="bicubic", antialias=True) ** 2,
        F.pad(z[:, None], (1, 1, 1, 1, 1, 1), mode="reflect") ** 2,
        F.pad(z[:, None], (1, 1, 1, 1, 1, 1), mode="replicate") ** 2),
    "grid_sample-affine_grid": lambda z: flat(
        F.grid_sample(OP_C.expand(2, 2, 3, 4), torch.tanh(z[:, :, :2, :2]).permute(0, 2, 3, 1), align_corners=False),
        F.grid_sample(z ** 2, OP_C[:1, :2, :2, None].expand(2, 2, 2, 2).tanh(), align_corners=True),
        F.affine_grid(z[:, 0, :2, :3], (2, 1, 3, 3), align_corners=False) ** 2),
    "entr-xlog1py-sinc-logaddexp2-deg2rad": lambda z: torch.special.entr(z ** 2 + 0.1)
    + torch.special.xlog1py(z, z ** 2) + torch.sinc(z) + torch.logaddexp2(z, z ** 2) + torch.deg2rad(z) ** 2,
    "nan_to_num": lambda z: torch.nan_to_num(torch.log(z)) * z,  # log of a negative z: NaN, replaced by 0
    "fmax-fmin": lambda z: torch.fmax(z, z ** 2) * z + torch.fmin(z, OP_C) * z,
    "mvlgamma": lambda z: torch.mvlgamma(z ** 2 + 2.0, 2),
    "bilinear-layer": lambda z: OP_BILINEAR(z, z ** 2),
    "rrelu-eval": lambda z: F.rrelu(z, training=False) * z,
    "binary_cross_entropy-soft_margin-embedding": lambda z: flat(
        F.binary_cross_entropy(torch.sigmoid(z), OP_C.sigmoid().expand_as(z), reduction="none"),
        torch.stack([F.binary_cross_entropy(torch.sigmoid(s), OP_C.sigmoid(), weight=OP_C.abs()) for s in z]),
        F.soft_margin_loss(z, OP_C.sign().expand_as(z), reduction="none"),
        torch.stack([F.embedding(torch.tensor([[2, 0], [1, 1]]), torch.sin(s[0])) for s in z]) ** 2),
    "cross_entropy": lambda z: torch.stack([
        F.cross_entropy(s[0] ** 2, torch.tensor([0, 3, 1]), weight=OP_P, ignore_index=1)
        + F.cross_entropy(s[None], torch.tensor([[[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]]]), reduction="sum")
        for s in z])[:, None],
}


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("name", COMPOSITE_OPS)
def test_composite_ops_and_in_place_writes_match_exact_reverse(name, order):
    op = COMPOSITE_OPS[name]
    x, v = rand(2, 2, 3, 4, seed=1), rand(2, 2, 3, 4, seed=2)
    w = torch.cos(1.7 * torch.arange(op(x.clone()).flatten(1).shape[1], dtype=F64) + 0.3)
    f = lambda z: op(z).flatten(1) @ w  # noqa: E731
    assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-10)


CAUSAL = torch.ones(3, 3, dtype=torch.bool).tril()


def attention(z, causal=False):
    return F.scaled_dot_product_attention(z, z ** 2, torch.sin(z), is_causal=causal)


def written_out_attention(z, causal=False):
    scores = z @ (z ** 2).transpose(-1, -2) / 2  # 1 / sqrt(4)
    return torch.softmax(scores.masked_fill(~CAUSAL, -math.inf) if causal else scores, -1) @ torch.sin(z)


def pairwise(z, p=2.0):
    """cdist of each sample's two channels, written out: the p-norm of the broadcast difference of their rows."""
    diff = (z[:, 0, :, None, :] - z[:, 1, None, :, :]).abs()
    return diff.pow(2).sum(-1).sqrt() if p == 2 else diff.pow(p).sum(-1).pow(1 / p)


UPPER = torch.triu_indices(3, 3, 1)


def logcumsumexp_written_out(z, dim):
    m = z.amax(dim, keepdim=True).detach()  # any constant shift: exp(z - m) in float64's range for these z
    return torch.log(torch.cumsum(torch.exp(z - m), dim)) + m


def test_logcumsumexp_of_values_far_apart_stays_finite():
    """The rule never exponentiates z itself: z spread over 3000 (exp(-3000) underflows, exp(3000) overflows)."""
    x, v = 1000 * rand(2, 3, 4, seed=1), rand(2, 3, 4, seed=2)
    d = taylor_coefficients(lambda z: torch.logcumsumexp(z, -1).flatten(1) @ torch.arange(12.0, dtype=F64), x, v, 4)
    assert d.isfinite().all()
    assert_agree(d[0], torch.logcumsumexp(x, -1).flatten(1) @ torch.arange(12.0, dtype=F64), rtol=1e-15)

WRITTEN_OUT = {  # ops whose double backward PyTorch lacks, against the same maths in ops it can differentiate
    "cdist": (lambda z: torch.cdist(z[:, 0], z[:, 1]), pairwise),
    "cdist-p-1.5": (lambda z: torch.cdist(z[:, 0], z[:, 1], p=1.5), functools.partial(pairwise, p=1.5)),
    "pdist": (lambda z: torch.stack([F.pdist(s[0]) for s in z]), lambda z: (z[:, 0, UPPER[0]] - z[:, 0, UPPER[1]])
              .pow(2).sum(-1).sqrt()),
    # nested autograd through logcumsumexp is NaN from T = 3 (its double backward takes logs of negative values)
    "logcumsumexp": (lambda z: torch.logcumsumexp(z, -1) + torch.logcumsumexp(30 * z, 2) / 30,
                     lambda z: torch.log(torch.cumsum(torch.exp(z), -1)) + logcumsumexp_written_out(30 * z, 2) / 30),
    "scatter-with-reduce-add": (lambda z: z.scatter(3, OP_SCATTER, z ** 2, reduce="add")
                                + z.scatter(3, OP_FIRST, 0.5, reduce="add") ** 2,
                                lambda z: z.scatter_add(3, OP_SCATTER, z ** 2)
                                + (z + 0.5 * (torch.arange(4) == 0)) ** 2),
    "hardsigmoid": (lambda z: F.hardsigmoid(2 * z) * z, lambda z: torch.clamp(z / 3 + 0.5, 0, 1) * z),
    "scaled_dot_product_attention": (attention, written_out_attention),
    "causal-attention": (functools.partial(attention, causal=True), functools.partial(written_out_attention,
                                                                                      causal=True)),
}


@pytest.mark.filterwarnings("ignore:The reduce argument of torch.scatter:UserWarning")  # deprecated, still torch's
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("name", WRITTEN_OUT)
def test_ops_without_a_double_backward_match_their_written_out_form(name, order):
    op, written = WRITTEN_OUT[name]
    x, v = rand(2, 2, 3, 4, seed=1), rand(2, 2, 3, 4, seed=2)
    w = torch.cos(1.7 * torch.arange(op(x).flatten(1).shape[1], dtype=F64) + 0.3)
    assert_agree(taylor_d(lambda z: op(z).flatten(1) @ w, x, v, order),
                 reverse_d(lambda z: written(z).flatten(1) @ w, x, v, order), rtol=1e-10)


DIST_A, DIST_B = uniform(4, seed=21, low=0.5, high=1.5), uniform(4, seed=22, low=0.5, high=1.5)
D = torch.distributions
# A user's log-density log p(z) from torch.distributions (its default argument checks on), z in (0.1, 0.9)^4: the
# rules it reaches (lgamma, digamma, Cholesky, triangular solves, ...) and the trace's handling of those checks.
DISTRIBUTIONS = {
    "Normal-learned-scale": lambda z: D.Normal(z, 1.0 + z ** 2).log_prob(DIST_A).sum(1),
    "StudentT": lambda z: D.StudentT(z + 2.0, DIST_A, DIST_B).log_prob(z).sum(1),
    "Gamma": lambda z: D.Gamma(z + 1.0, DIST_B).log_prob(z).sum(1),
    "Beta": lambda z: D.Beta(DIST_A, z + 0.5).log_prob(z).sum(1),
    "Dirichlet": lambda z: D.Dirichlet(DIST_A + z).log_prob(z / z.sum(1, keepdim=True)),
    "Poisson-rate": lambda z: D.Poisson(z + 1.0).log_prob(torch.full((4,), 2.0, dtype=F64)).sum(1),
    "VonMises": lambda z: D.VonMises(DIST_A, DIST_B).log_prob(z).sum(1),
    "Weibull-Gumbel": lambda z: (D.Weibull(DIST_A, DIST_B).log_prob(z) + D.Gumbel(DIST_A, DIST_B).log_prob(z)).sum(1),
    "Kumaraswamy": lambda z: D.Kumaraswamy(DIST_A, DIST_B).log_prob(z).sum(1),
    "FisherSnedecor": lambda z: D.FisherSnedecor(DIST_A + 2, DIST_B + 2).log_prob(z).sum(1),
    "MixtureSameFamily": lambda z: D.MixtureSameFamily(D.Categorical(logits=DIST_A[:3]),
                                                       D.Normal(DIST_B[:3], DIST_A[1:])).log_prob(z).sum(1),
    "LowRankMultivariateNormal": lambda z: D.LowRankMultivariateNormal(DIST_A, torch.outer(DIST_B, DIST_A[:2]),
                                                                       DIST_B).log_prob(z),
    "MultivariateNormal-learned-covariance": lambda z: D.MultivariateNormal(
        DIST_A, covariance_matrix=torch.diag_embed(1 + z ** 2) + 0.1).log_prob(DIST_B),
    "LogisticNormal": lambda z: D.LogisticNormal(DIST_A[:3], DIST_B[:3]).log_prob(z / z.sum(1, keepdim=True)),
    "Wishart": lambda z: D.Wishart(df=torch.tensor(5.0, dtype=F64), covariance_matrix=torch.eye(2, dtype=F64))
    .log_prob(z.view(-1, 2, 2) @ z.view(-1, 2, 2).mT + torch.eye(2, dtype=F64)),
}


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_log_densities_of_torch_distributions_match_exact_reverse(name, order):
    f = DISTRIBUTIONS[name]
    x, v = uniform(3, 4, seed=1, low=0.1, high=0.9), rand(3, 4, seed=2)
    assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-10)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("reused", [False, True], ids=["shift-only-user", "activation-reused"])
def test_a_constant_shift_of_an_activation_folds_into_its_rule_only_where_nothing_else_reads_it(reused, order):
    """softplus(z) - log 2 (the deep EBM's activation): where the shift is the activation's only reader, the plan
    folds it into softplus' rule (c_0 - log 2), so no add runs over the series, with autograd recording or not;
    where the activation is read again, it stays as it was. In every case D^T and its gradient in the weights
    agree with nested reverse mode."""
    w = rand(3, 4, seed=3).requires_grad_()

    def f(x):
        h = F.softplus(x @ w)
        shifted = h - math.log(2.0)
        return (shifted * h if reused else shifted * shifted).sum(-1)

    x, v = rand(2, 3, seed=1), rand(2, 3, seed=2)
    reverse = directional_derivative(f, x, v, order, method="exact-reverse")
    for recorded in (False, True):
        with torch.set_grad_enabled(recorded), CountAtenCalls() as counter:
            taylor = directional_derivative(f, x, v, order, method="exact-taylor")
        assert_agree(taylor, reverse if recorded else reverse.detach(), rtol=1e-10)
        series_adds = [shape for shape in counter.shapes["aten.add.Tensor"] if shape == (order + 1, 2, 4)]
        assert bool(series_adds) == reused  # the full-series z + c e_0 only where z is read again
    (grad_taylor,), (grad_reverse,) = (torch.autograd.grad(d.sum(), [w]) for d in (taylor, reverse))
    assert_agree(grad_taylor, grad_reverse, rtol=1e-10)


# ---- 3. the registered rules (closed-form coefficients, Horner) against the series recurrences ---------------


def positive_primal(u):
    """u with u_0 in [0.5, ...): the domain of log, sqrt, rsqrt and non-integer powers."""
    return torch.cat([u[:1].abs() + 0.5, u[1:]])


def softplus_reference(u, beta, threshold):
    """softplus(beta u) / beta: v' = sigmoid(beta u) u'; the identity where beta u_0 > threshold, as torch's."""
    smooth = series.from_derivative(u, F.softplus(u[0], beta, threshold), series.sigmoid(beta * u))
    return torch.where(beta * u[0] > threshold, u, smooth)


def elu_reference(u, alpha):
    """u where u_0 > 0, else alpha (e^u - 1): the exp series, its constant term alpha expm1(u_0)."""
    negative = alpha * series.exp(u)
    negative = torch.cat([alpha * torch.expm1(u[:1]), negative[1:]])
    return torch.where(u[0] > 0, u, negative)


# name: (op, extra args, slow reference on the series u, needs u_0 > 0)
RULE_CASES = {
    "exp": (aten.exp.default, (), series.exp, False),
    "expm1": (aten.expm1.default, (), lambda u: torch.cat([torch.expm1(u[:1]), series.exp(u)[1:]]), False),
    "sigmoid": (aten.sigmoid.default, (), series.sigmoid, False),
    "tanh": (aten.tanh.default, (), series.tanh, False),
    "log": (aten.log.default, (), series.log, True),
    "log1p": (aten.log1p.default, (), lambda u: series.log(torch.cat([1 + u[:1], u[1:]])), True),
    "sqrt": (aten.sqrt.default, (), lambda u: series.power(u, 0.5), True),
    "rsqrt": (aten.rsqrt.default, (), lambda u: series.power(u, -0.5), True),
    "reciprocal": (aten.reciprocal.default, (), lambda u: series.power(u, -1.0), True),
    "pow-1.7": (aten.pow.Tensor_Scalar, (1.7,), lambda u: series.power(u, 1.7), True),
    "pow--2.5": (aten.pow.Tensor_Scalar, (-2.5,), lambda u: series.power(u, -2.5), True),
    "pow-3": (aten.pow.Tensor_Scalar, (3,), lambda u: series.power(u, 3.0), True),
    "pow--2": (aten.pow.Tensor_Scalar, (-2,), lambda u: series.power(u, -2.0), True),
    "sin": (aten.sin.default, (), lambda u: series.sin_cos(u)[0], False),
    "cos": (aten.cos.default, (), lambda u: series.sin_cos(u)[1], False),
    "softplus": (aten.softplus.default, (), lambda u: series.from_derivative(u, F.softplus(u[0]), series.sigmoid(u)),
                 False),
    "softplus-beta-threshold": (aten.softplus.default, (2.0, 1.0), lambda u: softplus_reference(u, 2.0, 1.0), False),
    "silu": (aten.silu.default, (), lambda u: series.cauchy(u, series.sigmoid(u)), False),
    "elu": (aten.elu.default, (1.3,), lambda u: elu_reference(u, 1.3), False),
}


@pytest.mark.parametrize("order", range(1, 7))
@pytest.mark.parametrize("name", RULE_CASES)
def test_registered_rule_matches_the_series_recurrence(name, order):
    op, args, reference, positive = RULE_CASES[name]
    u = rand(order + 1, 5, 3, seed=order)
    u = positive_primal(u) if positive else u
    out, expected = rule_for(op)(Jet(u), *args), reference(u)
    assert isinstance(out, Jet) and out.series.shape == expected.shape
    for k in range(order + 1):  # each coefficient to 1e-12 of its own largest entry
        assert_agree(out.series[k], expected[k], rtol=1e-12)


# ---- 4. parameter gradients -------------------------------------------------------------------------------------


def parameter_gradient(model, method, x, v, order):
    d = directional_derivative(model, x, v, order, method=method)
    grads = torch.autograd.grad(d.sum(), list(model.parameters()), allow_unused=True, materialize_grads=True)
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("name, overrides, shape", [("deep-ebm", dict(n_chan=2), (2, 1, 32, 32)),
                                                    ("mlp-ebm", dict(hidden=(8, 8)), (3, 2))])
def test_parameter_gradients_match_exact_reverse(name, overrides, shape, order):
    model = family(name, **overrides)
    x, v = rand(*shape, seed=1), rand(*shape, seed=2)
    reverse = parameter_gradient(model, "exact-reverse", x, v, order)
    assert reverse.abs().max() > 0
    assert_agree(parameter_gradient(model, "exact-taylor", x, v, order), reverse, rtol=1e-8)


class ThroughUsersOps(nn.Module):
    """A layer followed by some of the rules for users' ops: gamma functions, inverse trig, products and picks."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(7)
            self.linear = nn.Linear(4, 6).double()

    def forward(self, z):
        h = self.linear(z)
        smooth = torch.lgamma(h ** 2 + 1) + torch.atan2(h, 1 + h ** 2) + torch.erfinv(0.5 * torch.tanh(h))
        return smooth.sum(1) + h.cumprod(1).sum(1) + torch.asinh(h).prod(1) + h.median(1).values ** 2


@pytest.mark.parametrize("order", [2, 3])
def test_parameter_gradients_through_the_rules_for_users_ops_match_exact_reverse(order):
    model, x, v = ThroughUsersOps(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    reverse = parameter_gradient(model, "exact-reverse", x, v, order)
    assert reverse.abs().max() > 0
    assert_agree(parameter_gradient(model, "exact-taylor", x, v, order), reverse, rtol=1e-8)


@pytest.mark.parametrize("view", [False, True], ids=["fresh", "a-view"])
def test_a_bias_added_to_the_primal_rows_has_the_gradients_of_the_plain_add(view):
    """``add_to_primal`` adds in place through its own autograd node on a fresh series, and out of place on a view
    (whose in-place update autograd would record on its base): both with the plain add's first and second
    derivatives in the series and in the bias."""
    series, bias = rand(3 * 2, 4, 5, seed=1).requires_grad_(), rand(4, 1, seed=2).requires_grad_()

    def added(series, bias):
        fresh = series * 1.0  # a rule's fresh result
        return rules.add_to_primal(fresh[:, :] if view else fresh, bias, rows=2)

    primal_rows = torch.cat([torch.ones(2, 4, 5), torch.zeros(4, 4, 5)]).to(F64)
    assert torch.equal(added(series, bias), series + primal_rows * bias)
    assert torch.autograd.gradcheck(added, (series, bias)) and torch.autograd.gradgradcheck(added, (series, bias))


# ---- 5. float32 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", range(1, 7))
def test_float32_is_within_float32_roundoff_of_float64(order):
    model = family("deep-ebm", dtype=torch.float32, n_chan=2)
    x = uniform(4, 1, 32, 32, seed=1, dtype=torch.float32)
    v = rand(4, 1, 32, 32, seed=2, dtype=torch.float32)
    d32 = taylor_d(model, x, v, order)
    d64 = taylor_d(copy.deepcopy(model).double(), x.double(), v.double(), order)
    assert d32.dtype == torch.float32
    rel = (d32.double() - d64).abs() / d64.abs()
    assert rel.median() <= 1e-5 and rel.max() <= 1e-4, rel


# ---- 6. an op without a rule, and a user's rule ---------------------------------------------------------------


def erfcx_rule(z):
    """erfcx(u) = exp(u^2) erfc(u): v' = g u' with g = 2 u v - 2 / sqrt(pi), whose terms g_m = 2 (u v)_m (m >= 1)
    need only v_0 .. v_m (``series.integrate``)."""
    u, v0 = z.series, torch.special.erfcx(z.primal)
    g_step = lambda v: 2 * sum(u[i] * v[len(v) - 1 - i] for i in range(len(v)))  # noqa: E731
    return Jet(series.integrate(series.scaled_derivative(u), v0, g_step, 2 * u[0] * v0 - 2 / math.sqrt(math.pi)))


@pytest.mark.parametrize("fn, op", [(torch.special.erfcx, "aten.special_erfcx.default"),
                                    (torch.special.i0, "aten.i0.default"),
                                    (torch.special.log_ndtr, "aten.special_log_ndtr.default")])
def test_an_op_without_a_rule_raises_naming_the_op(fn, op):
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    with pytest.raises(NotSupported, match=re.escape(f"no Taylor rule for the aten op {op}")):
        taylor_d(lambda z: fn(z).sum(1), x, v, 2)
    assert issubclass(NotSupported, NotImplementedError)  # the documented contract: a NotImplementedError


@pytest.mark.parametrize("write, match", [
    (lambda z: z.scatter_reduce(1, torch.tensor([[0, 0, 1, 1]]).expand(3, 4), z ** 2, "amax"),
     r"scatter_reduce with reduce='amax' has no Taylor rule \(only 'sum' and 'mean' are linear\)"),
    (lambda z: z.scatter(1, torch.tensor([[0, 0, 1, 1]]).expand(3, 4), z ** 2, reduce="multiply"),
     r"scatter with reduce='multiply' has no Taylor rule"),
])
@pytest.mark.filterwarnings("ignore:The reduce argument of torch.scatter:UserWarning")
def test_a_nonlinear_scatter_reduction_is_refused_by_name(write, match):
    with pytest.raises(NotSupported, match=match):
        taylor_d(lambda z: write(z).sum(1), rand(3, 4, seed=1), rand(3, 4, seed=2), 2)


def test_an_objective_by_taylor_mode_on_an_op_without_a_rule_says_what_to_use_instead():
    from fdsm.objectives import ssm_loss

    with pytest.raises(NotSupported, match=r"aten\.i0\.default.*method='reverse' in an objective"):
        ssm_loss(lambda z: torch.special.i0(z).sum(1), rand(3, 4, seed=1), method="taylor")


def test_data_dependent_control_flow_is_not_supported_and_says_what_to_do():
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    with pytest.raises(NotSupported, match=r"data-dependent control flow.*torch\.where.*'exact-reverse'"):
        taylor_d(lambda z: torch.tanh(z).sum(1) if z.sum() > 0 else torch.sigmoid(z).sum(1), x, v, 2)


def test_a_branch_on_a_closed_over_tensor_names_it_not_only_x():
    labels = torch.tensor([0, 2, 1])
    with pytest.raises(NotSupported, match=r"computed from x or from a tensor it closes over"):
        taylor_d(lambda z: z.sum(1) * F.one_hot(labels, 3).sum(1), rand(3, 4, seed=1), rand(3, 4, seed=2), 2)


@pytest.mark.parametrize("read", ["numpy", "tolist", "asarray"])
@pytest.mark.parametrize("of", ["x", "a constant made in f"])
def test_reading_values_into_python_or_numpy_while_traced_is_refused(read, of):
    """Under functionalize a tensor has no storage: .numpy() returned uninitialized memory, kept as a constant."""
    import numpy as np

    reads = {"numpy": lambda t: float(t.detach().numpy().sum()), "tolist": lambda t: sum(t.detach().flatten().tolist()),
             "asarray": lambda t: float(np.asarray(t.detach()).sum())}
    source = (lambda z: z) if of == "x" else (lambda z: torch.ones(3, dtype=F64))
    f = lambda z: torch.tanh(z).sum(1) * reads[read](source(z))  # noqa: E731
    with pytest.raises(NotSupported, match=r"reads a tensor's values into Python or NumPy"):
        taylor_d(f, rand(3, 4, seed=1), rand(3, 4, seed=2), 2)


def test_relu_of_a_nan_stays_nan():
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    f = lambda z: torch.relu(torch.log(z)).pow(2).sum(1)  # noqa: E731  log of a negative entry: NaN
    assert taylor_d(f, x, v, 2).isnan().equal(reverse_d(f, x, v, 2).isnan())
    assert taylor_d(f, x, v, 2).isnan().any()


def test_a_learnable_tensor_exponent_gets_its_gradient():
    weight = nn.Parameter(rand(4, 4, seed=3))
    exponent = nn.Parameter(torch.full((4,), 2.5, dtype=F64))
    f = lambda z: ((z @ weight).abs() + 1).pow(exponent).sum(1)  # noqa: E731
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    grads = {}
    for method in ("exact-taylor", "exact-reverse"):
        weight.grad = exponent.grad = None
        directional_derivative(f, x, v, 2, method=method).sum().backward()
        grads[method] = (weight.grad.clone(), exponent.grad.clone())
    for got, want in zip(grads["exact-taylor"], grads["exact-reverse"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


class Counted(nn.Module):
    """f with a side effect of its own: a buffer counted up on every call."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=F64))
        self.linear = nn.Linear(4, 1).double()

    def forward(self, z):
        self.calls += 1
        return torch.tanh(self.linear(z)).flatten()


def test_f_s_own_writes_into_its_buffers_run_once_per_call_as_in_eager():
    model, x, v = Counted(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    taylor.clear_cache()
    for calls in (1, 2):  # the first call traces (on copies) and runs; the second reuses the graph
        taylor_d(model, x, v, 2)
        assert model.calls.item() == calls
    reverse_d(model, x, v, 2)
    assert model.calls.item() == 3


@pytest.mark.parametrize("draw", ["seeded randn", "dropout in training", "rrelu in training"])
def test_random_numbers_drawn_inside_f_are_refused(draw):
    """The trace's replay would draw other numbers than f's own call (a seeded generator's too): D^0 was not f(x)."""
    dropout = nn.Dropout(0.5)
    fs = {"seeded randn": lambda z: (z * torch.randn(4, generator=torch.Generator().manual_seed(3), dtype=F64)).sum(1),
          "dropout in training": lambda z: dropout(z).sum(1),
          "rrelu in training": lambda z: F.rrelu(z, training=True).sum(1)}
    with pytest.raises(NotSupported, match=r"f draws random numbers \(aten\.(randn|bernoulli|rrelu_with_noise)"):
        taylor_d(fs[draw], rand(3, 4, seed=1), rand(3, 4, seed=2), 1)
    dropout.eval()
    assert taylor_d(fs["dropout in training"], rand(3, 4, seed=1), rand(3, 4, seed=2), 1).shape == (3,)


def test_writing_into_x_or_a_value_of_x_into_a_closed_over_tensor_is_refused():
    memory = torch.zeros(3, dtype=F64)

    def into_x(z):
        z.mul_(2.0)
        return torch.tanh(z).sum(1)

    def into_memory(z):
        memory.copy_(z[:, 0])
        return torch.tanh(z).sum(1)

    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    with pytest.raises(NotSupported, match=r"writes in place into its input x"):
        taylor_d(into_x, x, v, 2)
    assert x.equal(rand(3, 4, seed=1))  # refused before any write into the caller's x
    with pytest.raises(NotSupported, match=r"writes a value computed from x in place into a tensor it closes over"):
        taylor_d(into_memory, x, v, 2)


EMBEDDING_ROWS = torch.tensor([[0, 2], [1, 3], [3, 3]])

# name -> f(z, e) of an nn.Embedding(4, 3, **kwargs) e: the table's gradient must be autograd's, whose conventions
# (padding_idx, scale_grad_by_freq, max_norm's renormalization in place) are not those of a plain row lookup
EMBEDDINGS = {
    "padding-and-frequency": (dict(padding_idx=0, scale_grad_by_freq=True),
                              lambda z, e: (e(EMBEDDING_ROWS) * z[:, :2, None] ** 2).sum((1, 2))),
    "max-norm": (dict(max_norm=1.0), lambda z, e: (e(EMBEDDING_ROWS) * z[:, :2, None] ** 2).sum((1, 2))),
    "max-norm-twice": (dict(max_norm=1.0), lambda z, e: ((e(EMBEDDING_ROWS) + 2 * e(EMBEDDING_ROWS.flip(0)))
                                                         * z[:, :2, None] ** 2).sum((1, 2))),
    "max-norm-of-a-computed-table": (dict(), lambda z, e: (F.embedding(EMBEDDING_ROWS, e.weight * 2.0, max_norm=1.0)
                                                           * z[:, :2, None] ** 2).sum((1, 2))),
    "max-norm-of-a-view": (dict(), lambda z, e: (F.embedding(EMBEDDING_ROWS % 3, e.weight[:3], max_norm=0.5)
                                                 * z[:, :2, None] ** 2).sum((1, 2))),
    "max-norm-rows-from-x": (dict(max_norm=1.0), lambda z, e: (e(2 * (z[:, :2] > 0.5).long() + EMBEDDING_ROWS % 2)
                                                               * z[:, :2, None] ** 2).sum((1, 2))),
}


@pytest.mark.parametrize("name", EMBEDDINGS)
def test_an_embedding_tables_gradient_is_autograds(name):
    """The table's gradient through Taylor mode is autograd's: a decomposition into a row lookup gave the padding row
    one and dropped the frequency scaling; max_norm's replay raised autograd's error for an in-place write into a
    leaf, then gave the weight no gradient, or a wrong one for a second lookup."""
    kwargs, f = EMBEDDINGS[name]
    torch.manual_seed(0)
    e = nn.Embedding(4, 3, **kwargs).double()
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    gradients = []
    for d in (taylor_d, reverse_d):
        e.zero_grad()
        derivative = d(lambda z: f(z, e), x, v, 2)
        derivative.sum().backward()
        gradients.append((derivative.detach(), e.weight.grad))
    if "max_norm" in kwargs:
        assert e.weight.norm(dim=1).max() <= 1 + 1e-12  # renormalized in place, as f's own call does
    (got, got_grad), (expected, expected_grad) = gradients
    assert_agree(got, expected, rtol=1e-10)
    assert_agree(got_grad, expected_grad, rtol=1e-10)


def test_a_table_that_depends_on_x_is_differentiated_as_its_lookup():
    """padding_idx and scale_grad_by_freq shape autograd's gradient into a table, not the lookup: of a table that
    depends on x, Taylor mode's derivatives, and their gradient, are the lookup's (nested autograd's convention
    differs there; the rule had given a gradient that did not match its own derivatives)."""
    weight = nn.Parameter(rand(4, 3, seed=3))
    rows = torch.tensor([0, 2, 2])

    def lookup(**options):
        return lambda z: torch.stack([F.embedding(rows, (weight + 1) * torch.sin(s).sum(), **options)
                                      for s in z]).pow(2).sum((1, 2))

    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    results = []
    for d, f in ((taylor_d, lookup(padding_idx=0, scale_grad_by_freq=True)), (reverse_d, lookup())):
        weight.grad = None
        derivative = d(f, x, v, 2)
        derivative.sum().backward()
        results.append((derivative.detach(), weight.grad))
    for got, expected in zip(*results, strict=True):
        assert_agree(got, expected, rtol=1e-10)
    convention = reverse_d(lookup(padding_idx=0), x, v, 2)
    assert (convention - results[1][0]).abs().max() > 1e-3 * results[1][0].abs().max()


def test_an_embedding_with_max_norm_of_a_table_that_depends_on_x_is_refused():
    """F.embedding(max_norm=) renormalizes its table in place under no_grad: of a table that depends on x the trace
    took the result for a constant, and every derivative was 0."""
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    rows = torch.tensor([0, 1, 1])
    f = lambda z: torch.stack([F.embedding(rows, s.view(2, 2).exp(), max_norm=100.0) for s in z]).sum((1, 2))  # noqa: E731
    with pytest.raises(NotSupported, match=r"F\.embedding's max_norm .* aten\.embedding_renorm\.default"):
        taylor_d(f, x, v, 1)


@pytest.mark.parametrize("write", ["a value with a gradient", "a constant"])
def test_a_write_into_a_parameter_under_no_grad_is_refused(write):
    """Autograd takes the written parameter for the parameter itself, with its gradient; the trace's later ops read
    the written value: differentiated through the write, the gradient came out half autograd's, and of a constant
    written there was none, silently."""
    linear = nn.Linear(3, 3).double()

    def f(z):
        with torch.no_grad():
            linear.weight.mul_(0.5) if write == "a value with a gradient" else linear.weight.fill_(0.3)
        return torch.tanh(linear(z)).sum(1)

    with pytest.raises(NotSupported, match=r"writes in place, under torch\.no_grad, into a tensor that requires grad"):
        taylor_d(f, rand(2, 3, seed=1), rand(2, 3, seed=2), 2)
    linear.requires_grad_(False)  # then no gradient is asked for: the write runs, as in f
    assert taylor_d(f, rand(2, 3, seed=1), rand(2, 3, seed=2), 2).shape == (2,)


class ScaledByNoGradNorm(nn.Module):
    def __init__(self, of):
        super().__init__()
        self.linear, self.of = nn.Linear(4, 3), of

    def forward(self, z):
        with torch.no_grad():
            scale = (z if self.of == "x" else self.linear.weight).norm()
        return torch.tanh(self.linear(z) / scale).pow(2).sum(-1)


NO_GRAD_MODELS = {
    "a scale of x": lambda: ScaledByNoGradNorm("x"),
    "a scale of a parameter": lambda: ScaledByNoGradNorm("weight"),
    "spectral_norm in training": lambda: nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(4, 3)),
                                                       nn.Tanh(), nn.Linear(3, 1), nn.Flatten(0)).train(),
    "the older spectral_norm in training": lambda: nn.Sequential(  # a pre-hook sets weight, a plain attribute
        nn.utils.spectral_norm(nn.Linear(4, 3)), nn.Tanh(), nn.Linear(3, 1), nn.Flatten(0)).train(),
}


@pytest.mark.parametrize("name", NO_GRAD_MODELS)
def test_values_computed_under_torch_no_grad_inside_f_are_constants(name):
    """As autograd has them: the trace ran with gradients off, so a torch.no_grad inside f did not show, and Taylor
    mode differentiated through it (the derivatives along x of a scale of x; the parameters' gradient through a
    spectral norm's power iteration, whose buffer write then failed autograd's version check)."""
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    results = []
    for d in (taylor_d, reverse_d):
        torch.manual_seed(0)
        model = NO_GRAD_MODELS[name]().double()
        derivative = d(model, x, v, 2)
        derivative.sum().backward()
        if d is taylor_d:  # no tensor of the trace is left in the module (a hook's attribute was)
            copy.deepcopy(model)
        results.append((derivative.detach(), *(torch.zeros_like(p) if p.grad is None else p.grad  # unused: None
                                               for p in model.parameters())))
    for got, expected in zip(*results, strict=True):
        assert_agree(got, expected, rtol=1e-10)


NO_GRAD_SCALE = torch.linspace(0.5, 2.0, 4, dtype=F64)


def _under_no_grad(compute):
    def f(z):
        with torch.no_grad():
            made = compute(z)
        return (z ** 2 * made).sum(1)
    return f


def _topk_unpacked(z):
    with torch.no_grad():
        top, _ = torch.topk(z, 1, dim=1)  # torch.return_types.topk
    return (z ** 2 * top).sum(1)


def _made_under_no_grad_then_written(z):
    with torch.no_grad():
        made = NO_GRAD_SCALE * 2  # from a constant, under no_grad: f's own tensor, detached
        made += 1
    return (z ** 2 * made).sum(1)


NO_GRAD_FUNCTIONS = {  # f(z) with a torch.no_grad region: its values are constants, as autograd has them
    "max-over-a-dim": _under_no_grad(lambda z: z.max(dim=1, keepdim=True).values),  # torch.return_types.max
    "topk-unpacked": _topk_unpacked,
    "to-its-own-dtype": _under_no_grad(lambda z: z.to(F64)),  # returns z itself, which keeps its gradient
    "contiguous": _under_no_grad(lambda z: z.contiguous()),
    "made-then-written": _made_under_no_grad_then_written,
}


@pytest.mark.parametrize("name", NO_GRAD_FUNCTIONS)
def test_what_a_torch_no_grad_inside_f_returns_is_as_autograd_has_it(name):
    """torch.return_types (a tuple subclass) were not detached; an op that returns its input itself was, where
    autograd keeps its gradient; a tensor made from a constant under no_grad was taken for a constant that f does
    not own, and its write refused."""
    f, x, v = NO_GRAD_FUNCTIONS[name], rand(3, 4, seed=1), rand(3, 4, seed=2)
    for order in (1, 2):
        assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-12)


def test_an_autograd_call_inside_f_is_refused_by_name():
    """A score computed inside f as an energy's gradient: functorch's error for requires_grad_ under a transform."""
    linear = nn.Linear(4, 1).double()

    def score(z):
        with torch.enable_grad():
            z = z.requires_grad_(True)
            gradient, = torch.autograd.grad(torch.tanh(linear(z)).sum(), z, create_graph=True)
        return gradient.sum(1)

    with pytest.raises(NotSupported, match=r"f's own autograd calls .* torch\.func\.grad inside f"):
        taylor_d(score, rand(3, 4, seed=1), rand(3, 4, seed=2), 1)


class Caching(nn.Module):
    """A forward that keeps a tensor of its batch as a plain attribute, beside one it had before the call."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
        self.before = torch.zeros(())

    def forward(self, z):
        out = torch.tanh(self.inner(z))
        self.before = out.detach().mean()
        self.inner.last = out.detach()  # on a submodule, new
        return out


def test_plain_tensor_attributes_a_forward_sets_leave_no_tensor_of_the_trace():
    """They held a tensor of the trace after the first call, which copy.deepcopy (float64_reference's copy) could not
    read; the replay runs no Python, so an attribute keeps its value from before the call, and a new one is gone."""
    model = Caching().double()
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    assert_agree(taylor_d(model, x, v, 2), reverse_d(model, x, v, 2), rtol=1e-12)  # reverse calls it: sets them
    model = Caching().double()
    taylor_d(model, x, v, 2)
    assert torch.equal(model.before, torch.zeros((), dtype=model.before.dtype)) and not hasattr(model.inner, "last")
    copy.deepcopy(model)


RUNNING_MEAN, RUNNING_VAR = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)


def test_a_batch_norm_in_training_on_running_statistics_the_trace_keeps_as_constants_is_refused_by_name():
    """Their update would run while traced and again at every call (PyTorch's internal assert said that values of x
    were written, before)."""
    f = lambda z: torch.tanh(F.batch_norm(z, RUNNING_MEAN, RUNNING_VAR, training=True)).sum(1)  # noqa: E731
    with pytest.raises(NotSupported, match=r"writes in place \(batch_norm\) into a tensor that the trace keeps"):
        taylor_d(f, rand(3, 4, seed=1), rand(3, 4, seed=2), 1)
    assert (RUNNING_MEAN == 0).all()


def test_a_write_into_parameters_that_f_does_not_read_after_runs_once_as_in_f():
    """A mean teacher: f moves the teacher's weights towards the student's under no_grad, and returns the student's
    output only. The write runs once per call, and nothing reads it: not refused."""
    student = nn.Linear(4, 3).double()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher.weight.mul_(0.5)

    def f(z):
        with torch.no_grad():
            for moving, target in zip(teacher.parameters(), student.parameters(), strict=True):
                moving.mul_(0.9).add_(0.1 * target)
        return torch.tanh(student(z)).sum(1)

    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    before = teacher.weight.detach().clone()
    results = []
    for d in (taylor_d, reverse_d):
        student.zero_grad()
        derivative = d(f, x, v, 2)
        derivative.sum().backward()
        results.append((derivative.detach(), student.weight.grad))
    expected = 0.9 * (0.9 * before + 0.1 * student.weight.detach()) + 0.1 * student.weight.detach()  # two calls
    assert_agree(teacher.weight.detach(), expected, rtol=1e-14)
    for got, reference in zip(*results, strict=True):
        assert_agree(got, reference, rtol=1e-12)


def test_a_write_into_a_closed_over_value_with_a_gradient_runs_once_as_in_f():
    """Not a parameter: a value computed from one, which f may write with autograd recording (its gradient then
    flows through the write, as the trace's later ops read it)."""
    def scaled_by(weight):
        scaled = weight * 2.0

        def f(z):
            scaled.mul_(1.5)
            return (torch.tanh(z) * scaled).sum(1)

        return f, scaled

    weight = nn.Parameter(rand(4, seed=3))
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    results = []
    for d in (taylor_d, reverse_d):
        f, scaled = scaled_by(weight)
        weight.grad = None
        derivative = d(f, x, v, 2)
        derivative.sum().backward()
        results.append((derivative.detach(), weight.grad, scaled.detach()))
        assert_agree(scaled.detach(), weight.detach() * 3.0, rtol=1e-15)  # written once
    for got, expected in zip(*results, strict=True):
        assert_agree(got, expected, rtol=1e-12)


GLOBAL_BASE = torch.zeros(3, 4, dtype=F64)


def test_a_write_into_a_copy_of_a_global_tensor_says_what_to_do_and_a_closed_over_one_works():
    """A global is kept in the graph as the tensor itself, not lifted: functionalize cannot write a value of x into
    its copy (an internal assert of PyTorch's before); a tensor in a closure cell is lifted, and works."""
    def into_a_global(z):
        y = GLOBAL_BASE.clone()
        y[z > 0.5] = 1.0
        return (y * z ** 2).sum(1)

    def make(base):
        def into_a_cell(z):
            y = base.clone()
            y[:, 1] = z[:, 0] ** 2
            return (y * z).sum(1)
        return into_a_cell

    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    with pytest.raises(NotSupported, match=r"into a copy of a tensor that the trace keeps as a constant \(a global"):
        taylor_d(into_a_global, x, v, 2)

    def a_number_into_a_global(z):  # the written value is no value of x: the message says what else it can be
        y = GLOBAL_BASE.clone()
        y[0] = 5.0
        return (y * z ** 2).sum(1)

    with pytest.raises(NotSupported, match=r"cannot write there \(computed from x, or a Python number"):
        taylor_d(a_number_into_a_global, x, v, 2)
    f = make(GLOBAL_BASE)
    assert_agree(taylor_d(f, x, v, 2), reverse_d(f, x, v, 2), rtol=1e-10)


GLOBAL_COUNT = torch.zeros(4, dtype=F64)


@pytest.mark.parametrize("write", ["mul_", "setitem", "a view's setitem", "out=", "a default argument", "an alias",
                                   "itself through contiguous"])
def test_a_write_into_a_tensor_the_trace_keeps_as_a_constant_is_refused_before_it_runs(write):
    """A global (or a default argument) is not lifted: its write ran while traced, and again at each call of the
    graph, so that f's first call read it written twice. A tensor that f makes from constants is its own to write."""
    def f(z, counts=GLOBAL_COUNT):
        made = torch.ones(4, dtype=F64) * 2  # made from constants while traced: not functional, and f's own
        made[1:] += 1
        if write == "mul_":
            GLOBAL_COUNT.mul_(1.5)
        elif write == "setitem":
            GLOBAL_COUNT[0] = 1.0
        elif write == "a view's setitem":
            GLOBAL_COUNT.view(2, 2)[0] = 1.0
        elif write == "out=":
            torch.add(made, 1.0, out=GLOBAL_COUNT)
        elif write == "an alias":
            GLOBAL_COUNT.detach().mul_(2.0)
        elif write == "itself through contiguous":
            GLOBAL_COUNT.contiguous().mul_(2.0)  # returns the tensor itself
        else:
            counts.add_(1.0)
        return (torch.tanh(z) * (GLOBAL_COUNT + made)).sum(1)

    with pytest.raises(NotSupported, match=r"writes in place \(\w+\) into a tensor that the trace keeps as a constant"):
        taylor_d(f, rand(3, 4, seed=1), rand(3, 4, seed=2), 2)
    assert (GLOBAL_COUNT == 0).all()  # refused before the write


@pytest.mark.parametrize("change, error, match", [
    (dict(order=0), ValueError, "expected order >= 1"), (dict(order=-1), ValueError, "expected order >= 1"),
    (dict(order=1.5), TypeError, "expected order to be an int"), (dict(order=True), TypeError, "expected order"),
    (dict(v=rand(3, 2, seed=2)), ValueError, "expected v of the same shape as x"),
    (dict(v=rand(3, 4, seed=2).float()), ValueError, "expected v on x's dtype and device"),
    (dict(f=lambda z: z.sum()), ValueError, r"expected f to map a batch of 3 to shape \(3,\) or \(3, k\), got \(\)"),
    (dict(f=lambda z: z.sum(1).repeat(2)), ValueError, "expected f to map a batch of 3"),
    (dict(f=lambda z: z.sum(1).long()), TypeError, "expected f to return a floating-point tensor"),
])
def test_taylor_coefficients_checks_its_inputs_as_directional_derivative_does(change, error, match):
    call = dict(f=lambda z: z.sum(1), x=rand(3, 4, seed=1), v=rand(3, 4, seed=2), order=2) | change
    with pytest.raises(error, match=r"taylor_coefficients\(f, x, v, order\): " + match):
        taylor_coefficients(call["f"], call["x"], call["v"], call["order"])


def test_a_rule_is_replaced_only_when_asked(monkeypatch):
    monkeypatch.setattr(RULES, "_entries", dict(RULES._entries))  # registration is global: undone below
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    f = lambda z: torch.tanh(z).sum(1)  # noqa: E731
    before = taylor_d(f, x, v, 2)  # traced and planned with the built-in rule
    with pytest.raises(ValueError, match=r"aten\.tanh has a Taylor rule already; pass replace=True"):
        register_rule(aten.tanh, lambda z: z)
    with pytest.raises(ValueError, match=r"aten\.tanh\.default has a Taylor rule already"):  # the packet's
        register_rule(aten.tanh.default, lambda z: z)
    register_rule(aten.tanh, lambda z: Jet(2 * z.series), replace=True)  # 2 z: D^2 = 0
    assert taylor_d(f, x, v, 2).abs().max() == 0 and before.abs().max() > 0
    monkeypatch.undo()
    taylor.clear_cache()
    torch.testing.assert_close(taylor_d(f, x, v, 2), before)


def test_a_registered_user_rule_makes_the_op_work(monkeypatch):
    monkeypatch.setattr(RULES, "_entries", dict(RULES._entries))  # registration is global: undone below
    register_rule(aten.special_erfcx.default, erfcx_rule)
    f = lambda z: torch.special.erfcx(z).sum(1) * torch.tanh(z[:, 0])  # noqa: E731
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    for order in range(1, 7):
        assert_agree(taylor_d(f, x, v, order), reverse_d(f, x, v, order), rtol=1e-10)
    monkeypatch.undo()
    assert rule_for(aten.special_erfcx.default) is None


# ---- 7. lifting the tensors f closes over, and the trace cache (NOTE in fdsm/taylor/trace.py) -----------------


def test_a_new_closed_over_tensor_is_used_without_retracing():
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    w = rand(4, seed=3)
    f = lambda z: (torch.tanh(z) * w).sum(1)  # noqa: E731
    first = taylor_d(f, x, v, 3)
    traces, hits = STATS.traces, STATS.hits
    w = rand(4, seed=4)  # rebinds the cell f reads
    second = taylor_d(f, x, v, 3)
    assert (STATS.traces, STATS.hits) == (traces, hits + 1)
    assert not torch.allclose(first, second)
    assert_agree(second, reverse_d(f, x, v, 3), rtol=1e-10)


def test_a_closed_over_tensor_of_a_new_shape_traces_again():
    """The slice bound is read from w's shape at trace time, so a graph reused for another shape would be wrong."""
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    w = rand(4, seed=3)
    f = lambda z: (torch.tanh(z[:, : w.shape[0]]) * w).sum(1)  # noqa: E731
    taylor_d(f, x, v, 2)
    traces = STATS.traces
    w = rand(2, seed=4)
    d = taylor_d(f, x, v, 2)
    assert STATS.traces == traces + 1
    assert_agree(d, reverse_d(f, x, v, 2), rtol=1e-10)


def test_dkef_with_a_new_alpha_uses_it_without_retracing():
    model = family("dkef", dim=4, n_inducing=6, hidden=5)
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    alpha = model.solve_alpha(rand(10, 4, seed=3), rademacher(10, 4, seed=4)).detach()
    f = lambda z: model.log_density(z, alpha)  # noqa: E731
    first = taylor_d(f, x, v, 2)
    traces, hits = STATS.traces, STATS.hits
    alpha = model.solve_alpha(rand(10, 4, seed=5), rademacher(10, 4, seed=6)).detach()  # the next batch's alpha
    second = taylor_d(f, x, v, 2)
    assert (STATS.traces, STATS.hits) == (traces, hits + 1)
    assert not torch.allclose(first, second)
    assert_agree(second, reverse_d(f, x, v, 2), rtol=1e-9)


def test_parameters_updated_in_place_are_used():
    model = family("mlp-ebm", hidden=(8, 8))
    x, v = rand(3, 2, seed=1), rand(3, 2, seed=2)
    first = taylor_d(model, x, v, 3)
    traces = STATS.traces
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)  # an optimizer step, in place
    second = taylor_d(model, x, v, 3)
    assert STATS.traces == traces and not torch.allclose(first, second)
    assert_agree(second, reverse_d(model, x, v, 3), rtol=1e-9)


class TiedWithBuffer(nn.Module):
    """Two linear maps sharing one weight (a tied parameter, two names) and a buffer, both read in forward."""

    def __init__(self):
        super().__init__()
        self.encode, self.decode = nn.Linear(3, 3), nn.Linear(3, 3)
        self.decode.weight = self.encode.weight
        self.register_buffer("scale", torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64))

    def forward(self, z):
        return torch.tanh(self.decode(torch.tanh(self.encode(z)) * self.scale)).sum(1)


def test_a_tied_weight_and_a_buffer_are_lifted_once_and_their_updates_are_used():
    model = TiedWithBuffer().double()
    x, v = rand(3, 3, seed=1), rand(3, 3, seed=2)
    first = taylor_d(model, x, v, 3)
    assert_agree(first, reverse_d(model, x, v, 3), rtol=1e-9)
    traces = STATS.traces
    with torch.no_grad():
        model.encode.weight.mul_(-1.5)  # the shared weight: both layers see it
        model.scale.add_(1.0)
    second = taylor_d(model, x, v, 3)
    assert STATS.traces == traces and not torch.allclose(first, second)
    assert_agree(second, reverse_d(model, x, v, 3), rtol=1e-9)


def own_result(activation, x, v):
    """D^3 of a fresh mlp-ebm through a closure, checked against exact-reverse; the model dies on return."""
    model = family("mlp-ebm", hidden=(8, 8), activation=activation)
    d = taylor_d(lambda z: model(z), x, v, 3)
    assert_agree(d, reverse_d(model, x, v, 3), rtol=1e-9)
    return d


def test_two_models_built_one_after_the_other_give_their_own_results():
    """Each model is freed before the next is built, so the next may reuse its id; the shapes are all the same."""
    x, v = rand(3, 2, seed=1), rand(3, 2, seed=2)
    results = []
    for activation in ("elu", "softplus", "tanh"):
        results.append(own_result(activation, x, v))
        gc.collect()
    assert not torch.allclose(results[0], results[1]) and not torch.allclose(results[1], results[2])


class TrainingBranch(nn.Module):
    def forward(self, z):
        return torch.tanh(z).sum(1) if self.training else torch.sin(z).sum(1)


def test_switching_train_and_eval_traces_again():
    model, x, v = TrainingBranch(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    taylor_d(model, x, v, 2)
    model.eval()
    assert_agree(taylor_d(model, x, v, 2), reverse_d(model, x, v, 2), rtol=1e-10)


class Swappable(nn.Module):
    """tanh(act(W z)).sum: a submodule and a function attribute that a user may replace between calls."""

    def __init__(self):
        super().__init__()
        self.linear, self.act, self.squash = nn.Linear(4, 4).double(), nn.Tanh(), torch.tanh

    def forward(self, z):
        return self.squash(self.act(self.linear(z))).sum(1)


@pytest.mark.parametrize("change", ["submodule type", "function attribute", "forward hook"])
def test_a_replaced_submodule_function_or_a_new_hook_traces_again(change):
    # each keeps every parameter and plain attribute as it was: only the key's types, identities and hooks see it
    model, x, v = Swappable(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    first = taylor_d(model, x, v, 3)
    if change == "submodule type":
        model.act = nn.Sigmoid()
    elif change == "function attribute":
        model.squash = torch.sin
    else:
        model.act.register_forward_hook(lambda module, inputs, out: 2 * out)
    second = taylor_d(model, x, v, 3)
    assert not torch.allclose(first, second)
    assert_agree(second, reverse_d(model, x, v, 3), rtol=1e-9)


SCALE = {"value": 2.0}  # a module-level config dict that a forward reads


class Config:
    scale = 1.5  # a class attribute


class Stale(nn.Module):
    """A forward that reads a list attribute, a config object, a class attribute, a private attribute, a global
    dict and a plain list of modules: each a place where a user changes a setting between calls."""

    offset = 0.5

    def __init__(self):
        super().__init__()
        self.linear, self.scales, self.config, self._gain = nn.Linear(4, 4).double(), [1.0, 2.0], Config(), 1.0
        self.extra = [nn.Linear(4, 4).double()]  # not a ModuleList: not a submodule

    def forward(self, z):
        h = torch.tanh(self.extra[0](self.linear(z)) * self.config.scale + self.offset)
        return (h[:, :2] * self.scales[0] + h[:, 2:] * self.scales[1]).sum(1) * self._gain * SCALE["value"]


def _mutate(model: Stale, change: str) -> None:
    if change == "list item":
        model.scales[0] = 5.0
    elif change == "config object":
        model.config.scale = 0.25
    elif change == "class attribute":
        Stale.offset = -1.0
    elif change == "private attribute":
        model._gain = 3.0
    elif change == "global dict":
        SCALE["value"] = 7.0
    elif change == "module in a plain list":
        model.extra[0] = nn.Linear(4, 4).double()
    elif change == "global forward hook":
        return torch.nn.modules.module.register_module_forward_hook(lambda m, i, out: 2 * out)


@pytest.mark.parametrize("change", ["list item", "config object", "class attribute", "private attribute",
                                    "global dict", "module in a plain list", "global forward hook"])
def test_a_setting_changed_in_place_between_calls_traces_again(change, monkeypatch):
    # the trace cache used to key these by identity (or not at all): the second call reused the first trace and
    # returned the first derivative (found by a staleness probe)
    monkeypatch.setattr(Stale, "offset", 0.5)
    monkeypatch.setitem(SCALE, "value", 2.0)
    model, x, v = Stale(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    first = taylor_d(model, x, v, 3)
    handle = _mutate(model, change)
    try:
        second = taylor_d(model, x, v, 3)
        assert not torch.allclose(first, second)
        assert_agree(second, reverse_d(model, x, v, 3), rtol=1e-9)
    finally:
        if handle is not None:
            handle.remove()


def test_a_changed_module_attribute_is_used():
    model = nn.Sequential(nn.Linear(4, 1), nn.Softplus(), nn.Flatten(0)).double()
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    taylor_d(model, x, v, 2)
    model[1].beta = 3.0
    assert_agree(taylor_d(model, x, v, 2), reverse_d(model, x, v, 2), rtol=1e-10)


class Scaled(nn.Module):
    """tanh(W z) times a scale that may be a number or a list of one, and negated once a ``flip`` attribute is
    added: the attributes whose layout (which are plain, which walked) changes between calls."""

    def __init__(self, scale=2.0):
        super().__init__()
        self.linear, self.scale = nn.Linear(4, 4).double(), scale

    def forward(self, z):
        scale = self.scale[0] if isinstance(self.scale, list) else self.scale
        h = torch.tanh(self.linear(z)) * scale
        return (-h if getattr(self, "flip", False) else h).sum(1)


@pytest.mark.parametrize("change", ["attribute added", "number rebound to a list, then the list mutated"])
def test_a_changed_layout_of_module_attributes_traces_again(change):
    # each module's layout (NOTE [a module's layout] in fdsm/taylor/trace.py) is kept between calls: a new
    # attribute, or one whose type changes, must find it anew, and a list it now holds must be walked on later calls
    model, x, v = Scaled(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    first = taylor_d(model, x, v, 3)
    if change == "attribute added":
        model.flip = True
    else:
        model.scale = [2.0]
        assert_agree(taylor_d(model, x, v, 3), first, rtol=1e-12)
        model.scale[0] = 5.0
    second = taylor_d(model, x, v, 3)
    assert not torch.allclose(first, second)
    assert_agree(second, reverse_d(model, x, v, 3), rtol=1e-9)


def _softplus_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Softplus(), nn.Linear(5, 1), nn.Flatten(0)).double()


# vmap once fell back to a per-sample loop for addcmul_, and warned (series.accumulate)
@pytest.mark.filterwarnings("error:There is a performance drop:UserWarning")
@pytest.mark.parametrize("transform", ["grad", "jacrev", "jvp", "vmap", "vmap of grad", "hessian"])
def test_torch_func_transforms_take_taylor_coefficients(transform):
    # a first call (the trace) inside a torch.func transform used to trace the transform's wrapped tensors as
    # constants: every derivative zero, silently, and the cached graph stayed wrong for later plain calls
    net, x, v = _softplus_net(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    d3 = lambda x, v: taylor_coefficients(net, x, v, 3)[3]  # noqa: E731
    reference = x.clone().requires_grad_()
    gradient = torch.autograd.grad(d3(reference, v).sum(), reference)[0]  # of D^3 in x, by plain autograd
    direct = taylor_coefficients(net, x, v, 3)
    taylor.clear_cache()
    if transform in ("grad", "jacrev"):
        got, want = getattr(torch.func, transform)(lambda x: d3(x, v).sum())(x), gradient
    elif transform == "jvp":
        got, want = torch.func.jvp(lambda x: d3(x, v).sum(), (x,), (v,))[1], (gradient * v).sum()
    elif transform == "vmap":
        got = torch.func.vmap(lambda a, b: taylor_coefficients(net, a[None], b[None], 3)[:, 0])(x, v)
        want = direct.T
    elif transform == "vmap of grad":
        got = torch.func.vmap(torch.func.grad(lambda a, b: d3(a[None], b[None])[0]))(x, v)
        want = gradient
    else:  # forward mode over the reverse pass through the rules' autograd nodes
        got = torch.func.hessian(lambda x: d3(x, v).sum())(x).reshape(x.numel(), -1)
        first = torch.autograd.grad(d3(reference, v).sum(), reference, create_graph=True)[0].flatten()
        want = torch.stack([torch.autograd.grad(g, reference, retain_graph=True)[0].flatten() for g in first])
    assert (want.abs().max() if transform == "hessian" else want.abs().min()) > 0  # the samples' cross terms are 0
    assert_agree(got, want, rtol=1e-10)
    assert_agree(taylor_coefficients(net, x, v, 3), direct, rtol=1e-12)  # the graph cached inside is right outside


def test_forward_mode_through_the_rules_autograd_nodes():
    # the elementwise rules' node (compose.Composed) and a conv bias's (rules.operands._AddToPrimal) had no jvp:
    # forward-mode AD through a pass with parameters that need gradients raised NotImplementedError
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus(), nn.Flatten(1), nn.Linear(8, 1), nn.Flatten(0)).double()
    x, v, tangent = (rand(2, 1, 4, 4, seed=seed) for seed in (1, 2, 3))
    bias_tangent = rand(2, seed=4)
    params = {k: p.detach() for k, p in net.named_parameters()}

    def d(x, bias):
        return taylor_coefficients(lambda y: torch.func.functional_call(net, {**params, "0.bias": bias}, (y,)), x,
                                   v, 3)

    want_x = torch.func.jvp(lambda x: d(x, params["0.bias"]), (x,), (tangent,))[1]
    want_bias = torch.func.jvp(lambda b: d(x, b), (params["0.bias"],), (bias_tangent,))[1]
    assert want_x.abs().max() > 0 and want_bias.abs().max() > 0
    dual = torch.autograd.forward_ad.make_dual
    with torch.autograd.forward_ad.dual_level():  # plain forward AD, the parameters needing gradients
        for got, want in ((d(dual(x, tangent), net[0].bias), want_x),
                          (d(x.requires_grad_(), dual(params["0.bias"], bias_tangent)), want_bias)):
            assert_agree(torch.autograd.forward_ad.unpack_dual(got).tangent.detach(), want, rtol=1e-12)


@pytest.mark.filterwarnings("error:There is a performance drop:UserWarning")  # no per-sample loop of vmap
def test_tensors_in_a_dict_are_leaves_and_an_ensemble_vmaps():
    # torch.func.functional_call's dict of parameters: its tensors used to be constants kept by identity, so a new
    # dict traced again, and under vmap (one derivative per member of an ensemble) a dead batched tensor was baked
    # into the graph (an internal assertion of functorch)
    net, x, v = _softplus_net(), rand(3, 4, seed=1), rand(3, 4, seed=2)
    members = [{k: scale * p.detach() for k, p in net.named_parameters()} for scale in (1.0, 0.5)]

    def d(params, x, v):
        return taylor_coefficients(lambda y: torch.func.functional_call(net, params, (y,)), x, v, 3)

    each = torch.stack([d(params, x, v) for params in members])
    traces = STATS.traces
    assert_agree(d({k: p.clone() for k, p in members[1].items()}, x, v), each[1], rtol=0)
    assert STATS.traces == traces  # new tensors of the same shapes: the same graph
    stacked = {k: torch.stack([params[k] for params in members]) for k in members[0]}
    taylor.clear_cache()
    ensemble = torch.func.vmap(d, in_dims=(0, None, None))(stacked, x, v)
    assert not torch.allclose(each[0], each[1])
    assert_agree(ensemble, each, rtol=1e-12)
    for params, want in zip(members, each, strict=True):
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(params[k])
        assert_agree(reverse_d(net, x, v, 3), want[3], rtol=1e-9)


def test_first_calls_from_threads_trace_one_at_a_time():
    # make_fx keeps global state: two threads tracing at once failed ("CURRENT_PATCHER is None"), one run in three
    nets = [_softplus_net() for _ in range(6)]
    for i, net in enumerate(nets):
        net[0].weight.data.mul_(1 + i / 10)
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    want = [taylor_coefficients(net, x, v, 3) for net in nets]
    taylor.clear_cache()
    start, got = threading.Barrier(len(nets)), {}

    def first_call(i):
        start.wait()
        got[i] = taylor_coefficients(nets[i], x, v, 3)

    with ThreadPoolExecutor(len(nets)) as pool:
        list(pool.map(first_call, range(len(nets))))  # re-raises a thread's error
    for i, d in enumerate(want):
        assert_agree(got[i], d, rtol=0)


def test_batch_statistics_warn_that_the_samples_are_coupled():
    # a batch norm in training mode couples the samples, so the derivative along v is not per sample and the
    # methods disagree (Taylor mode moves every sample at once): the trace says so once; in eval mode, and for an
    # instance norm (a batch norm over a batch of 1 after its reshape), the samples are independent and it is quiet
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1), nn.Flatten(0)).double()
    x, v = rand(5, 4, seed=1), rand(5, 4, seed=2)
    with pytest.warns(taylor.CoupledSamplesWarning, match="model.eval()"):
        taylor_d(model, x, v, 2)
    model.eval()
    norm = nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2, affine=True), nn.Flatten(1), nn.Linear(8, 1),
                         nn.Flatten(0)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error", taylor.CoupledSamplesWarning)
        assert_agree(taylor_d(model, x, v, 2), reverse_d(model, x, v, 2), rtol=1e-9)
        taylor_d(norm, rand(3, 1, 4, 4, seed=3), rand(3, 1, 4, 4, seed=4), 2)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(3, momentum=0.3), nn.BatchNorm2d(3)])
def test_a_batch_norm_in_training_updates_its_running_statistics_as_a_call_of_f_does(norm):
    """From the batch's primal statistics (the variance unbiased, as the op's): they stayed at their initial values,
    so a model trained by Taylor-mode steps was evaluated with them, while its num_batches_tracked counted."""
    spatial = (2, 2) if isinstance(norm, nn.BatchNorm2d) else ()

    def f(z):
        h = (z * 2 + 1).view(len(z), 3, *([1] * len(spatial))).expand(len(z), 3, *spatial)
        return torch.tanh(norm(h * z.view(h.shape[:2] + (1,) * len(spatial)))).flatten(1).sum(1)

    norm.double().train()
    x, v = rand(4, 3, seed=1), rand(4, 3, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", taylor.CoupledSamplesWarning)
        for _ in range(2):
            taylor_d(f, x, v, 2)
    taylor_state = {name: t.clone() for name, t in norm.state_dict().items()}
    norm.reset_running_stats()
    with torch.no_grad():
        f(x), f(x)
    for name, t in norm.state_dict().items():
        assert_agree(taylor_state[name].double(), t.double(), rtol=1e-14)
    assert int(norm.num_batches_tracked) == 2 and not torch.equal(norm.running_var, torch.ones(3, dtype=F64))


def test_ssmvr_by_taylor_mode_on_an_image_shaped_score_matches_reverse():
    from fdsm.objectives import ssmvr_score_loss

    model = family("ncsn", ngf=2, image_size=8, n_levels=3)
    x, v = uniform(2, 3, 8, 8, seed=1), rand(2, 3, 8, 8, seed=2)
    sigma = float(model.sigmas[1])
    losses = [ssmvr_score_loss(lambda z: model.score(z, sigma), x, v=v, method=m) for m in ("taylor", "reverse")]
    torch.testing.assert_close(*losses, rtol=1e-9, atol=0)


def test_ncsn_score_at_a_float_sigma_is_traced_without_a_branch():
    model = family("ncsn", ngf=2, image_size=8, n_levels=3)
    x, v = uniform(2, 3, 8, 8, seed=1), rand(2, 3, 8, 8, seed=2)
    sigma = float(model.sigmas[1])
    f = lambda z: model.score(z, sigma).flatten(1)  # noqa: E731
    g = lambda z: model(z, torch.tensor([1, 1])).flatten(1)  # noqa: E731
    assert_agree(taylor_d(f, x, v, 1), reverse_d(g, x, v, 1), rtol=1e-9)
    with pytest.raises(ValueError, match="sigma=0.5 is not a noise level"):
        model.score(x, 0.5)
    for nan in (math.nan, torch.tensor([math.nan, sigma])):  # was level 0
        with pytest.raises(ValueError, match="sigma=nan is not a noise level"):
            model.score(x, nan)
    with pytest.raises(TypeError, match="expected sigma to be a number or a tensor, got True"):
        model.score(x, True)


def test_ncsn_with_new_labels_uses_them():
    model = family("ncsn", ngf=2, image_size=8, n_levels=3)
    x, v = uniform(2, 3, 8, 8, seed=1), rand(2, 3, 8, 8, seed=2)
    labels = torch.tensor([0, 2])
    f = lambda z: model(z, labels).flatten(1)  # noqa: E731
    first = taylor_d(f, x, v, 1)
    traces = STATS.traces
    labels = torch.tensor([1, 1])
    second = taylor_d(f, x, v, 1)
    assert STATS.traces == traces
    assert not torch.allclose(first, second)
    assert_agree(second, reverse_d(f, x, v, 1), rtol=1e-9)  # T = 1: nested autograd is right through the norm


_GLOBAL_W = rand(4, seed=3)
_GLOBAL_ACTIVATION = torch.tanh


def _uses_global_w(z):
    return (torch.tanh(z) * _GLOBAL_W).sum(1)


def _uses_global_activation(z):
    return _GLOBAL_ACTIVATION(z).sum(1)


def test_a_rebound_global_tensor_is_used(monkeypatch):
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    taylor_d(_uses_global_w, x, v, 2)
    monkeypatch.setitem(globals(), "_GLOBAL_W", rand(4, seed=4))
    assert_agree(taylor_d(_uses_global_w, x, v, 2), reverse_d(_uses_global_w, x, v, 2), rtol=1e-10)


def test_a_rebound_global_function_is_used(monkeypatch):
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    taylor_d(_uses_global_activation, x, v, 2)
    monkeypatch.setitem(globals(), "_GLOBAL_ACTIVATION", torch.sin)
    assert_agree(taylor_d(_uses_global_activation, x, v, 2), reverse_d(_uses_global_activation, x, v, 2),
                 rtol=1e-10)


# ---- 8. launch counts -------------------------------------------------------------------------------------------

# Aten calls (everything TorchDispatchMode sees: compute ops and views alike) of one call of each rule on a float64
# Jet of shape (T+1, 4, 8), after a warm-up call (the exact coefficient tables are cached per order and dtype).
LAUNCHES = {
    "softplus": {2: 19, 6: 75},
    "tanh": {2: 19, 6: 75},
    "sigmoid": {2: 20, 6: 76},
    "exp": {2: 18, 6: 66},
    "elu": {2: 25, 6: 69},
    "silu": {2: 23, 6: 83},
}
LAUNCH_OPS = {"softplus": aten.softplus.default, "tanh": aten.tanh.default, "sigmoid": aten.sigmoid.default,
              "exp": aten.exp.default, "elu": aten.elu.default, "silu": aten.silu.default}


class CountAtenCalls(TorchDispatchMode):
    """The aten calls within it: how many of each op (``calls``), and the shapes of their tensor results
    (``shapes``)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()
        self.shapes = defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] += 1
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.shapes[str(func)].append(tuple(out.shape))
        return out


def aten_calls(name, order):
    u = rand(order + 1, 4, 8, seed=order)
    rule = rule_for(LAUNCH_OPS[name])
    rule(Jet(u))  # warm-up: builds the cached tables
    with CountAtenCalls() as counter:
        rule(Jet(u))
    return counter.calls


@pytest.mark.parametrize("name", LAUNCHES)
def test_launch_counts_are_the_recorded_ones(name):
    assert {order: sum(aten_calls(name, order).values()) for order in (2, 6)} == LAUNCHES[name]


# ---- 9. float64_reference ----------------------------------------------------------------------------------------


def test_float64_reference_is_exact_taylor_by_default_and_agrees_with_exact_reverse_in_chunks():
    model = family("deep-ebm", dtype=torch.float32, n_chan=2)
    x, v = uniform(3, 1, 32, 32, seed=1, dtype=torch.float32), rand(3, 1, 32, 32, seed=2, dtype=torch.float32)
    taylor.clear_cache()
    traces = taylor.STATS.traces
    ref = float64_reference(model, x, v, 3)
    assert taylor.STATS.traces == traces + 1  # the default traced f: Taylor mode
    assert ref.dtype == F64 and not ref.requires_grad and ref.shape == (3,)
    assert_agree(ref, float64_reference(model, x, v, 3, method="exact-reverse", chunk=2), rtol=1e-9)
    traces = taylor.STATS.traces
    assert_agree(float64_reference(model, x, v, 3, chunk=1), ref, rtol=1e-12)  # one copy: one trace for all chunks
    assert taylor.STATS.traces == traces + 1  # a new shape, (1, ...), traced once for the three chunks
    with pytest.raises(ValueError, match="expected chunk to be an int >= 1"):
        float64_reference(model, x, v, 3, chunk=0)


# ---- 10. edge cases ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 3])
def test_a_batch_of_one(order):
    f, x = case("deep-ebm-nsoftplus")
    x, v = x[:1], rand(1, *x.shape[1:], seed=2)
    d = taylor_d(f, x, v, order)
    assert d.shape == (1,)
    assert_agree(d, reverse_d(f, x, v, order), rtol=1e-9)


def test_a_vector_valued_output():
    m = rand(4, 3, seed=5)
    f = lambda z: torch.stack([torch.tanh(z).sum(1), (F.softplus(z @ m) ** 2).sum(1)], dim=1)  # noqa: E731  (B, 2)
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    for order in range(1, 7):
        d = taylor_d(f, x, v, order)
        assert d.shape == (3, 2)
        assert_agree(d, reverse_d(f, x, v, order), rtol=1e-10)


def test_an_f_that_does_not_depend_on_x():
    c = torch.tensor(2.5, dtype=F64)
    f = lambda z: c.expand(z.shape[0])  # noqa: E731
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    d = taylor_coefficients(f, x, v, 3)
    assert torch.equal(d, torch.tensor([[2.5] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3], dtype=F64))
    assert torch.equal(taylor_d(f, x, v, 2), torch.zeros(3, dtype=F64))


def test_a_channels_last_model_and_input():
    model = family("deep-ebm", n_chan=2).to(memory_format=torch.channels_last)
    x = rand(2, 1, 32, 32, seed=1).to(memory_format=torch.channels_last)
    v = rand(2, 1, 32, 32, seed=2).to(memory_format=torch.channels_last)
    for order in (1, 3):
        assert_agree(taylor_d(model, x, v, order), reverse_d(model, x, v, order), rtol=1e-9)


def test_exact_taylor_is_the_registered_method():
    assert METHODS.get("exact-taylor") is taylor.exact_taylor


# ---- 11. the rules for users' ops at their edges: primals of piecewise-linear ops, NaNs, repeats, dtypes ------

EDGE_X, EDGE_V = rand(3, 4, 5, seed=1), rand(3, 4, 5, seed=2)
EDGE_W = torch.cos(1.7 * torch.arange(40, dtype=F64) + 0.3)


def edge_weighted(op):
    return lambda z: (lambda y: y @ EDGE_W[:y.shape[1]])(op(z).reshape(len(z), -1))


EDGE_NANS = EDGE_X.clone()
EDGE_NANS[0, 1, 2] = EDGE_NANS[1, :, 0] = float("nan")
EDGE_REPEATED = torch.round(EDGE_X * 2) / 2  # values repeated along each row: mode picks among repeats
EDGE_ZEROS = EDGE_X.clone()
EDGE_ZEROS[:, 0] = 0.0  # copysign's a_0 = 0: autograd's derivative there is 0
EDGE_CN = rand(3, 4, 5, seed=4)
EDGE_CN[:, 1] = float("nan")  # a constant with NaNs, for fmax / fmin


# name -> (op, x): against exact-reverse at order 1 (where the primal of a piecewise-linear op enters) and 2
EDGE_CASES = {
    "fmod-remainder-by-a-number": (lambda z: (torch.fmod(5 * z, 1.3) + torch.remainder(5 * z, 0.7)) * z, EDGE_X),
    "fmod-by-a-jet": (lambda z: torch.fmod(5 * z, z ** 2 + 0.5) * z, EDGE_X),  # q = trunc(a_0 / b_0) enters D^1
    "copysign-at-zero": (lambda z: torch.copysign(z, z - 0.2) * (z + 1), EDGE_ZEROS),
    "nanmedian-with-nans": (lambda z: z.nanmedian(-1).values[:, 1:] ** 2, EDGE_NANS),
    "nanmedian-of-all-with-nans": (lambda z: torch.stack([s.nanmedian() for s in z]) ** 2, EDGE_NANS),
    "fmax-fmin-with-nans": (lambda z: torch.fmax(z, EDGE_CN) * z + torch.fmin(EDGE_CN, z ** 2)
                            + torch.fmax(EDGE_CN, z), EDGE_X),
    "mode-of-repeated-values": (lambda z: z.mode(-1).values * z[..., 0] + z.mode(1, keepdim=True).values.sum(-1),
                                EDGE_REPEATED),
}


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_of_the_rules_for_users_ops_match_exact_reverse(name, order):
    if name == "copysign-at-zero" and order == 2:
        pytest.skip("nested autograd's copysign is NaN at a_0 = 0 from order 2")
    op, x = EDGE_CASES[name]
    f = edge_weighted(op)
    assert_agree(taylor_d(f, x, EDGE_V, order), reverse_d(f, x, EDGE_V, order), rtol=1e-10)


def test_the_primal_of_fmod_by_a_python_number_is_the_op_s():
    """A Python number is taken in x's dtype, not rounded to float32 first (the primal was 7e-8 off)."""
    f = lambda z: torch.fmod(3 * z, 0.7) + torch.remainder(0.7, z.abs() + 0.3)  # noqa: E731
    c = taylor_coefficients(f, EDGE_X[:, 0], EDGE_V[:, 0], 1)
    torch.testing.assert_close(c[0], f(EDGE_X[:, 0]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("p", [1.0, 3.0, float("inf")])
def test_pdist_with_p_matches_its_written_out_form(p):
    upper = torch.triu_indices(4, 4, 1)
    op = lambda z: torch.stack([torch.nn.functional.pdist(s, p=p) for s in z])  # noqa: E731
    written = lambda z: torch.stack([torch.linalg.vector_norm(s[upper[0]] - s[upper[1]], p, -1) for s in z])  # noqa: E731
    assert_agree(taylor_d(edge_weighted(op), EDGE_X, EDGE_V, 2), reverse_d(edge_weighted(written), EDGE_X, EDGE_V, 2),
                 rtol=1e-10)


def test_the_default_validate_args_is_restored_when_the_trace_raises(monkeypatch):
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", True)

    def branches(z):
        torch.distributions.Normal(z, 1.0).log_prob(z)
        return z.sum(1) if z.sum() > 0 else -z.sum(1)

    with pytest.raises(NotSupported):
        taylor_d(branches, EDGE_X[:, 0], EDGE_V[:, 0], 1)
    assert torch.distributions.Distribution._validate_args is True


@pytest.mark.parametrize("x0", [0.0, 1e-5, 1e-3, 0.06, 0.1, 0.3, 0.49, 0.51, 2.5])  # the branch boundary is 0.5
def test_sinc_near_zero_matches_its_maclaurin_series(x0):
    x, v = torch.full((1, 1), x0, dtype=F64), torch.ones(1, 1, dtype=F64)
    for order in (2, 4, 6):
        # sinc^(m)(x0) = sum_{n >= m} a_n n!/(n-m)! x0^(n-m), a_{2j} = (-pi^2)^j / (2j+1)!
        truth = sum((-math.pi ** 2) ** (n // 2) / math.factorial(n + 1) * math.factorial(n)
                    / math.factorial(n - order) * x0 ** (n - order) for n in range(order, order + 80, 2))
        got = taylor_d(lambda z: torch.sinc(z).sum(1), x, v, order).item()
        assert abs(got - truth) <= 1e-10 * abs(truth), (order, got, truth)


@pytest.mark.parametrize("p, q", [(0.0, 2.0), (0.0, 0.5)])
def test_xlogy_along_its_first_argument_at_zero_matches_exact_reverse(p, q):
    x, v = torch.tensor([[p, 1.0]], dtype=F64), torch.tensor([[1.0, 0.5]], dtype=F64)
    for fn in (lambda z: torch.xlogy(z[:, 0], torch.tensor(q, dtype=F64)),
               lambda z: torch.special.xlog1py(z[:, 0], torch.tensor(q, dtype=F64)),
               lambda z: torch.xlogy(z[:, 0], z[:, 1] + q)):
        for order in (1, 2):
            assert_agree(taylor_d(fn, x, v, order), reverse_d(fn, x, v, order), rtol=1e-10)


def test_cdist_of_more_than_25_rows_runs():
    x, v = rand(2, 30, 3, seed=3), rand(2, 30, 3, seed=4)
    op = lambda z: torch.cdist(z, z[:, :5] + 1).flatten(1).sum(1)  # noqa: E731
    written = lambda z: (z[:, :, None] - z[:, None, :5] - 1).pow(2).sum(-1).sqrt().flatten(1).sum(1)  # noqa: E731
    assert_agree(taylor_d(op, x, v, 2), reverse_d(written, x, v, 2), rtol=1e-10)


def test_prod_and_cumprod_to_an_integer_dtype_are_constants():
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    for op in (lambda z: (z * 10).prod(1, dtype=torch.int64), lambda z: (z * 10).cumprod(1, dtype=torch.int64).sum(1)):
        got = taylor_d(lambda z, op=op: op(z).to(F64) * z.sum(1), x, v, 1)
        torch.testing.assert_close(got, op(x).to(F64) * v.sum(1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("fn", [lambda z: torch.xlogy(z, 3.0), lambda z: torch.special.xlog1py(z, 2.0),
                                lambda z: torch.special.xlogy(z, 0.5)])
def test_xlogy_by_a_python_number_along_x_at_zero_matches_exact_reverse(fn):
    x, v = torch.tensor([[0.0, 1.0]], dtype=F64), torch.tensor([[1.0, 0.5]], dtype=F64)
    for order in (1, 2):
        assert_agree(taylor_d(fn, x, v, order), reverse_d(fn, x, v, order), rtol=1e-10)


def test_logcumsumexp_of_a_0d_slice_is_the_identity():
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    f = lambda z: torch.stack([torch.logcumsumexp(s[1] ** 2, 0) for s in z])[:, None]  # noqa: E731
    assert_agree(taylor_d(f, x, v, 3), reverse_d(lambda z: z[:, 1:2] ** 2, x, v, 3), rtol=1e-12)


def test_xlogy_at_x_zero_keeps_torch_s_values():
    """x = 0: 0 for y = 0, inf, a negative y (log(y) not finite there), NaN for a NaN y; D^0 is torch's own."""
    y = torch.tensor([0.0, math.inf, -1.0, math.nan, 2.0], dtype=F64)
    x, v = torch.zeros(1, 5, dtype=F64), torch.ones(1, 5, dtype=F64)
    for op in (torch.xlogy, torch.special.xlog1py):
        d = taylor_coefficients(lambda z, op=op: op(z, y), x, v, 1)
        torch.testing.assert_close(d[0], op(x, y), rtol=0, atol=0, equal_nan=True)


def test_a_float32_jet_with_a_float64_constant_keeps_float32_and_prod_takes_its_dtype():
    """A 0-d float64 constant does not promote a float32 tensor in torch, nor in the binary rules; prod(dtype=) casts
    before it multiplies, as the op."""
    x, v = rand(3, 4, seed=1, dtype=torch.float32), rand(3, 4, seed=2, dtype=torch.float32)
    half = torch.tensor(0.5, dtype=F64)
    for op in (torch.atan2, torch.hypot, torch.fmod, torch.fmax, torch.maximum):
        d = taylor_coefficients(lambda z, op=op: op(z, half).sum(1), x, v, 2)
        assert d.dtype == torch.float32, op
    d = taylor_coefficients(lambda z: z.prod(1, dtype=F64), x, v, 2)
    assert d.dtype == F64
    assert_agree(d[2], reverse_d(lambda z: z.prod(1), x.double(), v.double(), 2), rtol=1e-14)


@dataclass
class Settings:
    scale: float = 2.0


SETTINGS = Settings()


def test_a_global_dataclass_instance_is_read_and_its_changes_are_used():
    """A dataclass instance is unhashable (its eq): the trace cache keyed it by a weak reference, which hashes as its
    object (TypeError); it is keyed by identity, and its fields by value."""
    f = lambda z: (SETTINGS.scale * z ** 2).sum(1)  # noqa: E731
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    try:
        assert_agree(taylor_d(f, x, v, 2), 4 * (v ** 2).sum(1), rtol=1e-14)
        SETTINGS.scale = 3.0
        assert_agree(taylor_d(f, x, v, 2), 6 * (v ** 2).sum(1), rtol=1e-14)
    finally:
        SETTINGS.scale = 2.0
