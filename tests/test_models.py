"""Models: registry and build, closed forms of the toy models, parameter counts, forward and backward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fdsm.models import MODELS, build, model_config, parameter_count
from fdsm.models.gaussian import Gaussian


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- registry and build ------------------------------------------------------------------------------------------


def test_build_rejects_unknown_override_and_size_and_name():
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['widht'\].*accepts"):
        build("mlp-ebm", size="cpu", widht=3)
    with pytest.raises(ValueError, match="expected size in"):
        build("mlp-ebm", size="huge")
    with pytest.raises(ValueError, match="unknown model 'resnet'; expected one of"):
        build("resnet")
    with pytest.raises(ValueError, match="activation='gelu'.*expected one of"):
        build("mlp-ebm", activation="gelu")


# ---- Gaussian toy: log_density, score and the closed-form objectives ----------------------------------------------


def _random_gaussian(d: int = 5) -> Gaussian:
    g = _seeded(1)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    precision = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    return Gaussian.from_moments(torch.randn(d, generator=g, dtype=torch.float64), precision)


def test_gaussian_log_density_and_score_match_closed_forms():
    model = _random_gaussian()
    x = torch.randn(7, 5, generator=_seeded(2), dtype=torch.float64, requires_grad=True)
    reference = torch.distributions.MultivariateNormal(model.mean, precision_matrix=model.precision())
    torch.testing.assert_close(model.log_density(x), reference.log_prob(x))
    (autograd_score,) = torch.autograd.grad(model.log_density(x).sum(), x)
    torch.testing.assert_close(model.score(x), autograd_score)
    assert model.score(x).shape == (7, 5)


def test_gaussian_per_sample_objectives_match_autograd():
    model = _random_gaussian()
    x = torch.randn(3, 5, generator=_seeded(3), dtype=torch.float64)
    hessian_trace = torch.stack([torch.func.hessian(lambda z: model.log_density(z[None])[0])(row).trace() for row in x])
    torch.testing.assert_close(model.sm_per_sample(x), hessian_trace + 0.5 * model.score(x).pow(2).sum(1))


def test_gaussian_expectations_are_exact_on_symmetric_designs():
    """Averages over designs with exactly the required moments reproduce the expected objectives exactly."""
    d, eps, sigma = 5, 0.3, 0.7
    model = _random_gaussian(d)
    x = torch.randn(50, d, generator=_seeded(4), dtype=torch.float64)
    mean, cov = x.mean(0), torch.cov(x.T, correction=0)  # empirical moments, so the expectation is the batch mean
    torch.testing.assert_close(model.sm_per_sample(x).mean(), model.expected_sm(mean, cov))

    # v in {+-eps e_k}: E[v v^T] = (eps^2 / d) I and C_v = eps^2, so mean integrand / C_v = J_SM / d.
    basis = torch.eye(d, dtype=torch.float64)
    directions = eps * torch.cat([basis, -basis])  # (2d, d)
    x_rep, v = x.repeat_interleave(2 * d, 0), directions.repeat(len(x), 1)  # (50 * 2d, d) each
    torch.testing.assert_close(model.ssm_integrand(x_rep, v).mean() / eps**2, model.expected_ssm(mean, cov))

    # xi in {+-sqrt(d) e_k}: mean 0 and E[xi xi^T] = I.
    x_noisy = x_rep + sigma * math.sqrt(d) * v / eps
    torch.testing.assert_close(model.dsm_per_sample(x_rep, x_noisy, sigma).mean(), model.expected_dsm(mean, cov, sigma))


def test_gaussian_rejects_wrong_event_shape():
    with pytest.raises(ValueError, match=r"Gaussian: expected x of shape \(B, 20\), got \(4, 3\)"):
        build("gaussian").log_density(torch.zeros(4, 3))


# ---- NICE: the exact log-density is normalized ------------------------------------------------------------------


def test_nice_2d_density_integrates_to_one():
    torch.manual_seed(0)
    model = build("nice", size="cpu", dim=2, hidden=16).double()
    with torch.no_grad():
        model.log_scale.copy_(torch.tensor([0.4, -0.3]))  # a non-trivial log-determinant
        grid = torch.linspace(-12, 12, 601, dtype=torch.float64)
        points = torch.cartesian_prod(grid, grid)  # (601^2, 2)
        density = model.log_density(points).exp().reshape(601, 601)
    cell = (grid[1] - grid[0]) ** 2
    assert abs(float(density.sum() * cell) - 1.0) < 1e-3


# ---- DKEF: the closed-form alpha minimizes the sliced SM objective -------------------------------------------------


@pytest.mark.parametrize("alpha_fit", ["sliced", "sliced-vr"])
def test_dkef_closed_form_alpha_equals_direct_least_squares(alpha_fit):
    """J(alpha), the SM objective plus the ridge, computed by autograd through log_density, is quadratic in alpha;
    its minimizer by a least-squares solve of (d^2J) alpha = -dJ(0) must equal solve_alpha. Sliced (eq. (3)):
    v^T H v + (v^T s)^2 / 2; variance-reduced (eq. (11)): v^T H v + ||s||^2 / 2."""
    torch.manual_seed(0)
    model = build("dkef", size="cpu", dim=3, n_inducing=6, alpha_fit=alpha_fit).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    v = torch.randint(0, 2, x.shape).double() * 2 - 1

    def objective(alpha: torch.Tensor) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(model.log_density(xg, alpha).sum(), xg, create_graph=True)
        (hvp,) = torch.autograd.grad((score * v).sum(), xg, create_graph=True)
        square = (score * v).sum(1).pow(2) if alpha_fit == "sliced" else score.pow(2).sum(1)
        integrand = (hvp * v).sum(1) + 0.5 * square
        return integrand.mean() + 0.5 * 10.0**model.log_lambda * alpha.pow(2).sum()

    zero = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(objective(zero), zero, create_graph=True)  # dJ(0): (M,)
    hessian = torch.stack([torch.autograd.grad(gradient[m], zero, retain_graph=True)[0] for m in range(6)])
    direct = torch.linalg.lstsq(hessian, -gradient[:, None]).solution[:, 0]
    torch.testing.assert_close(model.solve_alpha(x, v), direct.detach())


def test_dkef_log_density_without_alpha_says_how_to_get_one():
    model = build("dkef", size="cpu")
    with pytest.raises(RuntimeError, match="alpha is not fitted; pass alpha=model.solve_alpha"):
        model.log_density(torch.zeros(2, 15))
    model.fit_alpha(torch.randn(8, 15))
    assert model.log_density(torch.zeros(2, 15)).shape == (2,)


# ---- parameter counts at size "paper" (built on the meta device: no memory, no init cost) ------------------------

# The released code's counts (paper-code-notes section 2), each with the config overrides it was counted at.
PAPER_COUNTS = {
    "deep-ebm": (62_336_771, {}),  # 32x32x1, the parameters in use
    "nice": (15_154_352, {}),
    "dkef": (11_377, {}),  # D = 15
    "ncsn": (30_117_635, {}),  # ngf 128, CIFAR-10
    "vae-encoder": (283_168, {}),  # MNIST
    "vae-decoder": (275_728, {}),
    "vae-score": (283_168, {}),
    "wae-score": (82_464, {}),
    "wae-encoder": (274_976, {}),
    "wae-decoder": (275_728, {}),
}
CELEBA_COUNTS = {
    "vae-encoder": 8_654_560,
    "vae-decoder": 4_576_387,
    "vae-score": 8_654_560,
    "wae-score": 8_649_760,
    "wae-encoder": 8_517_792,
    "wae-decoder": 4_576_387,
}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_parameter_counts_match_released_code(name):
    expected, overrides = PAPER_COUNTS[name]
    with torch.device("meta"):
        count = parameter_count(build(name, size="paper", **overrides))
    assert abs(count - expected) <= 0.01 * expected, f"{name}: {count:,} parameters, released code has {expected:,}"


@pytest.mark.parametrize("name", sorted(CELEBA_COUNTS))
def test_celeba_configuration_parameter_counts(name):
    with torch.device("meta"):
        assert parameter_count(build(name, dataset="celeba")) == CELEBA_COUNTS[name]


def test_ncsn_rejects_a_sigma_off_its_ladder_and_repeats_sigma_for_concatenated_batches():
    model = build("ncsn", size="cpu")
    with pytest.raises(ValueError, match="sigma=0.5 is not a noise level of this model"):
        model.score(torch.rand(2, 3, 32, 32), 0.5)
    sigma = model.sigmas[[0, 9]]
    assert torch.equal(model.levels(sigma, 6), torch.tensor([0, 9, 0, 9, 0, 9]))


def test_a_build_override_of_the_wrong_type_names_the_field_and_its_type():
    with pytest.raises(TypeError, match=r"expected hidden to be a tuple of ints \(MLPEBMConfig.hidden\), got float"):
        build("mlp-ebm", size="cpu", hidden=2.5)
    with pytest.raises(TypeError, match=r"expected dim to be an int \(MLPEBMConfig.dim\), got bool True"):
        build("mlp-ebm", size="cpu", dim=True)
    with pytest.raises(TypeError, match=r"expected activation to be a string"):
        model_config("mlp-ebm", "cpu", activation=1)
    assert model_config("mlp-ebm", "cpu", hidden=[4, 4]).hidden == (4, 4)  # a list still fits a tuple field
    assert model_config("dkef", "cpu", q0_sigma=2).q0_sigma == 2  # and an int a float one
    assert model_config("deep-ebm", "cpu", n_chan=np.int64(2)).n_chan == 2  # numpy's integers too


# ---- every model: forward and backward at size "cpu" --------------------------------------------------------------


def _output(name: str, model: torch.nn.Module, batch: int) -> torch.Tensor:
    """Call the model the way the objectives do, on a random batch of its input shape."""
    x = torch.rand(batch, *model.event_shape, generator=_seeded(5))
    if name == "dkef":  # alpha is solved in closed form on a batch, then used on another
        out = model.log_density(x, model.solve_alpha(torch.randn_like(x)))
    elif name == "ncsn":  # one noise level per sample
        out = model.score(x, model.sigmas[torch.arange(batch) % len(model.sigmas)])
    elif name == "vae-score":  # z conditioned on data x
        out = model.score(x, torch.rand(batch, *model.config.data_shape, generator=_seeded(6)))
    elif name == "wae-score":
        out = model.score(x)
    else:
        out = model(x)
    expected = {"log_density": (batch,), "score": x.shape}.get(MODELS.get(name).interface)
    assert expected is None or out.shape == expected, name
    return out


@pytest.mark.parametrize("name", MODELS.names())
def test_cpu_size_forward_and_backward(name):
    torch.manual_seed(0)
    model = build(name, size="cpu")
    assert parameter_count(model) > 0
    out = _output(name, model, batch=3)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), name


# Paper-size forwards that take well under a few seconds on 2 CPU cores.
PAPER_FORWARD = [name for name in MODELS.names() if name != "dkef"]  # dkef: ~2 s for its kernel


@pytest.mark.parametrize("name", PAPER_FORWARD)
def test_paper_size_forward(name):
    torch.manual_seed(0)
    model = build(name, size="paper")
    with torch.no_grad():
        assert torch.isfinite(_output(name, model, batch=2)).all()


def test_models_command_writes_one_row_per_model_and_size(tmp_path, capsys):
    import pandas as pd

    from bench.commands import models as command
    from bench.config import Shared

    path = tmp_path / "models.csv"
    assert command.run(command.ModelsConfig(csv=path), Shared()) == 0
    table = pd.read_csv(path)
    assert len(table) == 2 * len(MODELS.names())
    paper = table[table["size"] == "paper"].set_index("model")
    assert paper.loc["nice", "parameters"] == 15_154_352 and paper.loc["deep-ebm", "input_shape"] == "1x32x32"
    assert "62,336,771" in capsys.readouterr().out


def test_ncsn_conditions_each_sample_on_its_own_levels_embedding_row():
    from fdsm.models.ncsn import CondInstanceNormPlus

    torch.manual_seed(0)
    model = build("ncsn", size="cpu").double()
    x = torch.rand(2, *model.event_shape, dtype=torch.float64)
    labels = torch.tensor([2, 2])
    before = model(x, labels)
    norms = [m for m in model.modules() if isinstance(m, CondInstanceNormPlus)]
    with torch.no_grad():
        for norm in norms:
            norm.embed.weight[3] += 0.5  # another level's row: this output must not move
    torch.testing.assert_close(model(x, labels), before, rtol=0, atol=0)
    with torch.no_grad():
        for norm in norms:
            norm.embed.weight[2] += 0.5  # its own row
    assert (model(x, labels) - before).abs().max() > 1e-3


def test_deep_ebm_block_and_quadratic_head_compute_their_documented_formulas():
    import torch.nn.functional as F

    from fdsm.models.deep_ebm import PreActBlock, QuadraticHead

    torch.manual_seed(0)
    block = PreActBlock(2, 3, down=True, act="elu").double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    act = torch.nn.functional.elu
    main = F.conv2d(act(F.conv2d(act(x), block.conv1.weight, padding=1)), block.conv2.weight, block.conv2.bias,
                    padding=1)
    expected = F.conv2d(F.avg_pool2d(x, 2), block.shortcut.weight, block.shortcut.bias) + F.avg_pool2d(main, 2)
    torch.testing.assert_close(block(x), expected)

    head = QuadraticHead(5).double()
    h = torch.randn(3, 5, dtype=torch.float64)
    w1, w2, w3 = (m.weight[0] for m in (head.linear1, head.linear2, head.quadratic))
    b1, b2, b3 = (m.bias[0] for m in (head.linear1, head.linear2, head.quadratic))
    torch.testing.assert_close(head(h), (h @ w1 + b1) * (h @ w2 + b2) + (h * h) @ w3 + b3)
