r"""A small MLP energy-based model: E(x) = MLP(x), a scalar per sample, and log p~(x) = -E(x).

.. math::
    h_0 = x, \quad h_{l} = a(W_l h_{l-1} + b_l) \ (l = 1..L), \quad E(x) = w^\top h_L + b.

With a smooth activation (softplus by default) E has derivatives of every order, which the T-th order directional
derivative benchmarks need. This is a toy: no paper configuration exists; "paper" is a 2-D density model with three
hidden layers of 128 units, "cpu" is narrower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fdsm.models.activations import activation, check_activation
from fdsm.models.energy import EnergyModel
from fdsm.models.spec import register_model


@dataclass(frozen=True)
class MLPEBMConfig:
    dim: int = 2  # event dimension d; the model's input is (B, d)
    hidden: tuple[int, ...] = (128, 128, 128)  # widths of the hidden layers
    activation: str = "softplus"  # see fdsm.models.activations

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))  # accept lists from overrides
        if self.dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(
                f"MLPEBMConfig(dim={self.dim}, hidden={self.hidden}): expected dim >= 1 and at "
                "least one hidden layer of width >= 1"
            )
        check_activation("MLPEBMConfig", self.activation)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)


class MLPEBM(EnergyModel):
    """Energy MLP. Interface: ``energy(x)``, ``log_density(x) = -energy(x)`` (unnormalized); ``forward`` is
    ``log_density``."""

    def __init__(self, config: MLPEBMConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.dim
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), activation(config.activation)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): (B, d) -> (B,)."""
        return self.net(x).squeeze(1)  # (B, 1) -> (B,)


register_model(
    "mlp-ebm",
    MLPEBM,
    paper=MLPEBMConfig(dim=2, hidden=(128, 128, 128)),
    cpu=MLPEBMConfig(dim=2, hidden=(32, 32)),
    interface="log_density",
    summary="toy MLP energy, log p = -E, smooth activation",
)
