r"""One complete training step per (model, objective), with the paper's optimizers, and a short training loop.

A step is what the paper times (notes section 4): ``zero_grad``, the loss (forward passes and, for the gradient
objectives, the create_graph passes), ``backward``, the gradient-norm clip, the optimizer step and the scheduler
step. A non-finite loss stops the step before ``backward`` with ``NonFiniteLossError`` naming the step: never a
silent NaN update.

``RECIPES`` holds one ``Recipe`` per row of the paper's tables 1, 2, 3, 5 and 6: the model, the objective with the
released code's settings (direction distribution, eps, noise levels; scaled as in NOTE [one scaling convention]),
the batch and the optimizer of notes section 3:

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
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fdsm import objectives as obj
from fdsm.models import MODELS, build
from fdsm.registry import Registry

LossFn = Callable[[nn.Module, Tensor], Tensor]


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step was NaN or infinite; the message names the step and the value."""


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # "adam" | "rmsprop"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)  # Adam only
    clip: float | None = None  # max gradient norm; None: no clipping
    cosine: bool = False  # CosineAnnealingLR to 0 over the run, stepped every step (deep EBM)


def make_optimizer(model: nn.Module, config: OptimConfig, total_steps: int = 1
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer and (when ``config.cosine``) the scheduler of a recipe, over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    elif config.name == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=config.lr)
    else:
        raise ValueError(f"make_optimizer: expected name 'adam' or 'rmsprop', got {config.name!r}")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total_steps, 1)) if config.cosine else None
    return optimizer, scheduler


# The parts of a step, in order, that ``training_step`` reports to its ``mark`` as each one ends:
#   loss      zero_grad, the objective (its forwards and, for the gradient objectives, the create_graph passes)
#             and the finiteness check;
#   backward  loss.backward(): the parameter gradients;
#   update    the gradient-norm clip, the optimizer step and the scheduler step.
# On CUDA the check syncs the host with the device, so the backward phase starts on an idle device: where the host
# launches kernels more slowly than the device runs them, that phase times the launches.
PHASES = ("loss", "backward", "update")


def _no_mark(phase: str) -> None:
    pass


