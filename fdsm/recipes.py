r"""The recipe table: one ``Recipe`` per (model, objective) row of the paper's tables, and recipes for a user's model.

A recipe is what a training step needs besides the model: the loss ``loss(model, x)`` with the released code's
settings (direction distribution, eps, noise levels; scaled as in NOTE [one scaling convention]), the batch, the
optimizer of notes section 3, and, where a model needs one, a ``prepare(model, x)`` hook that readies a fresh model
for batches like x (DKEF's inducing points). ``fdsm.training`` runs the step and the loop.

``RECIPES`` holds one ``Recipe`` per row of the paper's tables 1, 2, 3, 5 and 6:

========== =============================================== ======= ============================================
model      rows                                            batch   optimizer
========== =============================================== ======= ============================================
dkef       SSM, SSMVR, FD-SSM (table 1)                    200     Adam 1e-2, clip 1.0; alpha on half the batch
deep-ebm   DSM, FD-DSM*, FD-DSM, SSM, SSMVR, FD-SSM*,      64      Adam betas (0.9, 0.95), cosine, clip 0.1;
           FD-SSM (table 2)                                        lr 5e-5 (DSM) / 1e-5 (SSM); eps 0.05
nice       Approx-BP, CP, DSM (sigma 0.1), DSM-1.74,       128     Adam 1e-4; 1e-3 for CP, DSM and FD-SSM
           SSM, SSMVR, FD-SSM, MLE (table 3)
ncsn       DSM, SSMVR, FD-SSMVR (table 5)                  128     Adam 1e-3, betas (0.9, 0.999)
vae-score  SSMVR, FD-SSMVR on the score net (table 6)      128     RMSprop 1e-3
wae-score  SSMVR, FD-SSMVR on the score net (table 6)      128     RMSprop 1e-3
========== =============================================== ======= ============================================

A star marks the non-parallel FD (``serial=True``). A ``-Taylor`` row is the exact objective of the row it names
with its derivatives from Taylor mode (``method="taylor"``, NOTE [exact derivatives by Taylor mode] in
``fdsm.objectives.sliced``): the strongest exact step, with no double backward. Rows whose model is not registered
are listed with the reason.

The clip thresholds are the released ones, applied to losses on this suite's one scale (NOTE [one scaling
convention] in ``fdsm.objectives.sliced``), which for several rows is the released loss divided by d (for the deep
EBM's DSM, by loss_coe * d / sigma_0^2). There a threshold clips more loosely than it did in the released runs; Adam
is otherwise invariant to the scale of the loss. An FD row and its gradient counterpart have one scale and one
threshold, so a pair is clipped alike.

``user_recipes(name, build, interface, batch)`` gives the same kind of rows for a network of the user's own, built
by ``build()`` instead of the model registry (table ``"user"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fdsm import objectives as obj
from fdsm.models import MODELS, build, model_config
from fdsm.models.dkef import DKEF
from fdsm.models.ncsn import NCSN
from fdsm.models.vae import LatentScoreNet
from fdsm.registry import Registry
from fdsm.training import OptimConfig

LossFn = Callable[[nn.Module, Tensor], Tensor]
PrepareFn = Callable[[nn.Module, Tensor], None]


@dataclass(frozen=True)
class Recipe:
    """A (model, objective) row: ``loss(model, x)`` on a batch x of ``batch`` samples, with ``optim``.

    ``prepare(model, x)``, when given, readies a freshly built model for batches like x before its first step
    (``prepare_model``). ``factory``, when given, builds the model (``build_model``) instead of the ``fdsm.models``
    registry: a user's network (``user_recipes``).
    """

    model: str
    objective: str  # the paper's row label; "*" marks serial FD
    table: str
    loss: LossFn
    optim: OptimConfig
    batch: int
    build_kwargs: dict = field(default_factory=dict)
    prepare: PrepareFn | None = None
    factory: Callable[..., nn.Module] | None = None

    @property
    def name(self) -> str:
        return f"{self.model}/{self.objective}"

    def build_model(self, size: str = "cpu", **overrides) -> nn.Module:
        """The row's model: ``factory(**build_kwargs, **overrides)`` when the recipe has a factory (``size`` is then
        ignored), else ``fdsm.models.build(model, size, **build_kwargs, **overrides)``."""
        kwargs = {**self.build_kwargs, **overrides}
        if self.factory is not None:
            return self.factory(**kwargs)
        return build(self.model, size=size, **kwargs)

    def prepare_model(self, model: nn.Module, x: Tensor) -> None:
        """Ready a freshly built ``model`` for batches like x: (B, *event), in place; nothing for most rows."""
        if self.prepare is not None:
            self.prepare(model, x)


RECIPES: Registry[Recipe] = Registry("training recipe")


def _register(model: str, table: str, batch: int, rows: dict[str, tuple[LossFn, OptimConfig]],
              build_kwargs: dict[str, dict] | None = None, prepare: PrepareFn | None = None) -> None:
    """One recipe per row; ``build_kwargs[objective]``: the model settings that row trains with."""
    for objective, (loss, optim) in rows.items():
        RECIPES.register(f"{model}/{objective}", Recipe(model, objective, table, loss, optim, batch,
                                                        (build_kwargs or {}).get(objective, {}), prepare))


def _on_log_density(objective: Callable[..., Tensor], *args, **kw) -> LossFn:
    return lambda model, x: objective(model.log_density, x, *args, **kw)


def _on_score(objective: Callable[..., Tensor], *args, **kw) -> LossFn:
    return lambda model, x: objective(model.score, x, *args, **kw)


# DKEF (notes 2.2, 3.2): alpha is solved on the first half of the batch, the objective is taken on the second. As
# released, alpha minimizes the sliced objective for SSM and FD-SSM, and the variance-reduced one for SSMVR.
def _dkef(objective: Callable[..., Tensor], **kw) -> LossFn:
    def loss(model: DKEF, x: Tensor) -> Tensor:
        x_t, x_v = x.chunk(2)
        alpha = model.solve_alpha(x_t)
        return objective(lambda z: model.log_density(z, alpha), x_v, **kw)

    return loss


def _dkef_inducing(model: DKEF, x: Tensor) -> None:
    """The inducing points z from data-like rows: max(2M, B) standard-normal rows (the data are whitened), in x's
    dtype and on x's device. A run on real data sets them from its training set instead."""
    rows = torch.randn(max(2 * model.config.n_inducing, len(x)), *model.event_shape, dtype=x.dtype, device=x.device)
    model.init_inducing(rows)  # (max(2M, B), D): M of them become z


