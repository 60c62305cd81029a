r"""NCSN's score network, CondRefineNetDilated (Song and Ermon), used by paper section 6.4.

One network s_theta(x, sigma_i) estimates grad_x log p_{sigma_i}(x) for every noise level of a geometric ladder
sigma_1 = 1 > ... > sigma_L = 0.01 (L = 10). The level enters only through CondInstanceNorm++, whose per-level
embedding holds (gamma, alpha, beta) for each channel c:

.. math::
    \mu_c = \mathrm{mean}_{hw}\, x_c, \qquad
    h_c = \frac{x_c - \mu_c}{s_c} + \alpha_c \frac{\mu_c - \mathrm{mean}_c\,\mu}{\sqrt{\mathrm{var}_c\,\mu + 10^{-5}}},
    \qquad \mathrm{out}_c = \gamma_c h_c + \beta_c,

with (x_c - mu_c)/s_c the instance norm and gamma, alpha ~ N(1, 0.02), beta = 0 at init.

Architecture (paper appendix C.2, quoting Song and Ermon): x in [0, 1] is mapped to 2x - 1; a 3x3 stem to ngf
channels; four stages of two conditional pre-activation residual blocks (norm -> ELU -> conv, twice): ngf at full
resolution; down to 2ngf at half resolution (a conv followed by a 2x2 mean pool); then two stages at 2ngf whose
convs are dilated by 2 and 4 instead of down-sampling; a 4-cascaded RefineNet (per input two residual conv units,
multi-resolution fusion by bilinear resizing, chained residual pooling with 5x5 average pools); and
CondInstanceNorm++ -> ELU -> 3x3 conv back to the image channels. Paper size (ngf = 128, CIFAR-10 32x32x3, L = 10):
30,117,635 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fdsm.models.spec import check_event, match_batch, register_model


@dataclass(frozen=True)
class NCSNConfig:
    channels: int = 3  # image channels (3 for CIFAR-10, 1 for MNIST)
    image_size: int = 32  # H = W, even
    ngf: int = 128  # filters of the first cascade; the others have 2 ngf
    n_levels: int = 10  # L, the number of noise levels (the "classes" of the conditional norms)
    sigma_begin: float = 1.0  # sigma_1, the largest level
    sigma_end: float = 0.01  # sigma_L, the smallest level

    def __post_init__(self):
        if self.image_size % 2 or min(self.channels, self.ngf, self.n_levels) < 1:
            raise ValueError(f"{self}: expected an even image_size and positive channels, ngf and n_levels")
        if not self.sigma_begin > self.sigma_end > 0:
            raise ValueError(f"{self}: expected sigma_begin > sigma_end > 0")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)


def _conv3x3(c_in: int, c_out: int, *, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
    """3x3 conv that keeps the resolution (padding = dilation)."""
    return nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=bias)


class CondInstanceNormPlus(nn.Module):
    """CondInstanceNorm++ (module docstring): x: (B, C, H, W), labels: (B,) -> (B, C, H, W)."""

    def __init__(self, channels: int, n_levels: int):
        super().__init__()
        self.embed = nn.Embedding(n_levels, 3 * channels)  # (gamma, alpha, beta) per level
        nn.init.normal_(self.embed.weight[:, : 2 * channels], 1.0, 0.02)
        nn.init.zeros_(self.embed.weight[:, 2 * channels :])

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))  # mu_c: (B, C)
        spread = (means - means.mean(1, keepdim=True)) / torch.sqrt(means.var(1, keepdim=True) + 1e-5)  # (B, C)
        gamma, alpha, beta = self.embed(labels)[:, :, None, None].chunk(3, dim=1)  # (B, C, 1, 1) each
        h = F.instance_norm(x) + alpha * spread[:, :, None, None]
        return gamma * h + beta


class ConvMeanPool(nn.Module):
    """A conv that keeps the resolution, then the mean of the four stride-2 sub-grids: (B, C_in, H, W) ->
    (B, C_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)  # == (h[::2, ::2] + h[1::2, ::2] + h[::2, 1::2] + h[1::2, 1::2]) / 4


