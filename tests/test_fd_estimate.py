"""The automatic FD step, Richardson extrapolation and the FD error estimate (fdsm.fd_estimate), against closed forms.

The functions are the softplus networks of tests/test_derivatives.py, f(x) = sum_h w_h softplus(a_h.x + b_h), whose
T-th derivative along u is sum_h w_h softplus^(T)(a_h.x + b_h) (a_h.u)^T (softplus^(T) = sigmoid^(T-1), by
``sigmoid_derivative_polys``), evaluated in float64 at the very points the float32 call sees; the scalar functions of
the numdifftools comparison have their derivatives written out. Tolerances:
- the step: within 4x of the step that minimizes the batch's median true error over a grid of quarter octaves;
- the estimate: its batch median within 3x either way of the true median, and at least 70% of the samples with a
  true error under 3x their estimate. Per sample it is weaker: a sample's roundoff is one draw of a random sum, and
  where f cancels (|f| well under its terms) its roundoff exceeds the u |f| model many times over; the per-sample
  calibration (NOTE [reading the probe ladder]) catches that only where the sample has roundoff pairs of its own.
  Measured here: 75-97% of the samples per case;
- Richardson: the slope of log error against log step within -0.25/+0.5 of p + 2, over steps where truncation rules.
"""

import math
import warnings

import numdifftools as nd
import numpy as np
import pytest
import torch

from fdsm import central_stencil, directional_derivative, stencil
from fdsm.fd_error import FDAccuracyWarning, default_accuracy, fd_estimate, richardson_stencil
from tests.test_derivatives import FUNCTIONS, points, rel_error, sigmoid_derivative_polys