_DKEF_OPT = OptimConfig("adam", lr=1e-2, clip=1.0)
_register("dkef", "1", 200, {
    "SSM": (_dkef(obj.ssm_loss, noise="rademacher"), _DKEF_OPT),
    "SSM-Taylor": (_dkef(obj.ssm_loss, noise="rademacher", method="taylor"), _DKEF_OPT),
    "SSMVR": (_dkef(obj.ssmvr_loss, noise="rademacher"), _DKEF_OPT),
    "FD-SSM": (_dkef(obj.fd_ssm_loss, eps=0.1), _DKEF_OPT),
}, build_kwargs={"SSMVR": {"alpha_fit": "sliced-vr"}}, prepare=_dkef_inducing)


# Deep EBM (notes 1.1, 3.1): multi-scale DSM over linspace(0.05, 1.2, B); SSM family on data + 0.005 N(0, I).
def _deep_ebm_dsm(objective: Callable[..., Tensor], **kw) -> LossFn:
    return lambda model, x: objective(model.log_density, x, obj.deep_ebm_sigmas(len(x), dtype=x.dtype,
                                                                                device=x.device), **kw)


def _deep_ebm_ssm(objective: Callable[..., Tensor], **kw) -> LossFn:
    return lambda model, x: objective(model.log_density, x + 0.005 * torch.randn_like(x), **kw)