class CondResBlock(nn.Module):
    """norm -> ELU -> conv1 -> norm -> ELU -> conv2, plus a shortcut (a conv of the same kind when the width or the
    resolution changes). ``down`` halves the resolution, or with a ``dilation`` dilates the convs instead."""

    def __init__(self, c_in: int, c_out: int, n_levels: int, *, down: bool = False, dilation: int | None = None):
        super().__init__()
        mid = c_in if down else c_out  # width after conv1
        self.norm1, self.norm2 = CondInstanceNormPlus(c_in, n_levels), CondInstanceNormPlus(mid, n_levels)
        self.conv1 = _conv3x3(c_in, mid, dilation=dilation or 1)
        if down and dilation is None:
            self.conv2: nn.Module = ConvMeanPool(mid, c_out, 3)
            self.shortcut: nn.Module | None = ConvMeanPool(c_in, c_out, 1)
        else:
            self.conv2 = _conv3x3(mid, c_out, dilation=dilation or 1)
            self.shortcut = _conv3x3(c_in, c_out, dilation=dilation or 1) if (down or c_in != c_out) else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.elu(self.norm1(x, labels)))
        h = self.conv2(F.elu(self.norm2(h, labels)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class CondRCU(nn.Module):
    """Residual conv units: ``n_blocks`` times x <- x + (norm -> ELU -> 3x3 conv without bias) applied twice."""

    def __init__(self, channels: int, n_blocks: int, n_levels: int):
        super().__init__()
        self.norms = nn.ModuleList(CondInstanceNormPlus(channels, n_levels) for _ in range(2 * n_blocks))
        self.convs = nn.ModuleList(_conv3x3(channels, channels, bias=False) for _ in range(2 * n_blocks))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(self.convs), 2):
            h = self.convs[i](F.elu(self.norms[i](x, labels)))
            x = x + self.convs[i + 1](F.elu(self.norms[i + 1](h, labels)))
        return x


class CondCRP(nn.Module):
    """Chained residual pooling: x <- ELU(x); path <- x; twice: path <- conv(avgpool5(norm(path))), x <- x + path."""

    def __init__(self, channels: int, n_levels: int, n_stages: int = 2):
        super().__init__()
        self.norms = nn.ModuleList(CondInstanceNormPlus(channels, n_levels) for _ in range(n_stages))
        self.convs = nn.ModuleList(_conv3x3(channels, channels, bias=False) for _ in range(n_stages))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = path = F.elu(x)
        for norm, conv in zip(self.norms, self.convs, strict=True):
            path = conv(F.avg_pool2d(norm(path, labels), 5, stride=1, padding=2))
            x = x + path
        return x


class CondRefineBlock(nn.Module):
    """RefineNet block: CondRCU per input; with two inputs, multi-resolution fusion (norm -> 3x3 conv to
    ``features`` -> bilinear resize to the first input's size -> sum); CondCRP; an output CondRCU (three units in
    the last block, one otherwise). inputs: list of (B, C_i, H_i, W_i) -> (B, features, H_0, W_0)."""

    def __init__(self, in_channels: list[int], features: int, n_levels: int, *, end: bool = False):
        super().__init__()
        self.adapt = nn.ModuleList(CondRCU(c, 2, n_levels) for c in in_channels)
        fuse = len(in_channels) > 1
        self.fuse_norms = nn.ModuleList(CondInstanceNormPlus(c, n_levels) for c in in_channels) if fuse else None
        self.fuse_convs = nn.ModuleList(_conv3x3(c, features) for c in in_channels) if fuse else None
        self.crp = CondCRP(features, n_levels)
        self.output = CondRCU(features, 3 if end else 1, n_levels)

    def forward(self, inputs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        hs = [adapt(x, labels) for adapt, x in zip(self.adapt, inputs, strict=True)]
        if self.fuse_convs is None:
            h = hs[0]
        else:
            size = inputs[0].shape[2:]
            h = sum(
                F.interpolate(conv(norm(x, labels)), size=size, mode="bilinear", align_corners=True)
                for norm, conv, x in zip(self.fuse_norms, self.fuse_convs, hs, strict=True)
            )
        return self.output(self.crp(h, labels), labels)


class NCSN(nn.Module):
    """CondRefineNetDilated. Interface: ``score(x, sigma)``: x (B, C, H, W) in [0, 1], sigma (B,) or a float, each
    one of ``self.sigmas`` -> (B, C, H, W); ``forward(x, labels)`` takes the noise-level indices (B,) instead."""

    def __init__(self, config: NCSNConfig):
        super().__init__()
        self.config = config
        ngf, c, n = config.ngf, config.channels, config.n_levels
        ratio = (config.sigma_end / config.sigma_begin) ** (1 / max(n - 1, 1))
        self.ladder = tuple(config.sigma_begin * ratio ** i for i in range(n))  # as Python numbers, for a float sigma
        self.register_buffer("sigmas", torch.tensor(self.ladder, dtype=torch.float64))
        self.stem = nn.Conv2d(c, ngf, 3, padding=1)
        self.res1 = nn.ModuleList([CondResBlock(ngf, ngf, n), CondResBlock(ngf, ngf, n)])
        self.res2 = nn.ModuleList([CondResBlock(ngf, 2 * ngf, n, down=True), CondResBlock(2 * ngf, 2 * ngf, n)])
        self.res3 = nn.ModuleList(
            [CondResBlock(2 * ngf, 2 * ngf, n, down=True, dilation=2), CondResBlock(2 * ngf, 2 * ngf, n, dilation=2)]
        )
        self.res4 = nn.ModuleList(
            [CondResBlock(2 * ngf, 2 * ngf, n, down=True, dilation=4), CondResBlock(2 * ngf, 2 * ngf, n, dilation=4)]
        )
        self.refine1 = CondRefineBlock([2 * ngf], 2 * ngf, n)
        self.refine2 = CondRefineBlock([2 * ngf, 2 * ngf], 2 * ngf, n)
        self.refine3 = CondRefineBlock([2 * ngf, 2 * ngf], ngf, n)
        self.refine4 = CondRefineBlock([ngf, ngf], ngf, n, end=True)
        self.end_norm = CondInstanceNormPlus(ngf, n)
        self.end_conv = nn.Conv2d(ngf, c, 3, padding=1)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.config.event_shape

    def levels(self, sigma: torch.Tensor | float, batch: int) -> torch.Tensor:
        """The index i of each sigma in ``self.sigmas`` (relative tolerance 1e-4): a float, (1,) or (n,) with n
        dividing ``batch`` -> (batch,) long. A float's level is found in Python, so that a trace of ``score``
        (Taylor mode's) holds no branch on a tensor's value."""
        if isinstance(sigma, bool):
            raise TypeError(f"NCSN.score(x, sigma): expected sigma to be a number or a tensor, got {sigma!r}")
        if isinstance(sigma, (int, float)):
            gaps = [abs(sigma / level - 1) for level in self.ladder]
            i = min(range(len(gaps)), key=gaps.__getitem__)
            if not gaps[i] <= 1e-4:  # NaN too
                self._off_ladder(sigma)
            return torch.full((batch,), i, dtype=torch.long, device=self.sigmas.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.sigmas.device).reshape(-1)
        sigma = match_batch("NCSN.score(x, sigma)", sigma, batch)  # See NOTE [point-major stacked batch] in fdsm.fd
        gap = (sigma[:, None] / self.sigmas[None, :] - 1).abs()  # (B, L)
        nearest = gap.min(1)
        if not (nearest.values <= 1e-4).all():  # NaN too
            self._off_ladder(sigma[~(nearest.values <= 1e-4)][0].item())
        return nearest.indices

    def _off_ladder(self, sigma: float) -> None:
        raise ValueError(f"NCSN.score(x, sigma): sigma={sigma:g} is not a noise level of this model; expected one of "
                         f"{[round(s, 6) for s in self.ladder]} (NCSNConfig sigma_begin, sigma_end, n_levels)")

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """s_theta(x, sigma_labels): x (B, C, H, W), labels (B,) long -> (B, C, H, W)."""
        check_event("NCSN", x, self.event_shape)
        h = self.stem(2 * x - 1)
        skips = []
        for stage in (self.res1, self.res2, self.res3, self.res4):
            for block in stage:
                h = block(h, labels)
            skips.append(h)  # layer1: (B, ngf, H, W); layers 2-4: (B, 2ngf, H/2, W/2)
        layer1, layer2, layer3, layer4 = skips
        h = self.refine1([layer4], labels)
        h = self.refine2([layer3, h], labels)
        h = self.refine3([layer2, h], labels)
        h = self.refine4([layer1, h], labels)
        return self.end_conv(F.elu(self.end_norm(h, labels)))

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """grad_x log p_sigma(x) estimate: x (B, C, H, W), sigma (B,) or a float -> (B, C, H, W)."""
        return self.forward(x, self.levels(sigma, x.shape[0]))


register_model(
    "ncsn",
    NCSN,
    paper=NCSNConfig(channels=3, image_size=32, ngf=128),
    cpu=NCSNConfig(channels=3, image_size=32, ngf=8),
    interface="score",
    summary="NCSN CondRefineNetDilated (CIFAR-10), score(x, sigma)",
)
