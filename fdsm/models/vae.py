r"""The VAE and WAE networks with implicit encoders of paper section 6.3 (Song et al.'s released code).

An implicit encoder draws z = f(x, eps), eps ~ N(0, I), so q(z|x) has no density; the ELBO's entropy gradient needs
grad_z log q(z|x), which a score network learns by (FD-)SSMVR:

.. math::
    s_\psi(z; x) \approx \nabla_z \log q_\phi(z \mid x) \quad \text{(VAE)}, \qquad
    s_\psi(z) \approx \nabla_z \log q_\phi(z) \quad \text{(WAE, the aggregate posterior)}.

MNIST (28x28 flattened to 784, tanh MLPs with two hidden layers of 256; z_dim = eps_dim = 32):

- implicit encoder [x, eps] -> z: 283,168 parameters; decoder z -> 784 Bernoulli logits: 275,728;
- VAE score net [x, z] -> z_dim: 283,168; WAE score net z -> z_dim: 82,464;
- WAE deterministic encoder x -> z: 274,976; WAE decoder, the VAE decoder plus a Sigmoid (pixel means): 275,728.

CelebA (64x64x3 in [-1, 1], ``dataset="celeba"``, nf = 64): eps (or z) is mapped by a linear layer to a 64x64 map
(ReLU in the encoder, softplus in the score net) and stacked on the image as an extra channel (the WAE score net
sees only that channel); four 5x5 stride-2 convs (nf, 2nf, 4nf, 8nf; no activation after the last); a linear layer
to 512 and one to z_dim. The decoder maps z to 8nf x 4 x 4, then four 5x5 stride-2 transposed convs (4nf, 2nf, nf,
3) with ReLU between them and tanh at the end; its Gaussian log-std is fixed at -0.602 (a buffer). The WAE encoder is
the implicit encoder's conv stack on the image alone (no noise channel); the WAE decoder is the VAE decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fdsm.models.spec import check_event, match_batch, register_model

DATA_SHAPES = {"mnist": (784,), "celeba": (3, 64, 64)}


@dataclass(frozen=True)
class VAEConfig:
    dataset: str = "mnist"  # "mnist" (tanh MLPs) or "celeba" (conv nets)
    z_dim: int = 32
    eps_dim: int = 32  # noise fed to the implicit encoder
    hidden: int = 256  # MNIST MLP width
    nf: int = 64  # CelebA conv filters of the first layer (nef = ndf)
    conditional: bool = True  # score net: True models grad_z log q(z|x) (VAE), False grad_z log q(z) (WAE)

    def __post_init__(self):
        if self.dataset not in DATA_SHAPES:
            raise ValueError(f"VAEConfig(dataset={self.dataset!r}): expected one of {sorted(DATA_SHAPES)}")
        if min(self.z_dim, self.eps_dim, self.hidden, self.nf) < 1:
            raise ValueError(f"{self}: expected positive sizes")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return DATA_SHAPES[self.dataset]


def _tanh_mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """d_in -> hidden -> tanh -> hidden -> tanh -> d_out."""
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, d_out)
    )


class ConvCritic(nn.Module):
    """The CelebA encoder / score-net body: a code (B, code_dim) becomes a 64x64 channel (linear, then ``act``;
    no such channel when ``code_dim`` is None), stacked on the image (B, 3, 64, 64) when given; four 5x5 stride-2
    convs; 512 -> out_dim. -> (B, out_dim)."""

    def __init__(self, code_dim: int | None, nf: int, out_dim: int, *, with_image: bool, act: type[nn.Module]):
        super().__init__()
        if code_dim is None and not with_image:
            raise ValueError("ConvCritic(code_dim=None, with_image=False): expected a code, an image or both")
        self.code_map = None if code_dim is None else nn.Sequential(nn.Linear(code_dim, 64 * 64), act())
        in_channels = (3 if with_image else 0) + (0 if code_dim is None else 1)
        widths = [in_channels, nf, 2 * nf, 4 * nf, 8 * nf]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2))  # halves H and W: 64 -> 4 after four
            if i < 3:
                layers.append(act())
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(8 * nf * 4 * 4, 512), act(), nn.Linear(512, out_dim))

    def forward(self, code: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        maps = [] if image is None else [image]  # (B, 3, 64, 64)
        if self.code_map is not None:
            maps.append(self.code_map(code).view(-1, 1, 64, 64))  # (B, 1, 64, 64)
        h = torch.cat(maps, dim=1)  # (B, in_channels, 64, 64)
        return self.head(self.convs(h).flatten(1))  # (B, 8nf, 4, 4) -> (B, 8nf*16) -> (B, out_dim)


class ImplicitEncoder(nn.Module):
    """z = f(x, eps). Interface: ``forward(x, eps=None)``: x (B, *data_shape) -> z (B, z_dim); eps ~ N(0, I) when
    not given. A sampler: no log-density, no score."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        if config.dataset == "mnist":
            self.net: nn.Module = _tanh_mlp(784 + config.eps_dim, config.hidden, config.z_dim)
        else:
            self.net = ConvCritic(config.eps_dim, config.nf, config.z_dim, with_image=True, act=nn.ReLU)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.config.data_shape

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        check_event("ImplicitEncoder", x, self.event_shape)
        if eps is None:
            eps = torch.randn(x.shape[0], self.config.eps_dim, dtype=x.dtype, device=x.device)
        if self.config.dataset == "mnist":
            return self.net(torch.cat([x, eps], dim=1))  # (B, 784 + eps_dim) -> (B, z_dim)
        return self.net(eps, x)