def training_step(model: nn.Module, loss_fn: Callable[[], Tensor], optimizer: torch.optim.Optimizer, *,
                  clip: float | None = None, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                  step: int = 0, mark: Callable[[str], None] = _no_mark) -> Tensor:
    """One complete step: zero_grad, loss, backward, clip, optimizer step, scheduler step; the detached loss.

    Raises ``NonFiniteLossError`` (naming ``step``) before any update when the loss is NaN or infinite.
    ``mark(phase)`` is called as each of ``PHASES`` ends, for a clock that splits the step's time.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"training step {step}: the loss is {loss.item()}, not finite; the update was "
                                 "not applied (lower the learning rate, raise eps in float32, or check the data)")
    mark("loss")
    loss.backward()
    mark("backward")
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    mark("update")
    return loss.detach()


# ---- recipes: one per table row -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """A (model, objective) row: ``loss(model, x)`` on a batch x of ``batch`` samples, with ``optim``."""

    model: str
    objective: str  # the paper's row label; "*" marks serial FD
    table: str
    loss: LossFn
    optim: OptimConfig
    batch: int
    build_kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.objective}"

    def build_model(self, size: str = "cpu", **overrides) -> nn.Module:
        return build(self.model, size=size, **{**self.build_kwargs, **overrides})


RECIPES: Registry[Recipe] = Registry("training recipe")


def _register(model: str, table: str, batch: int, rows: dict[str, tuple[LossFn, OptimConfig]],
              build_kwargs: dict[str, dict] | None = None) -> None:
    """One recipe per row; ``build_kwargs[objective]``: the model settings that row trains with."""
    for objective, (loss, optim) in rows.items():
        RECIPES.register(f"{model}/{objective}", Recipe(model, objective, table, loss, optim, batch,
                                                        (build_kwargs or {}).get(objective, {})))


def _ld(model: nn.Module) -> Callable[[Tensor], Tensor]:
    return model.log_density


# DKEF (notes 2.2, 3.2): alpha is solved on the first half of the batch, the objective is taken on the second. As
# released, alpha minimizes the sliced objective for SSM and FD-SSM, and the variance-reduced one for SSMVR.
def _dkef(objective: Callable[..., Tensor], **kw) -> LossFn:
    def loss(model: nn.Module, x: Tensor) -> Tensor:
        x_t, x_v = x.chunk(2)
        alpha = model.solve_alpha(x_t)
        return objective(lambda z: model.log_density(z, alpha), x_v, **kw)

    return loss


_DKEF_OPT = OptimConfig("adam", lr=1e-2, clip=1.0)
_register("dkef", "1", 200, {
    "SSM": (_dkef(obj.ssm_loss, noise="rademacher"), _DKEF_OPT),
    "SSM-Taylor": (_dkef(obj.ssm_loss, noise="rademacher", method="taylor"), _DKEF_OPT),
    "SSMVR": (_dkef(obj.ssmvr_loss, noise="rademacher"), _DKEF_OPT),
    "FD-SSM": (_dkef(obj.fd_ssm_loss, eps=0.1), _DKEF_OPT),
}, build_kwargs={"SSMVR": {"alpha_fit": "sliced-vr"}})


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
def _on_log_density(objective: Callable[..., Tensor], *args, **kw) -> LossFn:
    return lambda model, x: objective(model.log_density, x, *args, **kw)


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


# NCSN (notes 1.4, 3.5): one of 10 geometric levels per sample; the network is conditioned on the level index.
def _ncsn(objective: Callable[..., Tensor], **kw) -> LossFn:
    def loss(model: nn.Module, x: Tensor) -> Tensor:
        levels = getattr(model, "sigmas", None)  # the model's geometric 1 -> 0.01 levels, else NCSN's defaults
        levels = obj.ncsn_sigmas(device=x.device) if levels is None else levels
        labels, sigma = obj.draw_levels(len(x), levels.to(x.dtype))
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
# is conditioned on the images x it encodes (here uniform pixels; the net repeats them for a stacked FD batch).
def _score_net(objective: Callable[..., Tensor], **kw) -> LossFn:
    def loss(model: nn.Module, z: Tensor) -> Tensor:
        if not model.config.conditional:
            return objective(model.score, z, **kw)
        images = torch.rand(len(z), *model.config.data_shape, dtype=z.dtype, device=z.device)
        return objective(lambda codes: model.score(codes, images), z, **kw)

    return loss


for _name in ("vae-score", "wae-score"):
    _register(_name, "6", 128, {
        "SSMVR": (_score_net(obj.ssmvr_score_loss, noise="gaussian"), OptimConfig("rmsprop", lr=1e-3)),
        "SSMVR-Taylor": (_score_net(obj.ssmvr_score_loss, noise="gaussian", method="taylor"),
                         OptimConfig("rmsprop", lr=1e-3)),
        "FD-SSMVR": (_score_net(obj.fd_ssmvr_loss, eps=0.1), OptimConfig("rmsprop", lr=1e-3)),
    })


def recipe_available(recipe: Recipe) -> tuple[bool, str]:
    """Whether the recipe's model is registered here, and why not."""
    if recipe.model not in MODELS:
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
# measured, per model, with every objective's training step timed in both layouts side by side
# (scripts/compare_layouts.py: alternately in one process; on the CPU at 2 cores, size "cpu";
# results/cpu/layouts/side_by_side.csv), as median time in NCHW / time in NHWC:
#
#   deep EBM (B=64): SSMVR 1.10, DSM 1.17, SSM 1.19, FD-DSM 1.38, FD-SSM 1.42  -> channels_last, for every objective
#   NCSN (B=16):     FD-SSMVR 0.83, DSM 0.91, SSMVR 1.00                       -> contiguous, for none slower
#
# Timed in separate processes instead, the layouts' order can flip (deep-EBM SSMVR in results/cpu/layouts/*/
# train_steps.csv: 0.99 there, 1.10 side by side): this machine's drift is as large as the effect.
# On an H200 with cuDNN (paper size and batch; TF32 convolutions, PyTorch's default, which the suite now turns off;
# results/gpu-h200/settings/layouts/side_by_side.csv) the answer is the same:
#
#   deep EBM (B=64): SSM 1.02, SSMVR 1.02, DSM 1.03, FD-DSM 1.14, FD-SSM 1.14  -> channels_last, for every objective
#   NCSN (B=128):    DSM 0.89, FD-SSMVR 0.89, SSMVR 0.94                       -> contiguous, for every objective
#
# In the deep EBM the gap is widest for the FD objectives, whose time is one forward and one backward of the stacked
# batch through the convolutions, so NCHW hides much of FD's saving there. The layout moves values, not arithmetic:
# every loss and gradient is the same up to float rounding (tests/test_training.py, in float64).
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def in_memory_format(model: nn.Module, x: Tensor, name: str) -> tuple[nn.Module, Tensor]:
    """The model (in place) and a 4-D image batch (B, C, H, W) in the layout ``name`` of ``MEMORY_FORMATS``
    (NOTE [memory format]); batches of any other rank have no such layout and are returned as they are."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"in_memory_format: expected one of {sorted(MEMORY_FORMATS)}, got {name!r}")
    if x.dim() != 4:
        return model, x
    return model.to(memory_format=MEMORY_FORMATS[name]), x.contiguous(memory_format=MEMORY_FORMATS[name])


# ---- a short training loop ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    step: int
    wall_s: float  # training wall-clock so far, evaluation excluded
    loss: float
    metric: float  # the evaluation at this step (NaN where not evaluated)


def batches(data: Tensor, batch: int, generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Endless shuffled mini-batches of ``batch`` rows of data: (N, *event); each epoch is a new permutation."""
    if len(data) < batch:
        raise ValueError(f"batches(data, batch): expected at least {batch} rows, got {len(data)}")
    while True:
        order = torch.randperm(len(data), generator=generator)
        for i in range(0, len(data) - batch + 1, batch):
            yield data[order[i:i + batch]]


