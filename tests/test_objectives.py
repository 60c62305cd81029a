"""The objectives against the Gaussian toy model's closed forms, FD against gradient forms, shapes and bad input.

Tolerances: for a quadratic log-density every FD form is exact, so an estimator differs from its closed form by
Monte Carlo noise only; each check allows 5 standard errors of the per-sample values (n = 4000, float64), which a
correct estimator fails with probability < 1e-6. Per-sample identities (FD = exact on the same v) are float64
roundoff: rtol 1e-8.
"""

import functools
import math

import pytest
import torch

from fdsm import NotSupported
from fdsm import objectives as obj
from fdsm.models import build

N, D = 4000, 4
SIGMA = 0.5
torch.manual_seed(0)


@pytest.fixture(scope="module")
def gaussian():
    """N(mu, P^-1) with a non-diagonal precision, and data x ~ N(m, C) with another mean and covariance."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    precision = a @ a.T / D + 0.5 * torch.eye(D, dtype=torch.float64)
    model = build("gaussian", size="cpu", dim=D).double()
    model = type(model).from_moments(torch.full((D,), 0.3, dtype=torch.float64), precision)
    data_mean = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
    data_cov = torch.diag(torch.linspace(0.5, 1.5, D, dtype=torch.float64))
    x = data_mean + torch.randn(N, D, generator=g, dtype=torch.float64) @ data_cov.sqrt()
    return model, x, data_mean, data_cov


def assert_mc_close(per_sample: torch.Tensor, expected: torch.Tensor | float):
    assert per_sample.shape == (N,)
    mean, stderr = per_sample.mean().item(), per_sample.std().item() / math.sqrt(N)
    assert abs(mean - float(expected)) < 5 * stderr + 1e-12, (mean, float(expected), stderr)


def expected(model, data_mean, data_cov, kind):
    if kind == "sm":
        return model.expected_sm(data_mean, data_cov).detach()
    if kind == "sm/d":
        return model.expected_ssm(data_mean, data_cov).detach()
    return model.expected_dsm(data_mean, data_cov, SIGMA).detach()


CASES = [
    ("sm", lambda m, x: obj.sm_loss(m.log_density, x, reduction="none")),
    ("sm/d", lambda m, x: obj.ssm_loss(m.log_density, x, reduction="none")),
    ("sm/d", lambda m, x: obj.ssm_loss(m.log_density, x, noise="gaussian", reduction="none")),
    ("sm/d", lambda m, x: obj.ssm_loss(m.log_density, x, noise="rademacher", reduction="none")),
    ("sm/d", lambda m, x: obj.ssm_loss(m.log_density, x, method="taylor", reduction="none")),
    ("sm/d", lambda m, x: obj.ssm_loss(m.log_density, x, noise="rademacher", method="taylor", reduction="none")),
    ("sm/d", lambda m, x: obj.ssmvr_loss(m.log_density, x, noise="rademacher", reduction="none")),
    ("sm/d", lambda m, x: obj.ssmvr_loss(m.log_density, x, method="taylor", reduction="none")),
    ("sm/d", lambda m, x: obj.fd_ssm_loss(m.log_density, x, reduction="none")),
    ("sm/d", lambda m, x: obj.fd_ssm_loss(m.log_density, x, serial=True, backend="torch", reduction="none")),
    ("sm/d", lambda m, x: obj.ssmvr_score_loss(m.score, x, reduction="none")),
    ("sm/d", lambda m, x: obj.ssmvr_score_loss(m.score, x, method="taylor", reduction="none")),
    ("sm/d", lambda m, x: obj.fd_ssmvr_loss(m.score, x, eps=0.3, reduction="none")),
    ("dsm", lambda m, x: obj.dsm_loss(m.log_density, x, SIGMA, reduction="none")),
    ("dsm", lambda m, x: obj.dsm_score_loss(m.score, x, SIGMA, reduction="none")),
    ("dsm", lambda m, x: obj.sliced_dsm_loss(m.log_density, x, SIGMA, reduction="none")),
    ("dsm", lambda m, x: obj.sliced_dsm_loss(m.log_density, x, SIGMA, method="taylor", reduction="none")),
    ("dsm", lambda m, x: obj.fd_dsm_loss(m.log_density, x, SIGMA, reduction="none")),
    ("dsm", lambda m, x: obj.multiscale_dsm_loss(m.log_density, x, torch.full((N,), SIGMA), sigma0=SIGMA,
                                                 reduction="none")),
    ("dsm", lambda m, x: obj.multiscale_fd_dsm_loss(m.log_density, x, torch.full((N,), SIGMA), sigma0=SIGMA,
                                                    reduction="none")),
]


@pytest.mark.parametrize("kind, objective", CASES, ids=[f"{i}-{k}" for i, (k, _) in enumerate(CASES)])
def test_closed_forms(gaussian, kind, objective):
    model, x, data_mean, data_cov = gaussian
    assert_mc_close(objective(model, x).detach(), expected(model, data_mean, data_cov, kind))


def expected_mdsm(model, data_mean, data_cov, sigma, sigma0):
    r"""MDSM's closed form, noise sigma and target scale sigma0: the residual is -P (x - mu) + sigma (I / sigma0^2 - P)
    xi, so J = (sigma0 / sigma)^2 [E||P (x - mu)||^2 + sigma^2 tr((I / sigma0^2 - P)^2)] / d."""
    precision = model.precision().detach()
    second_moment = (precision @ (data_mean - model.mean.detach())).pow(2).sum() + (
        precision @ data_cov @ precision).trace()
    noise_map = torch.eye(D, dtype=torch.float64) / sigma0**2 - precision
    return (sigma0 / sigma) ** 2 * (second_moment + sigma**2 * (noise_map @ noise_map).trace()) / D


@pytest.mark.parametrize("objective", [obj.multiscale_dsm_loss, obj.multiscale_fd_dsm_loss],
                         ids=["mdsm", "mdsm-fd"])
def test_multiscale_weights_and_keeps_the_sigma0_target(gaussian, objective):
    """sigma != sigma0, where the weight (sigma0 / sigma)^2 is not 1 and the target (x~ - x) / sigma0^2 is not the
    noise / sigma: a constant sigma against the closed form, and per-sample levels against their mean."""
    model, x, data_mean, data_cov = gaussian
    sigma0 = 0.3
    for sigma in (torch.full((N,), 0.8, dtype=torch.float64), torch.linspace(0.2, 1.2, N, dtype=torch.float64)):
        per_sample = objective(model.log_density, x, sigma, sigma0=sigma0, reduction="none").detach()
        assert_mc_close(per_sample, expected_mdsm(model, data_mean, data_cov, sigma, sigma0).mean())


def test_dsm_score_loss_feeds_the_score_a_detached_input(gaussian):
    """A score network needs no input gradient: x~ reaches it detached (dsm_loss takes its own, to get the score)."""
    model, x, _, _ = gaussian
    seen = []
    loss = obj.dsm_score_loss(lambda z: seen.append(z) or model.score(z), x[:8], SIGMA)
    assert not seen[0].requires_grad
    loss.backward()
    assert model.mean.grad is not None


def test_fd_is_exact_for_a_quadratic_on_the_same_v(gaussian):
    model, x, _, _ = gaussian
    x = x[:64]
    v = obj.draw_directions(x, 0.7)
    xi = torch.randn_like(x)
    pairs = [
        (obj.fd_ssm_loss(model.log_density, x, v=v, backend="torch", reduction="none"),
         obj.ssm_loss(model.log_density, x, v=v, reduction="none")),
        (obj.fd_dsm_loss(model.log_density, x, SIGMA, v=v, xi=xi, backend="torch", reduction="none"),
         obj.sliced_dsm_loss(model.log_density, x, SIGMA, v=v, xi=xi, reduction="none")),
        (obj.fd_ssmvr_loss(model.score, x, v=v, backend="torch", reduction="none"),
         obj.ssmvr_score_loss(model.score, x, v=v, reduction="none")),
    ]
    for fd, exact in pairs:
        torch.testing.assert_close(fd, exact, rtol=1e-8, atol=1e-10)


def test_fd_ssm_in_float16_takes_the_norm_of_a_v_whose_squares_underflow():
    # ||v|| = 0.01 over d = 4096 components of 1.6e-4, whose squares (2.4e-8) are below float16's smallest
    # subnormal: summed in float16, ||v||^2 was 0. log p = -a^2 ||x||^2 / 2 at x = 0: FD-SSM is exact, -a^2.
    a = 100.0
    x = torch.zeros(2, 4096, dtype=torch.float16)
    v = torch.full_like(x, 0.01 / 64)
    loss = obj.fd_ssm_loss(lambda z: -0.5 * (a * z).pow(2).sum(1), x, v=v, backend="torch", reduction="none")
    assert loss.dtype == torch.float16
    torch.testing.assert_close(loss.float(), torch.full((2,), -a**2), rtol=2e-3, atol=0)  # float16: 2^-11 = 5e-4


@pytest.mark.parametrize("loss", [
    lambda x, v: obj.fd_ssm_loss(lambda z: -0.5 * z.pow(2).sum(1), x, v=v),
    lambda x, v: obj.fd_dsm_loss(lambda z: -0.5 * z.pow(2).sum(1), x, 0.1, v=v),
    lambda x, v: obj.fd_ssmvr_loss(lambda z: -z, x, v=v),
])
def test_fd_in_float16_at_a_step_whose_inverse_square_overflows_is_not_supported_and_says_why(loss):
    x = torch.rand(2, 784, dtype=torch.float16)
    v = torch.full_like(x, 1e-3 / 28)  # ||v|| = 1e-3: 1/eps^2 = 1e6, beyond float16's 65504
    with pytest.raises(NotSupported, match=r"1/eps\^2 = 1e\+06 is beyond float16's range .* use eps >= 0.0039"):
        loss(x, v)



def test_an_fd_scale_of_zero_is_not_supported_rather_than_a_division_by_zero():
    from fdsm.objectives.checks import check_fd_scale

    with pytest.raises(NotSupported, match=r"1/eps\^2 = inf \(eps\^2 = 0\) is beyond float32's range"):
        check_fd_scale("fd_ssm_loss(log_density, x)", torch.zeros(3), torch.float32)  # steps underflowed to 0
    check_fd_scale("fd_ssm_loss(log_density, x)", 1e-30, torch.float32)  # 1/eps^2 = 1e30: in range


@pytest.mark.parametrize("name, loss", [
    ("mlp-ebm", lambda model, x, v, method: obj.ssm_loss(model.log_density, x, v=v, method=method)),
    ("nice", lambda model, x, v, method: obj.ssm_loss(model.log_density, x, v=v, method=method)),
    ("wae-score", lambda model, x, v, method: obj.ssmvr_score_loss(model.score, x, v=v, method=method)),
    ("mlp-ebm", lambda model, x, v, method: obj.ssmvr_loss(model.log_density, x, v=v, method=method)),
    ("nice", lambda model, x, v, method: obj.sliced_dsm_loss(model.log_density, x, 0.1, v=v, method=method,
                                                             xi=torch.ones_like(x))),
])
def test_taylor_objectives_equal_the_nested_reverse_ones_in_value_and_gradient(name, loss):
    """method="taylor" is the same exact objective: the same loss and parameter gradients (float64)."""
    torch.manual_seed(0)
    model = build(name, size="cpu").double()
    x = torch.randn(6, *model.event_shape, dtype=torch.float64)
    v = torch.randn_like(x)
    reverse, taylor = loss(model, x, v, "reverse"), loss(model, x, v, "taylor")
    torch.testing.assert_close(taylor, reverse, rtol=1e-10, atol=1e-12)
    grad = functools.partial(torch.autograd.grad, inputs=list(model.parameters()), allow_unused=True,
                             materialize_grads=True)
    for g_r, g_t in zip(grad(reverse), grad(taylor), strict=True):  # a last bias does not reach SSM: zero
        torch.testing.assert_close(g_t, g_r, rtol=1e-8, atol=1e-12)


def test_fd_agrees_with_gradient_forms_on_a_nonquadratic_model():
    """MLP EBM, float64: FD-SSM and FD-SSMVR differ from SSM / SSMVR by O(eps^2) per sample (central stencils)."""
    torch.manual_seed(2)
    model = build("mlp-ebm", size="cpu", dim=3).double()
    x = torch.randn(32, 3, dtype=torch.float64)
    u = obj.draw_directions(x, 1.0)
    score = lambda z: torch.autograd.grad(model.log_density(z).sum(), z, create_graph=True)[0]  # noqa: E731
    errors = []
    for eps in (1e-1, 1e-2):
        fd = obj.fd_ssm_loss(model.log_density, x, v=eps * u, backend="torch", reduction="none")
        exact = obj.ssm_loss(model.log_density, x, v=eps * u, reduction="none")
        errors.append((fd - exact).abs().max().item())
        fd_vr = obj.fd_ssmvr_loss(lambda z: score(z.requires_grad_(True)), x, v=eps * u, backend="torch")
        exact_vr = obj.ssmvr_loss(model.log_density, x, v=eps * u)
        assert abs(fd_vr.item() - exact_vr.item()) < 10 * eps**2 * (1 + abs(exact_vr.item()))
    assert errors[1] < errors[0] / 50  # second order: 100x smaller at 10x smaller eps, allow 2x


def test_noise_conditional_forms_weight_the_base_objectives():
    torch.manual_seed(3)
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    sigma = obj.ncsn_sigmas(dtype=torch.float64)[torch.tensor([0, 3, 9, 1, 2, 5])]
    xi, v = torch.randn_like(x), obj.draw_directions(x, 0.1)
    weights = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    score = lambda z, c: -weights * z / (1 + c.view(-1, 1, 1, 1) ** 2)  # noqa: E731
    annealed = obj.annealed_fd_ssmvr_loss(score, x, sigma, xi=xi, v=v, backend="torch", reduction="none")
    base = obj.fd_ssmvr_loss(lambda z: score(z, sigma), x + sigma.view(-1, 1, 1, 1) * xi, v=v, backend="torch",
                             serial=True, reduction="none")  # serial: each call sees the B rows sigma matches
    torch.testing.assert_close(annealed, sigma**2 * base)
    exact = obj.annealed_ssmvr_loss(score, x, sigma, xi=xi, v=v, reduction="none")
    torch.testing.assert_close(exact, annealed)  # a linear score: FD-SSMVR is exact
    dsm = obj.annealed_dsm_loss(score, x, sigma, xi=xi, reduction="none")
    s = sigma.view(-1, 1, 1, 1)  # by hand: sigma^2 ||s(x + sigma xi) + xi / sigma||^2 / d, lambda(sigma) = sigma^2
    by_hand = sigma**2 * (score(x + s * xi, sigma) + xi / s).pow(2).flatten(1).sum(1) / x[0].numel()
    torch.testing.assert_close(dsm, by_hand)
    dsm.mean().backward()
    assert weights.grad is not None
    labels, levels = obj.draw_levels(6, obj.ncsn_sigmas())
    assert labels.dtype == torch.int64 and levels.shape == (6,)


def test_the_noise_levels_are_ncsn_geometric_ladder_and_the_deep_ebm_linear_one():
    sigmas = obj.ncsn_sigmas(dtype=torch.float64)  # 1 -> 0.01 in 10 levels, each 0.01^(1/9) times the last
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == pytest.approx(0.01) and len(sigmas) == 10
    torch.testing.assert_close(sigmas[1:] / sigmas[:-1], torch.full((9,), 0.01 ** (1 / 9), dtype=torch.float64))
    torch.testing.assert_close(obj.deep_ebm_sigmas(4, dtype=torch.float64),
                               torch.tensor([0.05, 0.05 + 1.15 / 3, 0.05 + 2.3 / 3, 1.2], dtype=torch.float64))


def test_mle_and_reduction_shapes(gaussian):
    model, x, _, _ = gaussian
    x = x[:5]
    for fn in (obj.sm_loss, obj.ssm_loss, obj.fd_ssm_loss, obj.mle_loss):
        assert fn(model.log_density, x, reduction="none").shape == (5,)
        assert fn(model.log_density, x).shape == ()
    assert torch.allclose(obj.mle_loss(model.log_density, x, reduction="none"), -model.log_density(x))
    image = torch.rand(3, 1, 4, 4)
    assert obj.fd_ssmvr_loss(lambda z: -z, image, reduction="none").shape == (3,)


def test_backends_agree_in_value_and_gradient():
    """The fused heads ("auto": the kernels' own choice; "triton" where it can run) against plain torch."""
    torch.manual_seed(4)
    model = build("mlp-ebm", size="cpu", dim=3).double()  # float64: FD roundoff far below the tolerance
    x, sigma = torch.randn(16, 3, dtype=torch.float64), 0.3
    v, xi = obj.draw_directions(x, 0.1), torch.randn_like(x)
    calls = [lambda b: obj.fd_ssm_loss(model.log_density, x, v=v, backend=b),
             lambda b: obj.fd_dsm_loss(model.log_density, x, sigma, v=v, xi=xi, backend=b),
             lambda b: obj.fd_ssmvr_loss(lambda z: -z * model.log_density(z)[:, None], x, v=v, backend=b)]
    for call in calls:
        results = {}
        for backend in ("torch", "auto", "triton"):
            try:
                loss = call(backend)
            except RuntimeError as err:
                assert backend == "triton", err
                continue
            results[backend] = (loss, torch.autograd.grad(loss, list(model.parameters())))
        ref_loss, ref_grads = results.pop("torch")
        for loss, grads in results.values():
            torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
            for g, r in zip(grads, ref_grads, strict=True):
                torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-12 + 1e-9 * r.abs().max().item())


