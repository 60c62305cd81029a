"""The NICE baselines of table 3: approximate backprop is exact where no off-diagonal term exists, curvature
propagation is unbiased for exact score matching, and both train like the other objectives."""

import pytest
import torch
from torch.func import hessian, jacrev

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


def _diagonal_back(op, inputs, g, diag):
    """Becker & LeCun's rule through one op, from its full Jacobian and Hessians: (g, D) at the op's output ->
    at its input, keeping only the diagonal of J^T diag(D) J + sum_k g_k H_k."""
    jac = jacrev(op)(inputs)  # (out, in)
    curvature = torch.einsum("k,kij->ij", g, hessian(op)(inputs))
    return jac.T @ g, (jac.T @ torch.diag(diag) @ jac + curvature).diagonal()


def _approx_bp_reference(model, x):
    """approx_bp_loss for one sample x: (d,), with every op's rule taken from autograd instead of by hand."""
    half = len(x) // 2
    h1, h2 = x[model.permutation].split(half)
    layer_inputs = []  # per coupling, the input of each of its layers
    for k, mlp in enumerate(model.couplings):
        inputs = [h1 if k % 2 == 0 else h2]
        for layer in mlp:
            inputs.append(layer(inputs[-1]))
        layer_inputs.append(inputs[:-1])
        h1, h2 = (h1, h2 + inputs[-1]) if k % 2 == 0 else (h1 + inputs[-1], h2)
    h = torch.cat([h1, h2])
    g, diag = _diagonal_back(lambda h: model.log_density_of(h.unsqueeze(0) * model.log_scale.exp(), 0.0),
                             h, torch.ones(1, dtype=h.dtype), torch.zeros(1, dtype=h.dtype))
    g1, g2, d1, d2 = g[:half], g[half:], diag[:half], diag[half:]
    for k in reversed(range(len(model.couplings))):
        gm, dm = (g2, d2) if k % 2 == 0 else (g1, d1)  # the shifted half feeds the shift network's output
        for layer, inputs in zip(reversed(model.couplings[k]), reversed(layer_inputs[k]), strict=True):
            gm, dm = _diagonal_back(layer, inputs, gm, dm)
        if k % 2 == 0:
            g1, d1 = g1 + gm, d1 + dm
        else:
            g2, d2 = g2 + gm, d2 + dm
    return (d1.sum() + d2.sum() + 0.5 * (g1.pow(2).sum() + g2.pow(2).sum())) / len(x)


def test_approx_bp_applies_becker_lecun_through_every_layer_and_coupling():
    model = _nice(1, dim=6, hidden=4, n_layers=3, n_couplings=3)  # both coupling kinds, wide layers: not exact
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        reference = torch.stack([_approx_bp_reference(model, xb) for xb in x])
    torch.testing.assert_close(obj.approx_bp_loss(model, x, reduction="none"), reference, rtol=1e-10, atol=1e-12)
    exact = obj.sm_loss(model.log_density, x, reduction="none") / 6
    assert not torch.allclose(reference, exact)  # the dropped off-diagonal terms matter here


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


def test_curvature_propagation_parameter_gradients_are_unbiased():
    # Its directions F u depend on the parameters (through softplus'' and dlog p/da); the gradient must flow
    # through them too. Seeded: the 80,000-draw average is 0.15% off the exact gradient; without that flow, 2%.
    model = _nice(1, dim=4, hidden=3, n_layers=3, n_couplings=2)
    x = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    torch.manual_seed(1)
    average = torch.autograd.grad(obj.cp_loss(model, x.expand(80_000, 4).clone()), params)
    exact = torch.autograd.grad(obj.sm_loss(model.log_density, x) / 4, params, allow_unused=True,
                                materialize_grads=True)
    average, exact = torch.cat([g.flatten() for g in average]), torch.cat([g.flatten() for g in exact])
    assert (average - exact).norm() < 0.01 * exact.norm()


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