def train(model: nn.Module, recipe: Recipe, data: Tensor, *, steps: int, evaluate: Callable[[], float] | None = None,
          eval_every: int = 50, generator: torch.Generator | None = None, time_budget_s: float = math.inf,
          on_record: Callable[[Record], None] | None = None) -> list[Record]:
    """Train ``model`` with ``recipe`` for ``steps`` steps (or until ``time_budget_s`` of training time).

    ``evaluate()`` runs every ``eval_every`` steps and at the end, outside the timed window (figure 4 plots the
    metric against training wall-clock). A non-finite loss raises ``NonFiniteLossError`` naming the step.
    """
    optimizer, scheduler = make_optimizer(model, recipe.optim, steps)
    records: list[Record] = []
    wall = 0.0
    stream = batches(data, recipe.batch, generator)
    for step in range(1, steps + 1):
        x = next(stream)
        start = time.perf_counter()
        loss = training_step(model, functools.partial(recipe.loss, model, x), optimizer, clip=recipe.optim.clip,
                             scheduler=scheduler, step=step)
        if x.device.type == "cuda":  # the step's kernels run asynchronously: stop the clock when they finish
            torch.cuda.synchronize(x.device)
        wall += time.perf_counter() - start
        last = step == steps or wall >= time_budget_s
        if evaluate is not None and (step % eval_every == 0 or last):
            record = Record(step, wall, loss.item(), evaluate())
            records.append(record)
            if on_record is not None:
                on_record(record)
        if last:
            break
    return records