_EBM_DSM_OPT = OptimConfig("adam", lr=5e-5, betas=(0.9, 0.95), clip=0.1, cosine=True)
_EBM_SSM_OPT = OptimConfig("adam", lr=1e-5, betas=(0.9, 0.95), clip=0.1, cosine=True)
_register("deep-ebm", "2", 64, {
    "DSM": (_deep_ebm_dsm(obj.multiscale_dsm_loss), _EBM_DSM_OPT),
    "FD-DSM*": (_deep_ebm_dsm(obj.multiscale_fd_dsm_loss, eps=0.05, serial=True), _EBM_DSM_OPT),
    "FD-DSM": (_deep_ebm_dsm(obj.multiscale_fd_dsm_loss, eps=0.05), _EBM_DSM_OPT),
    "SSM": (_deep_ebm_ssm(obj.ssm_loss, noise="gaussian"), _EBM_SSM_OPT),
    "SSM-Taylor": (_deep_ebm_ssm(obj.ssm_loss, noise="gaussian", method="taylor"), _EBM_SSM_OPT),
    "SSMVR": (_deep_ebm_ssm(obj.ssmvr_loss, noise="gaussian"), _EBM_SSM_OPT),
    "FD-SSM*": (_deep_ebm_ssm(obj.fd_ssm_loss, eps=0.05, serial=True), _EBM_SSM_OPT),
    "FD-SSM": (_deep_ebm_ssm(obj.fd_ssm_loss, eps=0.05), _EBM_SSM_OPT),
})


# NICE (notes 3.3): Rademacher v for the gradient SSM family, DSM at sigma 0.1 (table 3's DSM+) and 1.74 (DSM++),
# FD-SSM eps = 0.1 at 10x the lr; approximate backprop and curvature propagation take the model itself.
_register("nice", "3", 128, {
    "Approx-BP": (obj.approx_bp_loss, OptimConfig("adam", lr=1e-4)),
    "CP": (obj.cp_loss, OptimConfig("adam", lr=1e-3)),
    "DSM": (_on_log_density(obj.dsm_loss, 0.1), OptimConfig("adam", lr=1e-3)),
    "DSM-1.74": (_on_log_density(obj.dsm_loss, 1.74), OptimConfig("adam", lr=1e-3)),
    "SSM": (_on_log_density(obj.ssm_loss, noise="rademacher"), OptimConfig("adam", lr=1e-4)),
    "SSM-Taylor": (_on_log_density(obj.ssm_loss, noise="rademacher", method="taylor"), OptimConfig("adam", lr=1e-4)),
    "SSMVR": (_on_log_density(obj.ssmvr_loss, noise="rademacher"), OptimConfig("adam", lr=1e-4)),
    "FD-SSM": (_on_log_density(obj.fd_ssm_loss, eps=0.1), OptimConfig("adam", lr=1e-3)),
    "MLE": (_on_log_density(obj.mle_loss), OptimConfig("adam", lr=1e-4)),
})


# NCSN (notes 1.4, 3.5): one of the model's L geometric levels (sigma_begin -> sigma_end) per sample; the network is
# conditioned on the level index.
def _ncsn(objective: Callable[..., Tensor], **kw) -> LossFn:
    def loss(model: NCSN, x: Tensor) -> Tensor:
        labels, sigma = obj.draw_levels(len(x), model.sigmas.to(x.dtype))  # (B,) indices, (B,) levels
        return objective(model, x, sigma, cond=labels, **kw)  # model(x, labels): the level-conditioned score

    return loss


_NCSN_OPT = OptimConfig("adam", lr=1e-3, betas=(0.9, 0.999))
_register("ncsn", "5", 128, {
    "DSM": (_ncsn(obj.annealed_dsm_loss), _NCSN_OPT),
    "SSMVR": (_ncsn(obj.annealed_ssmvr_loss, noise="gaussian"), _NCSN_OPT),
    "SSMVR-Taylor": (_ncsn(obj.annealed_ssmvr_loss, noise="gaussian", method="taylor"), _NCSN_OPT),
    "FD-SSMVR": (_ncsn(obj.annealed_fd_ssmvr_loss, eps=0.1), _NCSN_OPT),
})


