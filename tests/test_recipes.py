"""The recipe table's hooks and a user's model's recipes: each gives a finite loss with finite gradients."""

import dataclasses

import pytest
import torch
from torch import nn

from fdsm.recipes import RECIPES, recipe_available, user_recipes

DIM = 3


class TinyLogDensity(nn.Module):
    """log p(x) = -softplus MLP(x): (B, 3) -> (B,)."""

    event_shape = (DIM,)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 8), nn.Softplus(), nn.Linear(8, 1))

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        return -self.net(x).squeeze(1)  # (B, 1) -> (B,)


class TinyScore(nn.Module):
    """s(x) = softplus MLP(x): (B, 3) -> (B, 3)."""

    event_shape = (DIM,)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 8), nn.Softplus(), nn.Linear(8, DIM))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


USER_ROWS = {
    "log-density": (TinyLogDensity, {"DSM", "SSM", "SSM-Taylor", "SSMVR", "FD-SSM", "FD-DSM"}),
    "energy": (TinyLogDensity, {"DSM", "SSM", "SSM-Taylor", "SSMVR", "FD-SSM", "FD-DSM"}),
    "score": (TinyScore, {"DSM", "SSMVR", "SSMVR-Taylor", "FD-SSMVR"}),
}


@pytest.mark.parametrize("interface", sorted(USER_ROWS))
def test_every_user_recipe_gives_a_finite_scalar_loss_with_finite_gradients(interface):
    cls, objectives = USER_ROWS[interface]
    recipes = user_recipes("tiny", cls, interface, batch=16, lr=0.01)
    assert set(recipes) == objectives
    for objective, recipe in recipes.items():
        assert (recipe.name, recipe.table, recipe.batch, recipe.optim.lr) == (f"tiny/{objective}", "user", 16, 0.01)
        assert recipe_available(recipe) == (True, "")
        torch.manual_seed(0)
        model = recipe.build_model("paper")  # the factory builds it, whatever the size
        assert isinstance(model, cls)
        x = torch.randn(recipe.batch, DIM, generator=torch.Generator().manual_seed(1))
        recipe.prepare_model(model, x)  # no hook: nothing to do
        loss = recipe.loss(model, x)
        # the last bias of a log-density shifts log p and no score: it gets no gradient
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)
        assert loss.shape == () and torch.isfinite(loss), (objective, loss)
        assert all(torch.isfinite(g).all() for g in grads), objective


def test_user_recipes_default_to_adam_at_1e_3_and_check_their_arguments():
    recipe = user_recipes("tiny", TinyScore, "score", batch=8)["FD-SSMVR"]
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.clip) == ("adam", 1e-3, None)
    with pytest.raises(ValueError, match="expected interface in .*'score'.*got 'scores'"):
        user_recipes("tiny", TinyScore, "scores", batch=8)
    with pytest.raises(ValueError, match="expected batch to be a positive int, got 0"):
        user_recipes("tiny", TinyScore, "score", batch=0)


def test_an_unregistered_model_without_a_factory_is_unavailable_with_the_reason():
    recipe = dataclasses.replace(RECIPES.get("nice/FD-SSM"), model="no-such-model")
    available, reason = recipe_available(recipe)
    assert not available and "'no-such-model' is not registered" in reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_dkef_recipes_prepare_sets_the_inducing_points_from_rows_like_the_batch(dtype):
    recipe = RECIPES.get("dkef/FD-SSM")
    torch.manual_seed(0)
    model = recipe.build_model("cpu").to(dtype)
    before = model.inducing.detach().clone()
    x = torch.rand(4, *model.event_shape, dtype=dtype)
    recipe.prepare_model(model, x)
    assert model.inducing.dtype == dtype and not torch.equal(model.inducing, before)
    assert RECIPES.get("nice/FD-SSM").prepare is None  # only the rows whose model needs one have a hook
