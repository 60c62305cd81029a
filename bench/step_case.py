r"""One training-step measurement (the worker side of ``train-steps``): a recipe's complete optimizer step, timed.

A *case* is a flat dict, the key columns of a ``train_steps.csv`` row (model, objective, size, batch, dtype, device,
memory_format, cudnn_benchmark, float32_math, seed) plus how to measure it (warmup, repeats; for a user's model
also ``event_shape`` and ``lr``). ``recipe_for(case)`` finds its ``fdsm.recipes.Recipe``: a row of ``RECIPES``, or
for a user's ``module:factory`` model one of ``fdsm.recipes.user_recipes``.

``measure_step(case)`` builds a ``Stepper`` (model, optimizer and a seeded synthetic batch of the model's input
shape), takes ``warmup`` untimed steps and ``repeats`` timed ones (median and IQR of ``zero_grad`` -> loss ->
backward -> clip -> step), probes the peak memory of one more step above the process's baseline, and records the
loss. An FD or Taylor row's steps alternate, round by round, with steps of its nested-autograd counterpart
(``COUNTERPART``) and, for an FD row, of the strongest exact step (``STRONGEST``, Taylor mode), all in this one
worker; each ``speedup`` is the median (and quartiles) of the per-round time ratios rival / row.

This is one process's step (``world_size`` 1, ``backend`` and ``scaling`` none). The data-parallel step of the same
recipes, each rank on its slice of the batch ``build_row`` builds, is ``bench.distributed_case``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from bench.config import DTYPES
from bench.environment import set_float32_math
from bench.flops import counted_gflop
from bench.memory import peak_memory
from bench.timing import PhaseClock, measure_interleaved, paired_ratio, timing_columns
from bench.user_model import build_user_model, is_user_model
from fdsm.models.casting import to_dtype
from fdsm.recipes import RECIPES, Recipe, example_batch, in_memory_format, recipe_available, user_recipes
from fdsm.training import make_optimizer, training_step

# The gradient-based objective each FD row replaces (the paper's exact step): its speed-up is counterpart time / FD
# time. A Taylor row is timed against the nested-reverse step it replaces, the same way.
COUNTERPART = {"FD-SSM": "SSM", "FD-SSM*": "SSM", "FD-DSM": "DSM", "FD-DSM*": "DSM", "FD-SSMVR": "SSMVR",
               "SSM-Taylor": "SSM", "SSMVR-Taylor": "SSMVR"}
# The strongest exact step of an FD row (Taylor mode, no double backward): a second speed-up, ``speedup_taylor``,
# from the same interleaved rounds. FD-DSM has none: DSM needs only first derivatives.
STRONGEST = {"FD-SSM": "SSM-Taylor", "FD-SSM*": "SSM-Taylor", "FD-SSMVR": "SSMVR-Taylor"}
USER_BATCH = 64  # a user model's batch when --batch is not given
USER_LR = 1e-3  # a user model's Adam learning rate when --lr is not given


def _event(case: Mapping[str, Any]) -> tuple[int, ...] | None:
    text = case.get("event_shape") or ""
    return tuple(int(n) for n in str(text).split(",")) if text else None


@functools.cache
def _user_recipes(spec: str, event: tuple[int, ...] | None, batch: int, lr: float) -> dict[str, Recipe]:
    model = build_user_model(spec, event)  # built and checked once per process, for its interface
    return user_recipes(spec, functools.partial(build_user_model, spec, event), model.interface, batch, lr)


def recipes_of(case: Mapping[str, Any]) -> dict[str, Recipe]:
    """Every recipe of the case's model, by objective label."""
    if is_user_model(case["model"]):
        return _user_recipes(case["model"], _event(case), int(case["batch"]), float(case["lr"]))
    return {r.value.objective: r.value for r in RECIPES if r.value.model == case["model"]}


def recipe_for(case: Mapping[str, Any], objective: str | None = None) -> Recipe:
    """The recipe of the case (or of another ``objective`` of its model); a KeyError names the missing row."""
    recipes, label = recipes_of(case), objective or case["objective"]
    if label not in recipes:
        raise KeyError(f"{case['model']} has no row {label!r}; it has {', '.join(recipes)}")
    return recipes[label]


@functools.cache
def _seeded_batch(model_key: tuple, batch: int, dtype: str, device: str, seed: int) -> torch.Tensor:
    """The synthetic batch of one model, shared by a row and its rivals: (batch, *event) uniform in [0, 1]."""
    case = dict(model_key)
    recipe = next(iter(recipes_of(case).values()))  # any row of the model: they share its input shape
    torch.manual_seed(seed)
    model = recipe.build_model(case["size"])
    return example_batch(model, batch, dtype=DTYPES[dtype], device=device,
                         generator=torch.Generator().manual_seed(seed))