F64 = torch.float64
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one intra-op thread, so that a busy second core cannot stall every matmul (with
    2 threads on a loaded 2-core machine this file took 50 s instead of 4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rand(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


class SoftplusNet:
    """12 softplus units on 6 inputs; evaluates in the dtype of its input, differentiates exactly in float64."""

    def __init__(self, seed, hidden=12, dim=6):
        self.a, self.b = rand(hidden, dim, seed=seed, scale=0.6), rand(hidden, seed=seed + 1)
        self.w = rand(hidden, seed=seed + 2)
        self.polys = sigmoid_derivative_polys(8)

    def __call__(self, x):  # (B, 6) -> (B,)
        return torch.nn.functional.softplus(x @ self.a.T.to(x.dtype) + self.b.to(x.dtype)) @ self.w.to(x.dtype)

    def derivative(self, x, u, order):  # along u, exactly, at the float64 values of x and u
        x, u = x.double(), u.double()
        s = torch.sigmoid(x @ self.a.T + self.b).numpy()
        return (torch.from_numpy(self.polys[order - 1](s)) * (u @ self.a.T) ** order) @ self.w


NET = SoftplusNet(seed=3)


def batch(dtype, size=32):
    """x: (B, 6), and unit directions u: (B, 6), in ``dtype``."""
    x, u = rand(size, 6, seed=10, scale=0.7), rand(size, 6, seed=11)
    return x.to(dtype), (u / u.norm(dim=1, keepdim=True)).to(dtype)


def true_error(d, x, u, order):
    """Per-sample |D - D_true| / |D_true| along u, float64: (B,)."""
    ref = NET.derivative(x, u, order)
    return ((d.double() - ref).abs() / ref.abs()).numpy()


GRID = 2.0 ** np.arange(-64, 16, 0.25)  # steps, a quarter octave apart


def error_curve(x, u, order, s):
    """The batch median of the true error of stencil s at each step of GRID: (G,)."""
    with torch.no_grad():
        return np.array([np.median(true_error(directional_derivative(NET, x, h * u, order, stencil=s).double()
                                              / h**order, x, u, order)) for h in GRID])


CASES = [(dtype, order) for dtype in DTYPES for order in (1, 2, 3, 4)]


@pytest.mark.parametrize("dtype, order", CASES)
def test_auto_step_lands_within_4x_of_the_true_optimal_step(dtype, order):
    x, u = batch(DTYPES[dtype])
    est = fd_estimate(NET, x, u, order, warn=False)
    curve = error_curve(x, u, order, est.stencil)
    smooth = np.exp(np.convolve(np.log(curve), np.ones(5) / 5, mode="same"))  # +-half an octave: the noisy bottom
    best = GRID[np.argmin(smooth)]
    step = float(est.step.median())
    assert best / 4 < step < 4 * best, f"auto step {step:.3g}, true optimum {best:.3g}"
    # and the error at it is close to the best on the grid
    assert np.median(true_error(est.derivative, x, u, order)) < 3 * curve.min()


@pytest.mark.parametrize("dtype, order", CASES)
def test_estimate_bounds_the_true_error_within_a_factor_3(dtype, order):
    x, u = batch(DTYPES[dtype])
    est = fd_estimate(NET, x, u, order, warn=False)
    true, estimate = true_error(est.derivative, x, u, order), est.rel_error.numpy()
    assert 1 / 3 < np.median(estimate) / np.median(true) < 3, (np.median(estimate), np.median(true))
    assert np.mean(true <= 3 * estimate) >= 0.7


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_step_estimate_follows_the_error_across_steps(dtype):
    """step=None: the estimate at |v| itself, from the roundoff side of the optimum to the truncation side."""
    x, u = batch(DTYPES[dtype], size=16)
    hits = []
    for order in (1, 2, 3):
        s = central_stencil(order, default_accuracy(order, x.dtype))
        for h in 2.0 ** np.arange(-12, 1, 2):
            est = fd_estimate(NET, x, h * u, order, stencil=s, step=None, warn=False)
            true = np.median(true_error(est.derivative.double() / h**order, x, u, order))
            if true < 1:  # where FD is pure noise the estimate can only say so (rel_error ~ 1, flagged)
                hits.append(1 / 3 < np.median(est.rel_error.numpy()) / true < 3)
    assert len(hits) >= 15 and np.mean(hits) >= 0.9, hits


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_step_estimate_does_not_under_read_where_the_pair_below_is_roundoff(dtype):
    """NOTE [the truncation at a fixed step]: just above the optimum the pair (h, h/2) carries D_{h/2}'s roundoff,
    2^T times D_h's, and cannot see a truncation at h that already exceeds D_h's roundoff. At high T that window is
    wide; across it (half octaves, from the roundoff side to the truncation side) the batch median of the estimate
    stays above a third of the true error: before the fix, float32 at T = 5 read 0.18 of it at h = 1/2."""
    x, u = batch(DTYPES[dtype], size=16)
    ratios = {}
    for order in (4, 5, 6):
        s = central_stencil(order, default_accuracy(order, x.dtype))
        for h in 2.0 ** np.arange(-11, 1.01, 0.5):
            est = fd_estimate(NET, x, h * u, order, stencil=s, step=None, warn=False)
            true = np.median(true_error(est.derivative.double() / h**order, x, u, order))
            if true < 1:  # where FD is pure noise the estimate can only say so
                ratios[order, float(np.log2(h))] = float(np.median(est.rel_error.numpy())) / true
    assert len(ratios) >= 20 and min(ratios.values()) > 1 / 3, {k: r for k, r in ratios.items() if r <= 1 / 3}


def test_the_result_is_the_derivative_along_the_given_v_whatever_the_step():
    """Eq. (S1): the stencil runs at h v/|v| and is rescaled by (|v|/h)^T; |v| = 5 scales D^3 by 125."""
    x, u = batch(F64, size=8)
    est = fd_estimate(NET, x, 5.0 * u, 3)
    torch.testing.assert_close(est.derivative, 125 * NET.derivative(x, u, 3), rtol=1e-6, atol=0)
    assert est.derivative.shape == (8,) and est.step.shape == est.rel_error.shape == est.flagged.shape == (8,)
    auto = directional_derivative(NET, x, 5.0 * u, 3, step="auto")
    torch.testing.assert_close(auto, est.derivative, rtol=1e-12, atol=0)  # the same call, the same probes


def test_auto_step_keeps_the_graph_and_detaches_the_step():
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Softplus(), torch.nn.Linear(8, 1),
                                 torch.nn.Flatten(0)).double()
    x, u = batch(F64, size=4)
    est = fd_estimate(module, x, u, 2)
    assert est.derivative.requires_grad and not est.step.requires_grad and not est.rel_error.requires_grad
    est.derivative.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in module.parameters())


