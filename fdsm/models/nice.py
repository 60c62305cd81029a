r"""NICE (Dinh et al.), the flow of paper section 6.2, with an exact log-density.

The input x (d = 784 logit-space MNIST values at paper size) is permuted (even indices first, then odd), split in
halves (x_1, x_2), and passed through K additive coupling layers that alternate which half they shift, then an
elementwise scale:

.. math::
    \text{even } k:\ x_2 \leftarrow x_2 + m_k(x_1), \qquad \text{odd } k:\ x_1 \leftarrow x_1 + m_k(x_2), \qquad
    y = \exp(s) \odot x,

    \log p(x) = -\tfrac d2 \log 2\pi - \tfrac12 \lVert y \rVert^2 + \textstyle\sum_i s_i .

An additive coupling has a unit Jacobian determinant, so the log-determinant is exactly sum(s) (paper appendix C.2:
log p(x) = log p_0(z) + log det(dz/dx)). Each m_k is an MLP of ``n_layers`` linear layers, d/2 -> hidden -> ... ->
d/2, with softplus between them; s starts at 0. Paper size: 4 couplings of 5 layers of 1000 units, 15,154,352
parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fdsm.models.spec import check_event, register_model


@dataclass(frozen=True)
class NICEConfig:
    dim: int = 784  # d, even; the input is (B, d) in logit space (fdsm.data's NICE preprocessing)
    hidden: int = 1000  # units of each hidden layer of a coupling MLP
    n_layers: int = 5  # linear layers per coupling MLP (n_layers - 1 hidden layers)
    n_couplings: int = 4

    def __post_init__(self):
        if self.dim < 2 or self.dim % 2:
            raise ValueError(
                f"NICEConfig(dim={self.dim}): expected an even dim >= 2 (the couplings split it in halves)"
            )
        if self.hidden < 1 or self.n_layers < 2 or self.n_couplings < 1:
            raise ValueError(
                f"NICEConfig(hidden={self.hidden}, n_layers={self.n_layers}, n_couplings={self.n_couplings}): "
                "expected hidden >= 1, n_layers >= 2, n_couplings >= 1"
            )

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)


def _coupling_mlp(half: int, hidden: int, n_layers: int) -> nn.Sequential:
    """m_k: half -> hidden -> ... -> hidden -> half, ``n_layers`` linear layers with softplus between them."""
    widths = [half] + [hidden] * (n_layers - 1) + [half]
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(w_in, w_out))
        if i < n_layers - 1:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class NICE(nn.Module):
    """Interface: ``log_density(x)`` (exact, normalized in the input space), (B, d) -> (B,); ``forward(x)`` is
    ``log_density``; ``transform(x)`` gives y and the log-determinant."""

    def __init__(self, config: NICEConfig):
        super().__init__()
        self.config = config
        half = config.dim // 2
        self.couplings = nn.ModuleList(
            _coupling_mlp(half, config.hidden, config.n_layers) for _ in range(config.n_couplings)
        )
        self.log_scale = nn.Parameter(torch.zeros(config.dim))  # s
        order = torch.arange(config.dim)
        self.register_buffer("permutation", torch.cat([order[0::2], order[1::2]]), persistent=False)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.config.event_shape

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, d) -> (y: (B, d), log|det dy/dx|: 0-d, the same for every sample)."""
        check_event("NICE", x, self.event_shape)
        x1, x2 = x[:, self.permutation].chunk(2, dim=1)  # (B, d/2) each
        for k, shift in enumerate(self.couplings):
            if k % 2 == 0:
                x2 = x2 + shift(x1)
            else:
                x1 = x1 + shift(x2)
        y = torch.cat([x1, x2], dim=1) * self.log_scale.exp()  # (B, d)
        return y, self.log_scale.sum()

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(y; 0, I) + sum(s): (B, d) -> (B,)."""
        return self.log_density_of(*self.transform(x))

    def log_density_of(self, y: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        """log p from ``transform``'s outputs: log N(y; 0, I) + log_det, (B, d), 0-d -> (B,)."""
        return -0.5 * y.pow(2).sum(1) - 0.5 * self.config.dim * math.log(2 * math.pi) + log_det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_density(x)


register_model(
    "nice",
    NICE,
    paper=NICEConfig(dim=784, hidden=1000, n_layers=5, n_couplings=4),
    cpu=NICEConfig(dim=784, hidden=64, n_layers=5, n_couplings=4),
    interface="log_density",
    summary="NICE flow on logit-space MNIST, exact log p",
)
