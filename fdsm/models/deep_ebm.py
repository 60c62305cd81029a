r"""The deep EBM of paper section 6.1: "Res18_Quadratic", an 18-layer pre-activation ResNet energy (Li et al.).

.. math::
    h = \mathrm{ResNet}(x) \in \mathbb{R}^F, \qquad
    E(x) = (w_1^\top h + b_1)(w_2^\top h + b_2) + w_3^\top (h \odot h) + b_3, \qquad \log \tilde p(x) = -E(x).

Architecture (paper appendix C.2; the released ``DeepEBM/ESM/models.py``), with n = ``n_chan``:

- stem: 3x3 conv C -> n with bias, no activation after it;
- nine pre-activation residual blocks, no normalization: a down block n -> 2n, then two 2n -> 2n; down 2n -> 4n,
  two 4n -> 4n; down 4n -> 8n, two 8n -> 8n (128 -> 1024 channels at n = 128, 32x32 -> 4x4);
- block main path: act -> 3x3 conv C_in -> C_in (no bias) -> act -> 3x3 conv C_in -> C_out (bias) [-> 2x2 avg pool];
  shortcut: [2x2 avg pool ->] a learned 1x1 conv C_in -> C_out with bias, *also* when C_in = C_out;
- the last block's output is flattened, with no activation, to F = (H/8)(W/8)·8n features for the quadratic head.

The released runs used the normalized softplus (softplus - log 2); the paper's text says ELU. Both are selectable.
The released class also builds LayerNorm modules that it never applies; they are left out, so the parameter count
is the "in use" count: 62,336,771 at 32x32x1 and n = 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fdsm.models.activations import activation, check_activation
from fdsm.models.energy import EnergyModel
from fdsm.models.spec import register_model


@dataclass(frozen=True)
class DeepEBMConfig:
    in_channels: int = 1  # 1 for (Fashion-)MNIST padded to 32x32, 3 for CIFAR-10 / SVHN / CelebA32
    image_size: int = 32  # H = W; must be divisible by 8 (three down blocks)
    n_chan: int = 128  # n: channels after the stem; the blocks widen to 2n, 4n, 8n
    activation: str = "nsoftplus"  # the released runs; "elu" is the paper text's choice

    def __post_init__(self):
        if self.image_size % 8 or self.image_size < 8:
            raise ValueError(
                f"DeepEBMConfig(image_size={self.image_size}): expected a multiple of 8 (three 2x down-sampling blocks)"
            )
        if self.in_channels < 1 or self.n_chan < 1:
            raise ValueError(f"DeepEBMConfig(in_channels={self.in_channels}, n_chan={self.n_chan}): expected >= 1")
        check_activation("DeepEBMConfig", self.activation)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)


class PreActBlock(nn.Module):
    """x -> shortcut(x) + main(x), without normalization; ``down`` halves H and W by 2x2 average pooling.

    (B, C_in, H, W) -> (B, C_out, H', W') with H' = H/2 when ``down`` else H.
    """

    def __init__(self, c_in: int, c_out: int, *, down: bool, act: str):
        super().__init__()
        self.down = down
        self.act1, self.act2 = activation(act), activation(act)
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)  # learned even when c_in == c_out, as released

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(h, 2) if self.down else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self._pool(self.conv2(self.act2(self.conv1(self.act1(x)))))
        return self.shortcut(self._pool(x)) + main


class QuadraticHead(nn.Module):
    r"""E = (w_1^T h + b_1)(w_2^T h + b_2) + w_3^T (h * h) + b_3: (B, F) -> (B,)."""

    def __init__(self, features: int):
        super().__init__()
        self.linear1 = nn.Linear(features, 1)  # w_1, b_1
        self.linear2 = nn.Linear(features, 1)  # w_2, b_2
        self.quadratic = nn.Linear(features, 1)  # w_3, b_3

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        energy = self.linear1(h) * self.linear2(h) + self.quadratic(h * h)  # (B, 1)
        return energy.squeeze(1)


class DeepEBM(EnergyModel):
    """Res18_Quadratic. Interface: ``energy(x)``, ``log_density(x) = -energy(x)`` (unnormalized), x: (B, C, H, W)
    in [0, 1] -> (B,); ``forward`` is ``log_density``."""

    def __init__(self, config: DeepEBMConfig):
        super().__init__()
        self.config = config
        n, act = config.n_chan, config.activation
        self.stem = nn.Conv2d(config.in_channels, n, 3, padding=1)
        stages = []
        for c_in, c_out in ((n, 2 * n), (2 * n, 4 * n), (4 * n, 8 * n)):
            stages += [
                PreActBlock(c_in, c_out, down=True, act=act),
                PreActBlock(c_out, c_out, down=False, act=act),
                PreActBlock(c_out, c_out, down=False, act=act),
            ]
        self.blocks = nn.Sequential(*stages)
        side = config.image_size // 8
        self.head = QuadraticHead(side * side * 8 * n)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): (B, C, H, W) -> (B,)."""
        h = self.blocks(self.stem(x))  # (B, 8n, H/8, W/8)
        return self.head(h.flatten(1))  # (B, F) -> (B,)


register_model(
    "deep-ebm",
    DeepEBM,
    paper=DeepEBMConfig(in_channels=1, image_size=32, n_chan=128),
    cpu=DeepEBMConfig(in_channels=1, image_size=32, n_chan=8),
    interface="log_density",
    summary="Res18_Quadratic energy (MNIST 32x32x1), log p = -E",
)