@pytest.mark.parametrize("accuracy", [2, 4])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_richardson_raises_the_order_of_convergence_by_2(order, accuracy):
    f = FUNCTIONS["trig"]()
    steps = [0.6, 0.3, 0.15]  # truncation rules at all of them, for p + 2 = 6 at T = 4 too

    def slope(richardson):
        errors = [rel_error(directional_derivative(f, *points(h), order, stencil=central_stencil(order, accuracy),
                                                   richardson=richardson), f.derivative(*points(h), order))
                  for h in steps]
        return np.polyfit(np.log(steps), np.log(errors), 1)[0]

    assert accuracy - 0.25 < slope(False) < accuracy + 0.5
    assert accuracy + 2 - 0.25 < slope(True) < accuracy + 2 + 0.5
    assert richardson_stencil(central_stencil(order, accuracy)).accuracy == accuracy + 2


def test_richardson_stencil_is_the_combination_of_the_two_steps():
    s = central_stencil(2)  # f(x+h) - 2 f(x) + f(x-h), p = 2
    r = richardson_stencil(s)  # (4 D_{h/2} - D_h) / 3, D_{h/2} = 4 (f(x+h/2) - 2 f(x) + f(x-h/2))
    assert r.offsets == (-1.0, -0.5, 0.0, 0.5, 1.0)
    np.testing.assert_allclose(r.weights, [-1 / 3, 16 / 3, -10.0, 16 / 3, -1 / 3], rtol=1e-15)
    assert r.accuracy == 4
    one_sided = richardson_stencil(stencil(1, [0, 1]))  # 2 D_{h/2} - D_h: accuracy 1 -> 2
    assert one_sided.accuracy == 2 and one_sided.offsets == (0.0, 0.5, 1.0)


def test_where_no_step_reaches_1_percent_it_warns_and_flags():
    x, u = batch(torch.bfloat16, size=8)
    with pytest.warns(FDAccuracyWarning, match=r"order-3 FD derivative in bfloat16.*no step reaches it.*exact-taylor"):
        est = fd_estimate(NET, x, u, 3)
    assert est.flagged.all() and (est.rel_error > 0.01).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float64 at T = 2 reaches 1e-9: nothing to say
        assert not fd_estimate(NET, *batch(F64, size=8), 2).flagged.any()


def test_a_far_field_past_the_roundoff_is_no_plateau_to_settle_on():
    """A parabola inside |x| < 40 and a steep wall beyond: in bfloat16 the stencil is roundoff until its larger steps
    reach the wall, where D_h settles on the wall's curvature. The roundoff beside the roundoff bound of C is the
    one at that bound's own step, not the wall's, so the step stays inside and the estimate follows the error."""
    def f(x):  # (B, 1) -> (B,): D^2 = 2 inside the wall
        return 1e3 + x[:, 0] ** 2 + 1e4 * torch.nn.functional.softplus(x[:, 0].abs() - 40) ** 2

    x = torch.linspace(0.1, 0.9, 16, dtype=torch.bfloat16).view(16, 1)
    est = fd_estimate(f, x, torch.ones_like(x), 2, warn=False)
    true = (est.derivative.double() - 2).abs() / 2
    assert (est.step < 40).all(), est.step
    assert true.median() < 0.05 and true.median() < 3 * est.rel_error.median(), (true.median(), est.rel_error)


def test_roundoff_at_the_ladders_bottom_is_not_taken_for_steps_past_the_asymptotic_range():
    """sin(a.x) near a zero of sin, in float32: its roundoff is many times the u |f| model (the argument's own
    rounding, |z cot z|), so the lowest pair's difference looks larger than D with a small roundoff, the mark of a
    step past the asymptotic range. That mark used to spread to every pair above it: the ladder walked down until it
    returned a D 3e20 off, or said the step underflows. Roundoff falls with h, so the lowest pairs whose differences
    fall so are not past; every fixed step from 0.2 to 0.8 reaches 1%, and so does the automatic one."""
    cases = [([0.810, 0.0554, 1.134, -0.533], [-1.929, -0.271, -0.136, 2.575], [85.0, -28.0, 39.0, -92.3]),
             ([-0.599, 1.602, -1.073, -1.217], [0.967, 0.144, -2.263, -0.876], [-0.217, -1.339, -1.675, -2.202])]
    for a, x, v in cases:
        a, x, v = torch.tensor(a), torch.tensor([x]), torch.tensor([v])
        z = torch.sin(x.double() @ a.double())
        assert abs(float(z)) < 0.05  # near a zero of sin: |f| far under its argument
        est = fd_estimate(lambda p, a=a: torch.sin(p @ a), x, v, 4, warn=False)
        true = z * (v.double() @ a.double()) ** 4
        assert float((est.derivative.double() - true).abs() / true.abs()) < 0.02, (est.derivative, true, est.step)