def build_row(recipe: Recipe, case: Mapping[str, Any], *, device: torch.device | str | None = None
              ) -> tuple[torch.nn.Module, torch.Tensor]:
    """A row's freshly built model and its whole seeded batch x: (batch, *event), in the case's dtype, layout and on
    ``device`` (default: the case's). Every process that builds the same case gets the same model and batch: the
    ranks of a data-parallel step (``bench.distributed_case``) each take their slice of this x."""
    device = torch.device(case["device"] if device is None else device)
    dtype = DTYPES[case["dtype"]]
    if device.type == "cuda":  # process-wide, so every CUDA row sets them; the warm-up steps do the tuning
        torch.backends.cudnn.benchmark = bool(case["cudnn_benchmark"])
        set_float32_math(case["float32_math"])
    torch.manual_seed(int(case["seed"]))
    model = to_dtype(recipe.build_model(case["size"]), dtype, device)
    model_key = tuple((k, case.get(k, "")) for k in ("model", "size", "batch", "event_shape", "lr"))
    x = _seeded_batch(model_key, int(case["batch"]), case["dtype"], str(device), int(case["seed"]))
    recipe.prepare_model(model, x)  # e.g. DKEF's inducing points from data-like rows
    return in_memory_format(model, x, case["memory_format"])


@dataclass
class Stepper:
    """One row's model, optimizer and batch, ready to take complete training steps: ``stepper()`` takes one, and
    ``losses`` records each step's loss."""

    recipe: Recipe
    case: Mapping[str, Any]
    losses: list[torch.Tensor] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.model, self.x = build_row(self.recipe, self.case)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.recipe.optim, total_steps=10**6)
        self.clock = PhaseClock(torch.device(self.case["device"]))

    def __call__(self) -> None:
        self.clock.start()
        loss = training_step(self.model, lambda: self.recipe.loss(self.model, self.x), self.optimizer,
                             clip=self.recipe.optim.clip, scheduler=self.scheduler, step=len(self.losses) + 1,
                             mark=self.clock.mark)
        self.losses.append(loss)


def _rival(case: Mapping[str, Any], versus: str) -> tuple[Stepper | None, str]:
    """The stepper of a rival objective after one trial step, or None and why it cannot run."""
    try:
        other = Stepper(recipe_for(case, versus), case)
        other()
    except Exception as err:  # e.g. exact SSM out of memory where FD fits: the row is then timed without it
        return None, f"{versus} could not run beside it ({type(err).__name__}: {err}), so no speed-up"
    return other, ""


def measure_step(case: Mapping[str, Any]) -> dict[str, Any]:
    """Time, peak memory and loss of one complete training step of ``case`` (see the module docstring).

    Each claim is a ratio measured side by side (DESIGN.md): a slow phase of the machine lands on all the rivals.
    The rivals are dropped before the memory probe.
    """
    recipe = recipe_for(case)
    available, reason = recipe_available(recipe)
    if not available:
        return {"status": "unsupported", "message": reason}
    device = torch.device(case["device"])
    step = Stepper(recipe, case)
    rivals = {}  # column suffix -> (objective, its stepper): each timed in the same rounds as this row
    notes = []
    for suffix, table in (("", COUNTERPART), ("_taylor", STRONGEST)):
        if (versus := table.get(case["objective"])) is not None:
            other, note = _rival(case, versus)
            notes.append(note)
            if other is not None:
                rivals[suffix] = versus, other
    timings = measure_interleaved([step, *(other for _, other in rivals.values())], device,
                                  warmup=int(case["warmup"]), repeats=int(case["repeats"]))
    paired: dict[str, Any] = {"message": "; ".join(filter(None, notes))} if any(notes) else {}
    for (suffix, (versus, _)), timing in zip(rivals.items(), timings[1:], strict=True):
        ratio = paired_ratio(timing, timings[0])
        paired |= {f"versus{suffix}": versus, f"speedup{suffix}": ratio.median, f"speedup{suffix}_q1": ratio.q1,
                   f"speedup{suffix}_q3": ratio.q3}
    del rivals  # their models, optimizer states and batches leave before the memory probe
    phases = {f"time_{phase}_ms": ms for phase, ms in step.clock.median_ms(last=timings[0].repeats).items()}
    gflop, not_counted = counted_gflop(case, recipe)
    if not_counted:
        paired["message"] = "; ".join(filter(None, [paired.get("message"), not_counted]))
    memory = peak_memory(step, device)
    return {**timing_columns(timings[0]), **phases, "gflop": gflop, "tflops": gflop / timings[0].median_ms,
            "threads": timings[0].threads, "peak_mem_mb": memory.peak_mb,
            "reserved_mb": memory.reserved_mb, "loss": step.losses[0].item(), "table": recipe.table,
            "optimizer": recipe.optim.name, "lr": recipe.optim.lr, **paired}
