"""Directional derivatives against closed forms (float64), FD orders of convergence, gradients, and bad input.

Each closed form is the T-th derivative of t -> f(x + t v) at t = 0, written out by hand:
- polynomial  f = sum_j c_j (a_j.x)^m_j          D^T f = sum_j c_j m_j!/(m_j - T)! (a_j.x)^(m_j - T) (a_j.v)^T
- trig        f = sin(a.x + b)                    D^T f = (a.v)^T sin(a.x + b + T pi/2)
- softplus    f = sum_h w_h softplus(u_h.x + b_h) D^T f = sum_h w_h softplus^(T)(u_h.x + b_h) (u_h.v)^T,
              with softplus' = sigmoid and sigmoid^(n+1) = P_n'(s) s (1 - s) for sigmoid^(n) = P_n(s).
"""

import math

import numpy as np
import pytest
import torch

from fdsm import METHODS, Stencil, central_stencil, directional_derivative, float64_reference, stencil, streams_backend
from fdsm.registry import Registry

F64 = torch.float64
ORDERS = range(1, 7)
EXACT = ["exact-reverse", "exact-forward"]
FD = [m for m in METHODS.names(enabled_only=True) if m.startswith("fd-")]
EVENT = (3, 2)  # a 2-D event shape, so that flattening is exercised
D = math.prod(EVENT)


