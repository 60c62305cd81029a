r"""One complete training step, with the paper's optimizers, and a short training loop.

A step is what the paper times (notes section 4): ``zero_grad``, the loss (forward passes and, for the gradient
objectives, the create_graph passes), ``backward``, the gradient-norm clip, the optimizer step and the scheduler
step. A non-finite loss stops the step before ``backward`` with ``NonFiniteLossError`` naming the step: never a
silent NaN update.

What to train with (the loss, the batch, the ``OptimConfig``) is a recipe: ``fdsm.recipes`` holds one per row of
the paper's tables, and ``train`` takes any object with those three fields (``TrainingRecipe``).
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn


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

    Raises ``NonFiniteLossError`` (naming ``step``) before any update when the loss is NaN or infinite, and a
    ``ValueError`` when it is not one number (a 0-d tensor) or has no gradient.
    ``mark(phase)`` is called as each of ``PHASES`` ends, for a clock that splits the step's time.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"training step {step}: expected loss_fn to return one number, a 0-d tensor (an objective "
                         f"with reduction='mean'), got {shape}")
    if not loss.requires_grad:
        raise ValueError(f"training step {step}: the loss does not depend on any parameter (it has no gradient), so "
                         "there is nothing to update; check that the objective is given the model's own callable")
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


# ---- a short training loop ------------------------------------------------------------------------------------

class TrainingRecipe(Protocol):
    """What ``train`` reads of a recipe (``fdsm.recipes.Recipe`` is one): ``loss(model, x)`` on a batch x of
    ``batch`` rows, with the optimizer ``optim``."""

    @property
    def loss(self) -> Callable[[nn.Module, Tensor], Tensor]: ...

    @property
    def optim(self) -> OptimConfig: ...

    @property
    def batch(self) -> int: ...


@dataclass(frozen=True)
class Record:
    step: int
    wall_s: float  # training wall-clock so far, evaluation excluded
    loss: float  # the loss of this step's batch
    metrics: dict[str, float] = field(default_factory=dict)  # the evaluation at this step (empty: not evaluated)


def batches(data: Tensor, batch: int, generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Endless shuffled mini-batches of ``batch`` rows of data: (N, *event); each epoch is a new permutation."""
    if len(data) < batch:
        raise ValueError(f"batches(data, batch): expected at least {batch} rows, got {len(data)}")
    while True:
        order = torch.randperm(len(data), generator=generator)
        for i in range(0, len(data) - batch + 1, batch):
            yield data[order[i:i + batch]]


def train(model: nn.Module, recipe: TrainingRecipe, data: Tensor, *, steps: int,
          evaluate: Callable[[], Mapping[str, float]] | None = None, eval_every: int = 50,
          generator: torch.Generator | None = None, time_budget_s: float = math.inf,
          on_record: Callable[[Record], None] | None = None) -> list[Record]:
    """Train ``model`` with ``recipe`` for ``steps`` steps (or until ``time_budget_s`` of training time), on
    shuffled batches of ``recipe.batch`` rows of data: (N, *event); one ``Record`` every ``eval_every`` steps and
    at the last step.

    ``evaluate()`` runs at each record, outside the timed window (figure 4 plots a metric against training
    wall-clock), and returns the metrics by name, such as ``{"sm_loss": ...}``; they are the record's ``metrics``,
    which stay empty without ``evaluate``. ``on_record(record)`` sees each record as it is made. A non-finite loss
    raises ``NonFiniteLossError`` naming the step.
    """
    for name, value in (("steps", steps), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"train(model, recipe, data): expected {name} to be a positive integer, got {value!r}")
    if not time_budget_s > 0:
        raise ValueError(f"train(model, recipe, data): expected time_budget_s > 0, got {time_budget_s!r}")
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
        if step % eval_every == 0 or last:
            metrics = {} if evaluate is None else {name: float(value) for name, value in evaluate().items()}
            record = Record(step, wall, loss.item(), metrics)
            records.append(record)
            if on_record is not None:
                on_record(record)
        if last:
            break
    return records
