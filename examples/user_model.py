"""Bring your own model: copy this file, change the networks, and point the benchmarks at a factory.

    fdsm-bench derivatives --quick --model examples/user_model.py:make_model
    fdsm-bench eps-sweep   --quick --model examples/user_model.py:make_model
    fdsm-bench train-steps --quick --model examples/user_model.py:make_score_model --objectives SSMVR,FD-SSMVR
    python examples/user_model.py      # builds both models and runs the same check as the CLI

The contract (written down in full in ``fdsm/models/user.py``):

- ``forward(x)`` takes a batch x: (B, *event_shape). What it returns is named by the attribute ``interface``:
  ``"log-density"`` (the default): log p(x), shape (B,), unnormalized is fine; ``"energy"``: E(x), shape (B,),
  with log p = -E; ``"score"``: s(x) = grad_x log p(x), shape (B, *event_shape).
- ``event_shape`` is declared on the module (or given on the command line: ``--event-shape 16``).
- A factory takes no arguments and returns the module. The benchmarks seed torch before calling it.
- Use a smooth activation: the benchmarks take derivatives of order 1 to 4 or more in x, and ReLU's second
  derivative is zero almost everywhere.

Both networks are tiny (16 -> 32 -> ...), so ``--quick`` runs take seconds on a laptop CPU. For images, declare
``event_shape = (1, 28, 28)`` and take x: (B, 1, 28, 28) in forward (a conv net, or ``x.flatten(1)`` first).
"""

import torch
from torch import nn

DIM = 16  # the event dimension d: each sample is a vector of 16 numbers
HIDDEN = 32  # width of the hidden layer


class EnergyMLP(nn.Module):
    """E(x) = w2 . softplus(W1 x + b1) + b2, a scalar energy per sample; log p(x) = -E(x) up to a constant."""

    interface = "energy"  # forward returns E(x); "log-density" (the default) would mean forward returns log p(x)
    event_shape = (DIM,)  # x: (B, 16)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B, 1) -> (B,): one energy per sample, not (B, 1)


class ScoreMLP(nn.Module):
    """s(x) = W2 softplus(W1 x + b1) + b2, an estimate of grad_x log p(x), one vector per sample."""

    interface = "score"  # forward returns s(x), the same shape as x; such a model has no log-density
    event_shape = (DIM,)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 16) -> (B, 16)


def make_model() -> nn.Module:
    """The factory for ``--model examples/user_model.py:make_model``: a fresh energy model."""
    return EnergyMLP()


def make_score_model() -> nn.Module:
    """The factory for ``--model examples/user_model.py:make_score_model``: a fresh score network."""
    return ScoreMLP()


if __name__ == "__main__":
    from fdsm.models import UserModel, check_user_model

    for factory in (make_model, make_score_model):
        model = UserModel(factory())  # reads interface and event_shape from the module
        check_user_model(model)  # as the CLI checks: shape, finiteness and independent rows at batch 2 and 1
        x = torch.randn(4, *model.event_shape)  # (B, 16)
        print(f"{factory.__name__}: interface {model.interface!r}, event_shape {model.event_shape}, "
              f"score(x) {tuple(model.score(x).shape)}")