@pytest.mark.parametrize("call, message", [
    (lambda ld, x: obj.dsm_loss(ld, x, 0.0), "sigma > 0"),
    (lambda ld, x: obj.fd_dsm_loss(ld, x, torch.tensor([0.1, -0.1, 0.2])), "sigma > 0 and finite, got -0.1"),
    (lambda ld, x: obj.dsm_loss(ld, x, torch.tensor([0.1, float("inf"), 0.2])), "finite, got inf"),
    (lambda ld, x: obj.fd_ssm_loss(ld, x, eps=0.0), "eps > 0"),
    (lambda ld, x: obj.ssm_loss(ld, x, eps=-1.0), "eps > 0"),
    (lambda ld, x: obj.ssm_loss(lambda z: z, x), "log_density to map"),
    (lambda ld, x: obj.fd_ssm_loss(lambda z: z.sum(), x), "log_density to map (9, 2) to (9,)"),
    (lambda ld, x: obj.fd_ssm_loss(lambda z: z, x), "stacked into one batch: N = points x batch"),
    (lambda ld, x: obj.fd_ssm_loss(lambda z: z, x, serial=True), "map (3, 2) to (3,), one value per sample, got "
                                                                  "(3, 2)"),
    (lambda ld, x: obj.fd_ssmvr_loss(lambda z: z[:, :1], x), "score to map (6, 2) to the same shape"),
    (lambda ld, x: obj.ssm_loss(ld, x, v=torch.ones(2, 2)), "expected v of x's shape"),
    (lambda ld, x: obj.ssm_loss(ld, x, noise="uniform"), "noise"),
    (lambda ld, x: obj.ssm_loss(ld, x, method="jet"), "expected method in ('reverse', 'taylor')"),
    (lambda ld, x: obj.sm_loss(ld, x, reduction="sum"), "reduction"),
    (lambda ld, x: obj.fd_ssm_loss(ld, x, backend="cuda"), "backend"),
    (lambda ld, x: obj.ssm_loss(ld, x[0]), "(B, *event)"),
])
def test_bad_input_gets_a_clear_error(call, message):
    log_density = lambda z: -0.5 * z.pow(2).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        call(log_density, torch.randn(3, 2))


def test_registry_lists_every_objective():
    assert {"sm", "ssm", "fd-ssm", "dsm", "fd-dsm", "ssmvr", "ssmvr-score", "fd-ssmvr", "annealed-ssmvr",
            "annealed-fd-ssmvr", "annealed-dsm", "multiscale-dsm", "multiscale-fd-dsm", "mle"} <= set(
        obj.OBJECTIVES.names())
