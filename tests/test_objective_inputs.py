"""The objectives' inputs checked on every path: eps and sigma (type and range), an explicit v, noise / backend /
serial where they would otherwise be ignored, and the dtype of what the callable returns. Tiny batches (B = 4, d = 3).
"""

import pytest
import torch

from fdsm import NotSupported
from fdsm import objectives as obj

X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
V = 0.1 * torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def log_density(z):
    return -0.5 * (z ** 2).sum(1) + torch.tanh(z).sum(1)


def integer_log_density(z):
    return (100 * -(z ** 2).sum(1)).long()


# Every objective of a log-density that takes eps: exact ones (eps only scales v) and FD ones (eps="auto" too).
EPS_OBJECTIVES = {
    "ssm": lambda **kw: obj.ssm_loss(log_density, X, **kw),
    "ssmvr": lambda **kw: obj.ssmvr_loss(log_density, X, **kw),
    "sliced-dsm": lambda **kw: obj.sliced_dsm_loss(log_density, X, 0.1, **kw),
    "ssmvr-score": lambda **kw: obj.ssmvr_score_loss(lambda z: -z, X, **kw),
    "fd-ssm": lambda **kw: obj.fd_ssm_loss(log_density, X, **kw),
    "fd-dsm": lambda **kw: obj.fd_dsm_loss(log_density, X, 0.1, **kw),
    "fd-ssmvr": lambda **kw: obj.fd_ssmvr_loss(lambda z: -z, X, **kw),
}
FD = ("fd-ssm", "fd-dsm", "fd-ssmvr")


@pytest.mark.parametrize("name", EPS_OBJECTIVES)
def test_an_eps_whose_square_underflows_is_not_supported_in_exact_and_fd_objectives_alike(name):
    with pytest.raises(NotSupported, match=r"1/eps\^2 = inf \(eps\^2 = 0\) is beyond float64's range .* 7.5e-155"):
        EPS_OBJECTIVES[name](eps=1e-200)  # the exact ones gave NaN


@pytest.mark.parametrize("name", EPS_OBJECTIVES)
@pytest.mark.parametrize("eps", [True, "0.1", [0.1]])
def test_eps_must_be_a_number_not_a_bool_or_string(name, eps):
    """True was taken as 1, a string failed inside math.isfinite naming nothing; the FD objectives take one string,
    'auto', so another is a ValueError there (as before)."""
    allowed = "a positive number or 'auto'" if name in FD else "a positive number,"
    error = ValueError if name in FD and isinstance(eps, str) else TypeError
    with pytest.raises(error, match=f"expected eps to be {allowed}"):
        EPS_OBJECTIVES[name](eps=eps)


def test_an_exact_objective_refuses_eps_auto_naming_eps():
    with pytest.raises(TypeError, match=r"ssm_loss\(log_density, x\): expected eps to be a positive number, got str"):
        obj.ssm_loss(log_density, X, eps="auto")


@pytest.mark.parametrize("sigma", [True, "0.1"])
def test_sigma_must_be_a_number_or_a_tensor(sigma):
    with pytest.raises(TypeError, match=r"dsm_loss\(log_density, x, sigma\): expected sigma to be a positive number "
                                        r"or a \(4,\) tensor"):
        obj.dsm_loss(log_density, X, sigma)


@pytest.mark.parametrize("name", EPS_OBJECTIVES)
@pytest.mark.parametrize("bad, shown", [(0.0, "0.0"), (float("nan"), "nan")])
def test_a_given_v_with_a_zero_or_nan_row_is_refused_whatever_eps(name, bad, shown):
    v = V.clone()
    v[2] = bad
    for eps in ("auto", 0.1) if name in FD else (None, 0.1):
        with pytest.raises(ValueError, match=rf"expected \|\|v_b\|\|\^2 .* > 0 and finite, got {shown}"):
            EPS_OBJECTIVES[name](v=v, eps=eps)  # with eps given, a zero v gave 0.0 and a NaN v NaN


@pytest.mark.parametrize("call", [
    lambda: obj.ssm_loss(log_density, X, v=V, noise="bogus"),  # noise is unused with a v, but still checked
    lambda: obj.ssmvr_loss(log_density, X, v=V, eps=0.1, noise="bogus"),
])
def test_noise_is_checked_even_where_v_is_given(call):
    with pytest.raises(ValueError, match=r"expected noise in \('sphere', 'gaussian', 'rademacher'\), got 'bogus'"):
        call()


@pytest.mark.parametrize("name", FD)
def test_backend_and_serial_are_checked_on_every_fd_path(name):
    with pytest.raises(ValueError, match=r"expected backend in .*, got 'bogus'"):
        EPS_OBJECTIVES[name](eps="auto", backend="bogus")  # eps="auto" uses no fused head, which did the check
    with pytest.raises(TypeError, match=r"expected serial to be True or False, got str 'no'"):
        EPS_OBJECTIVES[name](v=V, serial="no")  # a truthy string was taken as True