def rand(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def dot(a, x):  # a: (D,), x: (B, *EVENT) -> (B,)
    return x.flatten(1) @ a


class Polynomial:
    def __init__(self, seed):
        self.terms = [(0.7, rand(D, seed=seed), 7), (-1.3, rand(D, seed=seed + 1), 5), (0.4, rand(D, seed=seed + 2), 2)]

    def __call__(self, x):
        return sum(c * dot(a, x) ** m for c, a, m in self.terms)

    def derivative(self, x, v, T):
        # math.perm(m, T) = m!/(m-T)!, and 0 once T > m.
        return sum(c * math.perm(m, T) * dot(a, x) ** max(m - T, 0) * dot(a, v) ** T for c, a, m in self.terms)


class Trig:
    def __init__(self, seed):
        self.a, self.b = rand(D, seed=seed, scale=0.8), 0.3

    def __call__(self, x):
        return torch.sin(dot(self.a, x) + self.b)

    def derivative(self, x, v, T):
        return dot(self.a, v) ** T * torch.sin(dot(self.a, x) + self.b + T * math.pi / 2)


def sigmoid_derivative_polys(n_max):
    """P_n with sigmoid^(n) = P_n(sigmoid), as numpy polynomials: P_0(s) = s, P_{n+1} = P_n' * s(1 - s)."""
    s_one_minus_s = np.polynomial.Polynomial([0.0, 1.0, -1.0])
    polys = [np.polynomial.Polynomial([0.0, 1.0])]
    for _ in range(n_max):
        polys.append(polys[-1].deriv() * s_one_minus_s)
    return polys


class SoftplusNet:
    H = 5

    def __init__(self, seed):
        self.u = rand(self.H, D, seed=seed, scale=0.6)
        self.b, self.w = rand(self.H, seed=seed + 1), rand(self.H, seed=seed + 2)
        self.polys = sigmoid_derivative_polys(7)

    def __call__(self, x):
        return torch.nn.functional.softplus(x.flatten(1) @ self.u.T + self.b) @ self.w

    def derivative(self, x, v, T):
        s = torch.sigmoid(x.flatten(1) @ self.u.T + self.b).numpy()  # (B, H)
        softplus_T = torch.from_numpy(self.polys[T - 1](s))  # softplus^(T) = sigmoid^(T-1)
        return (softplus_T * (v.flatten(1) @ self.u.T) ** T) @ self.w


class Vector:
    """Two scalar functions stacked: (B,) and (B,) -> (B, 2)."""

    def __init__(self, first, second):
        self.parts = (first, second)

    def __call__(self, x):
        return torch.stack([p(x) for p in self.parts], dim=1)

    def derivative(self, x, v, T):
        return torch.stack([p.derivative(x, v, T) for p in self.parts], dim=1)


FUNCTIONS = {
    "polynomial": lambda: Polynomial(seed=1),
    "trig": lambda: Trig(seed=2),
    "softplus-net": lambda: SoftplusNet(seed=3),
    "vector": lambda: Vector(Trig(seed=4), SoftplusNet(seed=5)),
}


def points(step, batch=4):
    """x, and a direction v of norm `step` per sample."""
    x = rand(batch, *EVENT, seed=10, scale=0.5)
    v = rand(batch, *EVENT, seed=11)
    v = step * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
    return x, v


def rel_error(d, ref):
    return ((d - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("method", EXACT)
def test_exact_methods_match_closed_forms(method, function, order):
    f = FUNCTIONS[function]()
    x, v = points(step=1.0)
    d = directional_derivative(f, x, v, order, method=method)
    ref = f.derivative(x, v, order)
    assert d.shape == ref.shape == f(x).shape
    assert rel_error(d, ref) < 1e-9


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("method", FD)
def test_fd_methods_match_closed_forms_at_small_step(method, function, order):
    """Accuracy-4 stencils at |v| = 0.1: truncation ~ 1e-4 relative, roundoff far below in float64."""
    f = FUNCTIONS[function]()
    x, v = points(step=0.1)
    d = directional_derivative(f, x, v, order, method=method, stencil=central_stencil(order, accuracy=4))
    assert d.shape == f(x).shape
    assert rel_error(d, f.derivative(x, v, order)) < 1e-3


@pytest.mark.parametrize("accuracy", [2, 4])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("method", FD)
def test_fd_order_of_convergence(method, order, accuracy):
    """The error falls as |v|^p: the slope of log error against log step, over steps where truncation dominates."""
    f = FUNCTIONS["trig"]()
    steps = [0.4, 0.2, 0.1]
    errors = []
    for h in steps:
        x, v = points(step=h)
        d = directional_derivative(f, x, v, order, method=method, stencil=central_stencil(order, accuracy))
        errors.append(rel_error(d, f.derivative(x, v, order)))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert accuracy - 0.25 < slope < accuracy + 0.5, f"errors {errors}"


def test_one_sided_stencil_converges_at_its_own_order():
    f = FUNCTIONS["softplus-net"]()
    s = stencil(2, [0, 1, 2, 3])  # accuracy 2, one-sided
    errors = [rel_error(directional_derivative(f, *points(h), 2, stencil=s), f.derivative(*points(h), 2))
              for h in (0.2, 0.1, 0.05)]
    slope = np.polyfit(np.log([0.2, 0.1, 0.05]), np.log(errors), 1)[0]
    assert s.accuracy == 2 and 1.75 < slope < 2.5


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("method", FD)
def test_fd_float32_within_one_percent_at_step_0_1(method, order):
    """Float32 at |v| = 0.1 (the paper's eps): truncation ~ 1e-3, roundoff ~ u |f| / |D^T f| ~ 1e-4."""
    f = FUNCTIONS["softplus-net"]()
    x, v = points(step=0.1)
    d = directional_derivative(lambda z: f(z.double()).float(), x.float(), v.float(), order, method=method)
    assert d.dtype == torch.float32
    assert rel_error(d.double(), f.derivative(x, v, order)) < 0.01


def softplus_module():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(D, 16), torch.nn.Softplus(),
                               torch.nn.Linear(16, 8), torch.nn.Softplus(), torch.nn.Linear(8, 1),
                               torch.nn.Flatten(0)).double()


def cosine(a, b):  # torch's cosine_similarity clamps norms at 1e-8, and these gradients are ~|v|^(2T)
    return (a @ b / (a.norm() * b.norm())).item()


def parameter_gradient(module, method, x, v, order):
    d = directional_derivative(module, x, v, order, method=method)
    grads = torch.autograd.grad((d**2).sum(), list(module.parameters()), materialize_grads=True)
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("method", EXACT[1:] + FD)
def test_parameter_gradients_agree_with_exact_reverse(method, order):
    module = softplus_module()
    x, v = points(step=1e-2)
    exact = parameter_gradient(module, "exact-reverse", x, v, order)
    other = parameter_gradient(module, method, x, v, order)
    assert cosine(exact, other) > 0.999


@pytest.mark.parametrize("function", ["softplus-net", "vector"])
def test_fd_streams_equals_fd_batched(function):
    f = FUNCTIONS[function]()
    x, v = points(step=0.3)
    for order in ORDERS:
        torch.testing.assert_close(directional_derivative(f, x, v, order, method="fd-streams"),
                                   directional_derivative(f, x, v, order, method="fd-batched"), rtol=1e-9, atol=1e-12)
    assert streams_backend(x.device) == "cpu-threads"


def test_fd_streams_keeps_the_callers_grad_mode():
    module = softplus_module()
    x, v = points(step=0.1)
    with torch.no_grad():
        assert not directional_derivative(module, x, v, 2, method="fd-streams").requires_grad
    assert directional_derivative(module, x, v, 2, method="fd-streams").requires_grad


def test_float64_reference_uses_a_float64_copy():
    module = softplus_module().float()
    x, v = points(step=0.5)
    ref = float64_reference(module, x.float(), v.float(), 3)
    assert ref.dtype == F64 and not ref.requires_grad
    assert next(module.parameters()).dtype == torch.float32  # the model itself is untouched
    x, v = x.float().double(), v.float().double()  # the reference is taken at the float32 point itself
    expected = directional_derivative(module.double(), x, v, 3, method="exact-forward")
    torch.testing.assert_close(ref, expected.detach(), rtol=1e-12, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fd_streams_on_cuda_equals_fd_batched_and_backpropagates():
    module = softplus_module().cuda()
    x, v = (t.cuda() for t in points(step=0.1, batch=64))
    streams = directional_derivative(module, x, v, 4, method="fd-streams")
    torch.testing.assert_close(streams, directional_derivative(module, x, v, 4, method="fd-batched"))
    streams.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in module.parameters())
    assert streams_backend(x.device) == "cuda-streams"


def ok_f(x):
    return x.flatten(1).sum(1)


X, V = points(step=0.1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(order=0), ValueError, "expected order >= 1, got 0"),
        (dict(order=2.0), TypeError, "expected order to be an int"),
        (dict(order=True), TypeError, "expected order to be an int"),
        (dict(v=V[:, :2]), ValueError, "expected v of the same shape as x"),
        (dict(v=V.float()), ValueError, "dtype and device"),
        (dict(x=X.numpy()), TypeError, "expected x to be a Tensor"),
        (dict(x=torch.ones(4, 3, 2, dtype=torch.long)), TypeError, "floating point"),
        (dict(f="not callable"), TypeError, "expected f to be callable"),
        (dict(method="fd-magic"), ValueError, "unknown method 'fd-magic'; expected one of"),
        (dict(stencil=central_stencil(3)), ValueError, "expected a stencil of order 2, got one of order 3"),
        (dict(stencil=(1.0, -2.0, 1.0)), TypeError, "expected stencil to be a fdsm.Stencil"),
        (dict(method="exact-reverse", stencil=central_stencil(2)), ValueError, "takes no stencil"),
        (dict(f=lambda x: ok_f(x)[:-1]), ValueError, "expected f to map a batch of"),
        (dict(f=lambda x: x), ValueError, "expected f to map a batch of"),
        (dict(f=lambda x: ok_f(x).sum()), ValueError, "expected f to map a batch of"),
        (dict(f=lambda x: [ok_f(x)]), TypeError, "expected f to return a Tensor"),
        (dict(f=lambda x: (1000 * ok_f(x)).long()), TypeError, "expected f to return a floating-point tensor"),
        (dict(x=X[:0], v=V[:0]), ValueError, r"with B >= 1, got shape \(0, 3, 2\)"),
    ],
)
@pytest.mark.parametrize("method", ["exact-reverse", "exact-forward", "exact-taylor", "fd-serial", "fd-batched",
                                    "fd-streams"])
