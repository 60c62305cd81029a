"""The NICE baselines of table 3: approximate backprop is exact where no off-diagonal term exists, curvature
propagation is unbiased for exact score matching, and both train like the other objectives."""

import pytest
import torch

from fdsm import objectives as obj
from fdsm.models import build


def _nice(seed: int, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build("nice", size="cpu", **config).double()
    with torch.no_grad():
        model.log_scale.normal_(0, 0.3)  # s = 0 at initialization; a non-trivial scale tests its backward
    return model


def test_approx_bp_is_exact_score_matching_when_every_layer_is_one_unit_wide():
    # One coupling (no off-diagonal Hessian terms at its output) and scalar halves and hidden units (none inside).
    model = _nice(0, dim=2, hidden=1, n_layers=3, n_couplings=1)
    x = torch.randn(6, 2, dtype=torch.float64)
    exact = obj.sm_loss(model.log_density, x, reduction="none") / 2  # eq. (1) over d
    torch.testing.assert_close(obj.approx_bp_loss(model, x, reduction="none"), exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_curvature_propagation_is_unbiased_for_exact_score_matching(seed):
    model = _nice(seed, dim=4, hidden=3, n_layers=3, n_couplings=2)
    x = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    draws = obj.cp_loss(model, x.expand(20_000, 4).clone(), reduction="none")  # independent u per row
    exact = (obj.sm_loss(model.log_density, x) / 4).item()
    standard_error = draws.std().item() / len(draws) ** 0.5
    assert draws.std() > 0  # it is a random estimate ...
    assert abs(draws.mean().item() - exact) < 4 * standard_error  # ... of the exact value


@pytest.mark.parametrize("loss", [obj.approx_bp_loss, obj.cp_loss])
def test_baselines_give_per_sample_values_and_parameter_gradients(loss):
    model = _nice(0, dim=6, hidden=5, n_layers=3, n_couplings=3)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert loss(model, x, reduction="none").shape == (4,)
    grads = torch.autograd.grad(loss(model, x), list(model.parameters()), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("loss", [obj.approx_bp_loss, obj.cp_loss])
def test_baselines_reject_a_model_that_is_not_nice(loss):
    with pytest.raises(TypeError, match="expected a NICE model"):
        loss(build("gaussian", size="cpu", dim=2), torch.randn(3, 2))