def test_a_polynomial_along_the_line_keeps_the_step_where_f_has_its_size():
    """The stencil is exact for a polynomial of low degree, so no pair measures truncation; the step used to climb to
    the top of every probe (1.5e3), where f had grown a million-fold and its roundoff with it (14% and 60% off in
    float32). The roundoff stops falling like h^-T there, and the step stops climbing."""
    x, v = rand(3, 2, seed=5).float(), rand(3, 2, seed=6).float()
    for f, order, exact in [(lambda p: (p**3).sum(1), 1, lambda x, v: 3 * (x**2 * v).sum(1)),
                            (lambda p: (p**4).sum(1), 2, lambda x, v: 12 * (x**2 * v**2).sum(1))]:
        est = fd_estimate(f, x, v, order, warn=False)
        true = exact(x.double(), v.double())
        assert ((est.derivative.double() - true).abs() / true.abs()).max() < 1e-4 and (est.step < 100).all()


def test_the_automatic_step_is_differentiable_in_v_and_takes_a_batch_of_scalars():
    """D^T_v f is a polynomial in v: with the step detached as h/|v| (not as v/|v|) its gradient in v is FD's of
    d/dv exp(a.x) (a.v)^3 = 3 exp(a.x) (a.v)^2 a. And x of shape (B,) runs, as the plain methods take it."""
    a = torch.tensor([0.3, -0.7], dtype=F64)
    x, v = rand(4, 2, seed=7), rand(4, 2, seed=8).requires_grad_(True)
    fd_estimate(lambda p: torch.exp(p @ a), x, v, 3).derivative.sum().backward()
    expected = 3 * torch.exp(x @ a).view(-1, 1) * (v.detach() @ a).pow(2).view(-1, 1) * a
    torch.testing.assert_close(v.grad, expected, rtol=1e-6, atol=1e-9)
    scalars = fd_estimate(torch.exp, x[:, 0], torch.ones(4, dtype=F64), 2, tolerance=np.float32(0.01))  # any real
    torch.testing.assert_close(scalars.derivative, torch.exp(x[:, 0]), rtol=1e-8, atol=0)
    assert scalars.step.shape == (4,)


def test_a_float32_step_under_its_grid_is_flagged():
    """sin(1e3 (x - 3e4)) at x = 3e4 in float32: x's grid spacing 0.002 is 2 radians of the sine, so no step
    resolves it; the result is flagged with a pointer to float64, whichever step it ends on."""
    with pytest.warns(FDAccuracyWarning, match=r"no step reaches it.*or float64"):
        est = fd_estimate(lambda x: torch.sin(1e3 * (x[:, 0] - 3e4)), torch.full((2, 1), 3e4), torch.ones(2, 1), 1)
    assert est.flagged.all()


def ok_f(x):
    return NET(x.double()).to(x.dtype)