# VAE / WAE (notes 1.5, 3.4): only the score-net update is timed, on latent codes z: (B, z_dim). The VAE score net
# is conditioned on the images x it encodes (here uniform pixels; the net repeats them for a stacked FD batch), the
# WAE score net on nothing: which one a model is comes from its registered configuration.
def _score_net(objective: Callable[..., Tensor], *, conditional: bool, **kw) -> LossFn:
    if not conditional:
        return lambda model, z: objective(model.score, z, **kw)

    def loss(model: LatentScoreNet, z: Tensor) -> Tensor:
        images = torch.rand(len(z), *model.config.data_shape, dtype=z.dtype, device=z.device)  # (B, *data_shape)
        return objective(lambda codes: model.score(codes, images), z, **kw)

    return loss


for _name in ("vae-score", "wae-score"):
    _conditional = model_config(_name).conditional  # vae-score: grad_z log q(z|x); wae-score: grad_z log q(z)
    _register(_name, "6", 128, {
        "SSMVR": (_score_net(obj.ssmvr_score_loss, conditional=_conditional, noise="gaussian"),
                  OptimConfig("rmsprop", lr=1e-3)),
        "SSMVR-Taylor": (_score_net(obj.ssmvr_score_loss, conditional=_conditional, noise="gaussian",
                                    method="taylor"), OptimConfig("rmsprop", lr=1e-3)),
        "FD-SSMVR": (_score_net(obj.fd_ssmvr_loss, conditional=_conditional, eps=0.1),
                     OptimConfig("rmsprop", lr=1e-3)),
    })


# ---- a user's model ---------------------------------------------------------------------------------------------

# The rows a user's network gets, by what it exposes: the exact sliced rows draw Rademacher v (as NICE's and DKEF's
# rows do), the FD rows v on the eps-sphere; DSM and FD-DSM take one noise level, sigma 0.1 (table 3's DSM+).
_LOG_DENSITY_ROWS: dict[str, LossFn] = {  # model.log_density(x): (B, *event) -> (B,)
    "DSM": _on_log_density(obj.dsm_loss, 0.1),
    "SSM": _on_log_density(obj.ssm_loss, noise="rademacher"),
    "SSM-Taylor": _on_log_density(obj.ssm_loss, noise="rademacher", method="taylor"),
    "SSMVR": _on_log_density(obj.ssmvr_loss, noise="rademacher"),
    "FD-SSM": _on_log_density(obj.fd_ssm_loss, eps=0.1),
    "FD-DSM": _on_log_density(obj.fd_dsm_loss, 0.1, eps=0.1),
}
_SCORE_ROWS: dict[str, LossFn] = {  # model.score(x): (B, *event) -> (B, *event)
    "DSM": _on_score(obj.dsm_score_loss, 0.1),
    "SSMVR": _on_score(obj.ssmvr_score_loss, noise="rademacher"),
    "SSMVR-Taylor": _on_score(obj.ssmvr_score_loss, noise="rademacher", method="taylor"),
    "FD-SSMVR": _on_score(obj.fd_ssmvr_loss, eps=0.1),
}
_USER_ROWS: dict[str, dict[str, LossFn]] = {"log-density": _LOG_DENSITY_ROWS, "energy": _LOG_DENSITY_ROWS,
                                            "score": _SCORE_ROWS}