def test_bad_input_gets_a_clear_error(kwargs, error, match, method):
    call = dict(f=ok_f, x=X, v=V, order=2, method=method) | kwargs
    with pytest.raises(error, match=match):
        directional_derivative(call.pop("f"), call.pop("x"), call.pop("v"), call.pop("order"), **call)


@pytest.mark.parametrize("method", ["exact-reverse", "exact-forward", "exact-taylor", "fd-serial", "fd-batched",
                                    "fd-streams"])
def test_a_numpy_integer_order_is_an_order(method):
    """``for T in np.arange(1, 4)``: NumPy's integers are integers (a bool, NumPy's or Python's, is not)."""
    f = lambda x: torch.sin(x).flatten(1).sum(1)  # noqa: E731
    for order in np.arange(1, 4):
        torch.testing.assert_close(directional_derivative(f, X, V, order, method=method),
                                   directional_derivative(f, X, V, int(order), method=method), rtol=0, atol=0)
    with pytest.raises(TypeError, match="expected order to be an int"):
        directional_derivative(f, X, V, np.bool_(True), method=method)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("method", ["exact-reverse", "exact-forward", "exact-taylor", "fd-serial", "fd-batched",
                                    "fd-streams"])
def test_every_method_returns_fs_dtype_when_f_computes_in_another_than_x(method, order):
    """f of float64 x that computes in float32 (a float32 network behind a cast): D^T in f's own dtype, float32, by
    every method. Nested reverse mode's gradients are in x's dtype; it used to return float64 where the others
    return float32."""
    f = lambda x: torch.sin(x.float()).flatten(1).sum(1) ** 2  # noqa: E731
    d = directional_derivative(f, X, V, order, method=method)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, directional_derivative(f, X.float(), V.float(), order, method=method),
                               rtol=1e-3 if method.startswith("fd-") else 1e-5, atol=1e-5)  # as from float32 x