X, U = batch(F64, size=4)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: fd_estimate(lambda x: torch.log(x[:, 0]), torch.full((2, 1), 1e-3, dtype=F64),
                             torch.ones(2, 1, dtype=F64), 1),
         ValueError, r"f is not finite at a probe of the automatic step: sample 0 .*Keep f finite"),
        (lambda: fd_estimate(lambda x: torch.log(x[:, 0]), torch.full((2, 1), 0.5, dtype=F64),  # probes past 0.5
                             torch.full((2, 1), 0.4, dtype=F64), 1, step=None),
         ValueError, r"a probe of the error estimate at the step \|v\|: .*Keep f finite there, or pass a shorter v"),
        (lambda: fd_estimate(ok_f, X.float(), 1e-12 * U.float(), 2, step=None),
         ValueError, r"the step h = 1e-12 of sample 0 underflows in float32.*Use float64"),
        # A step that survives rounding only in part (0.0012 on a grid of 0.002 keeps 0.002, 63% off) underflows
        # too: it is not lost, it is wrong, and the result would be as wrong with a tiny estimate.
        (lambda: fd_estimate(lambda x: torch.sin(x[:, 0] - 3e4), torch.full((2, 1), 3e4),
                             torch.full((2, 1), 0.0012), 1, step=None),
         ValueError, r"the step h = 0.0012 of sample 0 underflows in float32"),
        (lambda: fd_estimate(ok_f, X, torch.zeros_like(X), 2), ValueError, "expected finite, non-zero directions v"),
        (lambda: fd_estimate(ok_f, X, U.where(U > 0, math.inf), 2), ValueError, r"directions v, got \|v\| = inf"),
        (lambda: fd_estimate(ok_f, X, U, 2, method="exact-taylor"), ValueError,
         "step=.auto. needs an FD method"),
        (lambda: directional_derivative(ok_f, X, U, 2, method="exact-reverse", step="auto"), ValueError,
         r"directional_derivative\(f, x, v, order\): step='auto' needs an FD method"),
        (lambda: directional_derivative(ok_f, X, U, 2, richardson=True, method="exact-forward"), ValueError,
         "richardson=True needs an FD method"),
        (lambda: fd_estimate(ok_f, X, U, 2, step="best"), ValueError, r"expected step='auto' or None"),
        (lambda: fd_estimate(ok_f, X, U, 2, richardson="yes"), TypeError, "expected richardson to be a bool"),
        (lambda: fd_estimate(ok_f, X, U, 2, tolerance=0.0), ValueError, "expected a positive finite tolerance"),
        (lambda: fd_estimate(ok_f, X, U, 2, tolerance="1%"), TypeError, "expected tolerance to be a positive number"),
        (lambda: fd_estimate(ok_f, X, U, 2, warn="no"), TypeError, "expected warn to be True or False, got str"),
        (lambda: fd_estimate(ok_f, X.where(X > 0, math.nan), U, 2), ValueError,
         r"expected finite points x, got a non-finite entry in sample \d"),
        (lambda: fd_estimate(ok_f, X, U, 0), ValueError, r"fd_estimate\(f, x, v, order\): expected order >= 1"),
        (lambda: fd_estimate(ok_f, X, U[:, :2], 2), ValueError, "expected v of the same shape as x"),
        (lambda: fd_estimate(ok_f, X, U, 2, stencil=central_stencil(3)), ValueError, "a stencil of order 2"),
        (lambda: richardson_stencil(central_stencil(2).__class__(2, (-1.0, 0.0, 1.0), (1.0, -2.5, 1.0), 2)),
         ValueError, "expected the stencil of its offsets"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


# Scalar functions with their T-th derivatives, for numdifftools.
SIGMOID = sigmoid_derivative_polys(6)
SCALAR = {
    "exp": (np.exp, torch.exp, lambda t, order: np.exp(t)),
    "sin": (np.sin, torch.sin, lambda t, order: np.sin(t + order * math.pi / 2)),
    "sigmoid": (lambda t: 1 / (1 + np.exp(-t)), torch.sigmoid, lambda t, order: SIGMOID[order](1 / (1 + np.exp(-t)))),
}
# 32 points: near float64's floor (T = 2 at p = 4) each error is a draw of the roundoff, so a median of 8 crossed
# the factor 2 on another CPU (its libm rounds exp differently); a median of 32 compares the typical errors.
TS = np.linspace(-1.3, 1.6, 32)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("name", SCALAR)
def test_against_numdifftools_on_scalar_functions(name, order):
    """The same accuracy order, 4: numdifftools' central differences of order 4 (no Richardson terms; it picks its
    step from a sequence by its own error estimates) against our p = 4 stencil at the automatic step."""
    np_f, torch_f, exact = SCALAR[name]
    true = exact(TS, order)
    theirs = [nd.Derivative(np_f, n=order, order=4, richardson_terms=0, full_output=True)(t) for t in TS]
    their_value = np.array([float(r.estimate) for r in theirs])
    their_estimate = np.array([float(r.error_estimate) for r in theirs])
    x = torch.tensor(TS, dtype=F64).view(-1, 1)
    ours = fd_estimate(lambda z: torch_f(z[:, 0]), x, torch.ones_like(x), order, stencil=central_stencil(order, 4))
    our_error, their_error = np.abs(ours.derivative.numpy() - true), np.abs(their_value - true)
    assert np.median(our_error) <= 2 * np.median(their_error), (our_error, their_error)
    assert np.mean(our_error <= 3 * ours.abs_error.numpy()) >= 7 / 8  # ours: within a factor 3
    assert np.mean(their_error <= their_estimate) >= 7 / 8  # theirs: a bound (a 95% t-interval)


# ---- eps="auto" in the FD objectives ------------------------------------------------------------------------------

def test_fd_ssm_loss_with_the_automatic_step_matches_the_exact_sliced_objective():
    """Per sample, [D^2 + (D^1)^2 / 2] / eps^2 on the same directions; each sample's step is its own, detached."""
    from fdsm.objectives import fd_ssm_loss, ssm_loss

    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Softplus(), torch.nn.Linear(8, 1),
                                 torch.nn.Flatten(0)).double()
    x, u = batch(F64, size=8)
    auto = fd_ssm_loss(module, x, eps="auto", v=u, reduction="none")
    exact = ssm_loss(module, x, v=u, reduction="none")  # eps^2 = mean |u|^2 = 1
    torch.testing.assert_close(auto, exact, rtol=1e-5, atol=1e-8)
    auto.mean().backward()  # the step is detached: the gradient flows through the stencil values only
    assert all(p.grad is not None and p.grad.isfinite().all() for p in module.parameters())