def user_recipes(name: str, build: Callable[[], nn.Module], interface: str, batch: int, lr: float = 1e-3
                 ) -> dict[str, Recipe]:
    """The recipes for a user's own network, keyed by objective label; each trains with Adam at ``lr``.

    ``build()`` makes the model (``Recipe.build_model`` calls it, whatever the size); ``name`` is the recipes'
    ``model``, and their table is ``"user"``. What the model offers the losses is named by ``interface``:

    - ``"log-density"`` or ``"energy"``: ``model.log_density(x)``, (B, *event) -> (B,) (for an energy model, -E):
      DSM (sigma 0.1), SSM, SSM-Taylor and SSMVR (Rademacher v), FD-SSM (eps 0.1) and FD-DSM (sigma 0.1, eps 0.1);
    - ``"score"``: ``model.score(x)``, (B, *event) -> (B, *event): DSM on the score (sigma 0.1), SSMVR and
      SSMVR-Taylor (Rademacher v), FD-SSMVR (eps 0.1).

    The learning rate defaults to 1e-3 (Adam, betas (0.9, 0.999), no clipping, no schedule), the rate of most of
    the paper's rows; a network of another scale may want another.

    >>> recipes = user_recipes("quadratic", lambda: nn.Linear(3, 1), "score", batch=32)
    >>> sorted(recipes), recipes["FD-SSMVR"].name, recipes["FD-SSMVR"].optim.lr
    (['DSM', 'FD-SSMVR', 'SSMVR', 'SSMVR-Taylor'], 'quadratic/FD-SSMVR', 0.001)
    """
    who = f"user_recipes({name!r}, build, interface, batch)"
    if interface not in _USER_ROWS:
        raise ValueError(f"{who}: expected interface in {tuple(_USER_ROWS)}, got {interface!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"{who}: expected batch to be a positive int, got {batch!r}")
    if not lr > 0:
        raise ValueError(f"{who}: expected lr > 0, got {lr!r}")
    optim = OptimConfig("adam", lr=lr)
    return {objective: Recipe(name, objective, "user", loss, optim, batch, factory=build)
            for objective, loss in _USER_ROWS[interface].items()}


def recipe_available(recipe: Recipe) -> tuple[bool, str]:
    """Whether the recipe's model can be built here (a factory, or a model registered in ``fdsm.models``), and
    why not."""
    if recipe.factory is None and recipe.model not in MODELS:
        return False, f"model {recipe.model!r} is not registered (fdsm.models has {MODELS.names()})"
    return True, ""


def example_batch(model: nn.Module, batch: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """A synthetic batch of the model's input shape, (batch, *model.event_shape), for timing steps."""
    x = torch.rand((batch, *model.event_shape), generator=generator, dtype=dtype)
    return x.to(device)


# NOTE [memory format]
# channels_last (NHWC) stores the C values of a pixel side by side; NCHW ("contiguous") stores each channel's plane.
# Which one the convolution kernels (oneDNN, cuDNN) run faster depends on the network and the machine, so it is
# measured per model, with every objective's training step timed in both layouts alternately in one process
# (scripts/compare_layouts.py). Decided: the deep EBM trains in channels_last, NCSN in contiguous, on the CPU and on
# CUDA alike, since on both machines measured (results/cpu/layouts/README.md, results/gpu-h200/settings/layouts/
# README.md) every deep-EBM objective ran faster in channels_last and no NCSN objective did. The gap is widest for
# the deep EBM's FD objectives, whose time is one forward and one backward of the stacked batch through the
# convolutions, so NCHW would hide much of FD's saving there. Timed in separate processes the order can flip: on the
# 2-core CPU the machine's drift is as large as the effect, which is why the layouts are compared side by side. The
# layout moves values, not arithmetic: every loss and gradient is the same up to float rounding
# (tests/test_training.py, in float64).
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def in_memory_format(model: nn.Module, x: Tensor, name: str) -> tuple[nn.Module, Tensor]:
    """The model (in place) and a 4-D image batch (B, C, H, W) in the layout ``name`` of ``MEMORY_FORMATS``
    (NOTE [memory format]); batches of any other rank have no such layout and are returned as they are."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"in_memory_format: expected one of {sorted(MEMORY_FORMATS)}, got {name!r}")
    if x.dim() != 4:
        return model, x
    return model.to(memory_format=MEMORY_FORMATS[name]), x.contiguous(memory_format=MEMORY_FORMATS[name])