@pytest.mark.parametrize("offsets, weights, accuracy, match", [
    ((-1.0, 0.0, 1.0), (1.0, 1.0, 1.0), 2, r"not a difference of order 2 and accuracy 2: sum_i w_i offset_i\^0 = 3"),
    ((-1.0, 0.0, 1.0), (1.0, -2.0, 1.0), 4, r"offset_i\^4 = 2, expected 0"),  # claims more accuracy than it has
    ((), (), 2, "as many weights as offsets"),
    ((-1.0, 0.0, 1.0), (1.0, -2.0), 2, "got 2 weights for 3 offsets"),
    ((-1.0, 0.0, 1.0), (1.0, -2.0, math.nan), 2, "finite"),
    ((-1.0, 0.0, 1.0), (1.0, -2.0, 1.0), 0, "accuracy that is an int >= 1"),
    ((-1.0, 0.0, 1.0), (1.0, -2.0, 1.0), 2.0, "accuracy that is an int >= 1"),  # even once 2 was checked
])
def test_a_hand_built_stencil_is_checked_against_its_moment_conditions(offsets, weights, accuracy, match):
    with pytest.raises(ValueError, match=match):
        directional_derivative(ok_f, X, V, 2, stencil=Stencil(2, offsets, weights, accuracy))
    with pytest.raises(TypeError, match="offsets and weights to be tuples of numbers, got list and list"):
        directional_derivative(ok_f, X, V, 2, stencil=Stencil(2, [-1.0, 0.0, 1.0], [1.0, -2.0, 1.0], 2))
    good = Stencil(2, (-1.0, 0.0, 1.0), (1.0, -2.0, 1.0), 2)  # central_stencil(2), built by hand
    assert directional_derivative(ok_f, X, V, 2, stencil=good).equal(directional_derivative(ok_f, X, V, 2))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(v=V.long()), TypeError, "expected v to be floating point"),  # was cast to float64: a zero reference
    (dict(chunk=1.5), ValueError, "expected chunk to be an int >= 1 or None, got 1.5"),
    (dict(chunk=True), ValueError, "expected chunk to be an int >= 1 or None, got True"),
    (dict(model=ok_f), TypeError, "expected model to be a torch.nn.Module"),
    (dict(order=0), ValueError, "expected order >= 1"),
])
def test_float64_reference_checks_its_inputs_before_the_cast(kwargs, error, match):
    call = dict(model=torch.nn.Flatten(0), x=X[:, :1, 0], v=V[:, :1, 0], order=2) | kwargs
    with pytest.raises(error, match=match):
        float64_reference(call.pop("model"), call.pop("x"), call.pop("v"), call.pop("order"), **call)


def test_a_disabled_entry_says_why_and_an_unknown_one_lists_the_names():
    methods = Registry("method")
    methods.register("fd-batched", object())
    methods.register("fd-fused", object(), enabled=False, reason="Triton is not importable; use 'fd-batched'")
    assert methods.names(enabled_only=True) == ["fd-batched"]
    with pytest.raises(RuntimeError, match="method 'fd-fused' is not available here: Triton is not importable"):
        methods.get("fd-fused")
    with pytest.raises(ValueError, match=r"unknown method 'fd-magic'; expected one of \['fd-batched', 'fd-fused'\]"):
        methods.get("fd-magic")
    with pytest.raises(ValueError, match="already registered"):
        methods.register("fd-batched", object())


def test_a_batched_fd_method_says_its_wrong_shaped_call_was_the_stacked_stencil_points():
    with pytest.raises(ValueError, match=r"a batch of 12 \(the 3 stencil points of the batch of 4, stacked"):
        directional_derivative(lambda x: ok_f(x).sum(), X, V, 2, method="fd-batched")


@pytest.mark.parametrize("method", ["exact-reverse", "exact-forward", "fd-serial", "fd-batched", "fd-streams"])
def test_a_batch_of_scalars_x_of_shape_b_works_with_every_method(method):
    x = torch.linspace(-1.0, 1.0, 5, dtype=F64)
    v = torch.full_like(x, 0.1)
    d = directional_derivative(lambda z: z**3, x, v, 2, method=method)  # d^2/dt^2 (x + t v)^3 = 6 x v^2
    torch.testing.assert_close(d, 6 * x * v**2, rtol=1e-8, atol=1e-12)