def test_fd_dsm_loss_with_the_automatic_step_matches_the_exact_sliced_dsm():
    from fdsm.objectives import fd_dsm_loss, sliced_dsm_loss

    x, u = batch(F64, size=8)
    xi = rand(8, 6, seed=12)
    auto = fd_dsm_loss(NET, x, 0.3, eps="auto", v=u, xi=xi, reduction="none")
    exact = sliced_dsm_loss(NET, x, 0.3, v=u, xi=xi, reduction="none")
    torch.testing.assert_close(auto, exact, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="expected eps to be a positive number or 'auto'"):
        fd_dsm_loss(NET, x, 0.3, eps="best")


# ---- the bench: derivatives --eps auto, --richardson, err_estimate --------------------------------------------------

@pytest.mark.slow  # three sweeps, each in a spawned worker: about 6 s on 2 cores
def test_derivatives_eps_auto_records_the_chosen_step_its_source_and_the_estimate(tmp_path):
    import pandas as pd

    from bench.cli import main

    common = ["derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path), "--threads", "1",
              "--methods", "fd-batched,exact-taylor", "--orders", "2"]
    assert main([*common, "--eps", "auto"]) == 0
    assert main([*common, "--eps", "auto", "--richardson"]) == 0
    frame = pd.read_csv(tmp_path / "derivatives.csv")
    fd = frame[frame.method.str.startswith("fd-")]
    assert set(fd.method) == {"fd-batched", "fd-batched+richardson"} and (fd.eps_source == "auto").all()
    assert (fd.status == "ok").all(), fd.message.tolist()
    assert (fd.eps > 0).all() and (fd.err_estimate > 0).all() and (fd.probe_forwards >= 1).all()
    assert (fd.rel_error < 0.05).all() and fd.message.isna().all()  # the timed call chose the case's step again
    assert frame[frame.method == "exact-taylor"].err_estimate.isna().all()
    assert main([*common, "--eps", "auto"]) == 0  # resumes: the chosen step is the key, the same again
    assert len(pd.read_csv(tmp_path / "derivatives.csv")) == len(frame)


@pytest.mark.parametrize("value, message", [("-1", "expected a positive finite number, or 'auto'"),
                                            ("nan", "expected a positive finite number, or 'auto'"),
                                            ("often", "expected a positive number or 'auto'")])
def test_derivatives_eps_takes_a_positive_number_or_auto(tmp_path, capsys, value, message):
    from bench.cli import main

    try:
        code = main(["derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path), "--eps", value])
    except SystemExit as stop:  # argparse's own refusal of a value its type cannot parse
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err