def test_multiscale_fd_dsm_checks_its_fd_options_too():
    with pytest.raises(TypeError, match=r"multiscale_fd_dsm_loss.*expected serial to be True or False"):
        obj.multiscale_fd_dsm_loss(log_density, X, torch.full((4,), 0.1, dtype=torch.float64), serial=1)


@pytest.mark.parametrize("call, name", [
    (lambda: obj.ssm_loss(integer_log_density, X), "log_density"),  # gave 0.0
    (lambda: obj.ssm_loss(integer_log_density, X, method="taylor"), "log_density"),  # gave 45941.6
    (lambda: obj.fd_ssm_loss(integer_log_density, X), "log_density"),
    (lambda: obj.fd_ssm_loss(integer_log_density, X, eps="auto"), "log_density"),
    (lambda: obj.dsm_loss(integer_log_density, X, 0.1), "log_density"),
    (lambda: obj.mle_loss(lambda z: z.sum(1) > 0, X), "log_density"),
    (lambda: obj.ssmvr_score_loss(lambda z: z.round().long(), X), "score"),
    (lambda: obj.fd_ssmvr_loss(lambda z: z > 0, X), "score"),
])
def test_a_callable_that_returns_integers_or_bools_is_refused(call, name):
    with pytest.raises(TypeError, match=f"expected {name} to return a floating-point tensor, got torch"):
        call()


def test_valid_calls_still_agree():
    """The checks change no valid result: FD-SSM is exact for a quadratic, on the same v, with eps given or not."""
    quadratic = lambda z: -0.5 * z.pow(2).sum(1)  # noqa: E731
    v = obj.draw_directions(X, 0.1)
    torch.testing.assert_close(obj.fd_ssm_loss(quadratic, X, v=v, backend="torch"), obj.ssm_loss(quadratic, X, v=v))
    torch.testing.assert_close(obj.ssm_loss(quadratic, X, v=v, eps=0.1), obj.ssm_loss(quadratic, X, v=v))


@pytest.mark.parametrize("call, error, match", [
    (lambda: obj.ssm_loss(log_density, X, eps=torch.tensor([0.1, 0.2, 0.3, 0.4])), ValueError,
     r"ssm_loss\(log_density, x\): expected eps to be a positive number, got a tensor of shape \(4,\)"),
    (lambda: obj.fd_ssm_loss(log_density, X, eps=torch.full((4,), 0.1)), ValueError,
     r"expected eps to be a positive number or 'auto', got a tensor of shape \(4,\)"),
    (lambda: obj.draw_directions(X, 0.0), ValueError, r"draw_directions: expected eps > 0 and finite, got 0.0"),
    (lambda: obj.draw_directions(X, "0.1"), TypeError, r"draw_directions: expected eps to be a positive number"),
    (lambda: obj.multiscale_dsm_loss(log_density, X, torch.full((4,), 0.1), sigma0=0.0), ValueError,
     r"multiscale_dsm_loss\(log_density, x, sigma\): expected sigma0 > 0 and finite"),
    (lambda: obj.dsm_loss(log_density, X, 0.1, xi=torch.zeros(4, 2)), ValueError,
     r"dsm_loss\(log_density, x, sigma\): expected xi of x's shape \(4, 3\), got \(4, 2\)"),
    (lambda: obj.annealed_dsm_loss(lambda z, c: -z, X, torch.full((4,), 0.1), cond=torch.zeros(3)), ValueError,
     r"annealed_dsm_loss\(score, x, sigma\): expected cond to be a tensor of one entry per sample, \(4, ...\), "
     r"got \(3,\)"),
    (lambda: obj.annealed_fd_ssmvr_loss(lambda z, c: -z, X, torch.full((4,), 0.1), cond=torch.zeros(5)), ValueError,
     r"annealed_fd_ssmvr_loss\(score, x, sigma\): expected cond to be a tensor of one entry per sample"),
    (lambda: obj.dsm_loss(log_density, torch.zeros(4, 0, dtype=torch.float64), 0.1), ValueError,
     r"expected x of shape \(B, \*event\) with B >= 1, a non-empty event"),
])
def test_malformed_scales_noise_and_conditions_are_refused_naming_the_argument(call, error, match):
    """Each gave a raw torch error naming nothing (eps of several values, cond of another batch), a message without
    its function or with the wrong argument (xi; sigma0 called sigma), silently zero directions (draw_directions at
    eps = 0), or NaN (an empty event)."""
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("loss", [
    lambda ld, x: obj.ssm_loss(ld, x), lambda ld, x: obj.ssmvr_loss(ld, x), lambda ld, x: obj.sm_loss(ld, x),
    lambda ld, x: obj.dsm_loss(ld, x, 0.1), lambda ld, x: obj.sliced_dsm_loss(ld, x, 0.1),
])
def test_a_log_density_that_ignores_x_gives_a_loss_in_its_parameters_graph(loss):
    """Its score is 0: the gradient objectives returned a loss cut off from the parameters (zeros_like(x)), so a
    training step failed with autograd's raw error, where the FD and Taylor forms gave a differentiable zero."""
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    value = loss(lambda z: w * torch.ones(len(z), dtype=z.dtype), X)
    assert value.requires_grad
    (g,) = torch.autograd.grad(value, w)
    assert g == 0