class WAEEncoder(nn.Module):
    """The WAE's deterministic encoder z = f(x): the implicit encoder without the noise input. Interface:
    ``forward(x)``: x (B, *data_shape) -> z (B, z_dim). A sampler."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        if config.dataset == "mnist":
            self.net: nn.Module = _tanh_mlp(784, config.hidden, config.z_dim)
        else:
            self.net = ConvCritic(None, config.nf, config.z_dim, with_image=True, act=nn.ReLU)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.config.data_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_event("WAEEncoder", x, self.event_shape)
        return self.net(x) if self.config.dataset == "mnist" else self.net(None, x)  # -> (B, z_dim)


class Decoder(nn.Module):
    """Interface: ``forward(z)``: (B, z_dim) -> (B, *data_shape): Bernoulli logits (MNIST) or the Gaussian mean in
    [-1, 1] (CelebA, log-std ``self.log_std``). A sampler."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        if config.dataset == "mnist":
            self.net: nn.Module = _tanh_mlp(config.z_dim, config.hidden, 784)
            return
        nf = config.nf
        layers: list[nn.Module] = [nn.Linear(config.z_dim, 8 * nf * 4 * 4), nn.Unflatten(1, (8 * nf, 4, 4))]
        widths = [8 * nf, 4 * nf, 2 * nf, nf, 3]
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1))  # doubles H, W
            layers.append(nn.ReLU() if i < 3 else nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.register_buffer("log_std", torch.full((3, 64, 64), -0.602))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.config.z_dim,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_event("Decoder", z, self.event_shape)
        return self.net(z)


class WAEDecoder(Decoder):
    """The WAE decoder: the VAE decoder with a Sigmoid after the MNIST logits, so ``forward(z)`` gives pixel means in
    [0, 1]; the CelebA net, already ending in tanh, is the VAE decoder's. (B, z_dim) -> (B, *data_shape)."""

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        if config.dataset == "mnist":
            self.net.append(nn.Sigmoid())


class LatentScoreNet(nn.Module):
    """Interface: ``score(z, x=None)``: z (B, z_dim) -> (B, z_dim), the estimate of grad_z log q(z|x) (VAE, x:
    (B or B/k, *data_shape) required) or grad_z log q(z) (WAE, ``conditional=False``, no x). ``forward`` is
    ``score``."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        image_dim = 784 if config.conditional else 0
        if config.dataset == "mnist":
            self.net: nn.Module = _tanh_mlp(image_dim + config.z_dim, config.hidden, config.z_dim)
        else:
            self.net = ConvCritic(config.z_dim, config.nf, config.z_dim, with_image=config.conditional, act=nn.Softplus)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.config.z_dim,)

    def score(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        check_event("LatentScoreNet", z, self.event_shape)
        if self.config.conditional != (x is not None):
            need = "needs the data x it is conditioned on" if self.config.conditional else "takes no x (WAE)"
            raise ValueError(f"LatentScoreNet.score(z, x): this score net {need}")
        if x is not None:
            check_event("LatentScoreNet.score(z, x)", x, self.config.data_shape)
            # See NOTE [point-major stacked batch] in fdsm.fd
            x = match_batch("LatentScoreNet.score(z, x)", x, z.shape[0])
        if self.config.dataset == "mnist":
            return self.net(z if x is None else torch.cat([x, z], dim=1))  # (B, [784 +] z_dim) -> (B, z_dim)
        return self.net(z, x)

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(z, x)


_CPU = VAEConfig(hidden=32, nf=8)
register_model(
    "vae-encoder",
    ImplicitEncoder,
    paper=VAEConfig(),
    cpu=_CPU,
    interface="sampler",
    summary="VAE implicit encoder z = f(x, eps) (MNIST MLP; dataset='celeba' for the conv net)",
)
register_model(
    "vae-decoder",
    Decoder,
    paper=VAEConfig(),
    cpu=_CPU,
    interface="sampler",
    summary="VAE decoder z -> Bernoulli logits (MNIST; dataset='celeba' for the conv net)",
)
register_model(
    "vae-score",
    LatentScoreNet,
    paper=VAEConfig(),
    cpu=_CPU,
    interface="score",
    summary="VAE score net score(z, x) ~ grad_z log q(z|x) (MNIST; dataset='celeba' for the conv net)",
)
register_model(
    "wae-score",
    LatentScoreNet,
    paper=VAEConfig(conditional=False),
    cpu=VAEConfig(hidden=32, nf=8, conditional=False),
    interface="score",
    summary="WAE score net score(z) ~ grad_z log q(z) (MNIST; dataset='celeba' for the conv net)",
)
register_model(
    "wae-encoder",
    WAEEncoder,
    paper=VAEConfig(),
    cpu=_CPU,
    interface="sampler",
    summary="WAE deterministic encoder z = f(x) (MNIST MLP; dataset='celeba' for the conv net)",
)
register_model(
    "wae-decoder",
    WAEDecoder,
    paper=VAEConfig(),
    cpu=_CPU,
    interface="sampler",
    summary="WAE decoder z -> pixel means in [0, 1] (MNIST; dataset='celeba' for the conv net)",
)
