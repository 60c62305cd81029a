"""``fdsm-bench fit``: train one model with one recipe and save its weights, e.g. the trained deep EBM of Figure 2.

The paper measures Figure 2 on a deep EBM *trained* on MNIST; ``fit`` makes such a checkpoint on the embedded
default data (scikit-learn's digits, resized to the model's input: ``fdsm.data.for_event_shape``), or on a file
the user names with ``--data NAME[:PATH]`` (``bench.data_option``; e.g. ``--data mnist:train-images-idx3-ubyte.gz``).
It runs ``fdsm.training.train`` with a recipe of ``fdsm.recipes.RECIPES`` (the model, objective, optimizer and
batch of a paper table row) for ``--steps`` steps or ``--budget`` seconds, whichever ends first, and writes the
``state_dict`` to ``--save`` (default ``OUT/checkpoints/<model>-<objective>.pt``) with a JSON note of how it was
made beside it. ``fdsm-bench derivatives --checkpoint PATH`` then measures that model. Like the sweeps, it
resumes: an existing checkpoint is kept (the rows measured on it stay valid) if its note records the settings asked
for; other settings are a usage error, and ``--overwrite`` trains again. The CSVs' ``weights`` column names the
checkpoint by a digest of its content, so rows measured on weights that ``--overwrite`` replaced no longer match.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import Shared, UsageError, option, positive, positive_int
from bench.data_option import check_data, fit_to_event, read_data, sample_rows
from bench.environment import metadata
from bench.experiment import Command
from fdsm.data import for_event_shape
from fdsm.recipes import RECIPES
from fdsm.training import Record, train

QUICK_N_CHAN = 2  # the quick derivative sweeps' deep EBM width, so that they can load the quick checkpoint


def _recipe(name: str) -> str:
    try:
        RECIPES.get(name)
    except (ValueError, RuntimeError) as err:  # an unknown or disabled recipe: the message lists the names
        raise UsageError(f"--recipe: {err}") from err
    return name


@dataclass(frozen=True)
class FitConfig:
    recipe: str = option("deep-ebm/DSM", f"a recipe, one of {', '.join(RECIPES.names())}", convert=_recipe)
    size: str | None = option(None, "model preset", choices=("paper", "cpu"), default_text="paper on CUDA, else cpu")
    n_chan: int | None = option(None, "the deep EBM's n_chan", aliases=("--width",), type=positive_int,
                                default_text="the preset's")
    steps: int = option(400, "training steps", type=positive_int)
    # The step count, not the clock, should end a default run, so that the checkpoint is the same on a loaded
    # machine; the budget is a safety stop.
    budget_s: float = option(300.0, "training seconds, whichever of steps and budget ends first", flag="--budget",
                             convert=positive("--budget"))
    lr: float = option(1e-3, "learning rate (the paper's rates are for 300k steps)", convert=positive("--lr"))
    samples: int = option(2048, "training samples", type=positive_int)
    data: str | None = option(None, "training data NAME[:PATH] through fdsm.data, e.g. mnist:FILE.gz",
                              convert=check_data, default_text="the embedded data for the model's input")
    save: Path | None = option(None, "where to write the state_dict", default_text="OUT/checkpoints/<recipe>.pt")
    overwrite: bool = option(False, "train again even if the checkpoint exists")


DEFAULT = FitConfig()
QUICK = dataclasses.replace(DEFAULT, steps=3, n_chan=QUICK_N_CHAN)


def checkpoint_path(out: Path, recipe_name: str) -> Path:
    """The default ``--save``: ``OUT/checkpoints/deep-ebm-DSM.pt`` for ``deep-ebm/DSM``."""
    return out / "checkpoints" / (recipe_name.replace("/", "-").replace("*", "-serial") + ".pt")


def kept_settings(path: Path, asked: dict) -> str:
    """How the settings in the checkpoint's JSON note differ from ``asked`` ("" when they agree; a setting that an
    older note does not record is not compared)."""
    note_path = path.with_suffix(".json")
    note = json.loads(note_path.read_text()) if note_path.is_file() else {}
    return ", ".join(f"{k} {note[k]} (asked: {v})" for k, v in asked.items() if k in note and note[k] != v)


def _size(config: FitConfig, shared: Shared) -> str:
    return config.size or ("paper" if shared.device.type == "cuda" else "cpu")


def plan(config: FitConfig, shared: Shared) -> str:
    path = config.save or checkpoint_path(shared.out, config.recipe)
    state = "exists: kept if trained with these settings" if path.exists() and not config.overwrite else "new"
    return (f"fit: would train {config.recipe} (size {_size(config, shared)}) for {config.steps} steps or "
            f"{config.budget_s:g} s on {config.data or 'the embedded data'}, into {path} ({state})")


def run(config: FitConfig, shared: Shared) -> int:
    size = _size(config, shared)
    asked = {"recipe": config.recipe, "size": size, "width": config.n_chan, "lr": config.lr,
             "steps_asked": config.steps, "samples": config.samples, "seed": shared.seed,
             **({"data": config.data} if config.data else {})}
    path = config.save or checkpoint_path(shared.out, config.recipe)
    if path.exists() and not config.overwrite:
        kept = kept_settings(path, asked)
        if kept:
            raise UsageError(f"{path} exists but was trained with other settings ({kept}); --overwrite trains "
                             "again")
        print(f"{path} exists with these settings, kept (--overwrite trains again)")
        return 0
    base = RECIPES.get(config.recipe)
    if config.samples < base.batch:
        raise UsageError(f"--samples {config.samples}: fewer than the batch of {config.recipe}; expected at least "
                         f"{base.batch}")
    recipe = dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=config.lr))
    torch.manual_seed(shared.seed)
    model = recipe.build_model(size, **({} if config.n_chan is None else {"n_chan": config.n_chan}))
    event_shape = tuple(model.event_shape)
    if config.data is None:
        data, source = for_event_shape(event_shape, config.samples, shared.seed), \
            f"embedded default for {event_shape} (fdsm.data.for_event_shape)"
    else:  # read before any training: a bad file is one line, exit 2
        data = sample_rows(fit_to_event(read_data(config.data), event_shape), config.samples, shared.seed)
        source = f"{config.data}, {len(data)} rows fitted to {event_shape}"
    model = model.to(shared.device)
    data = data.to(shared.device)  # (N, *event)
    recipe.prepare_model(model, data)

    def report(record: Record) -> None:
        print(f"{config.recipe} step {record.step:5d}  {record.wall_s:6.1f} s  loss {record.loss:+.5g}", flush=True)

    records = train(model, recipe, data, steps=config.steps, evaluate=dict, eval_every=max(1, config.steps // 10),
                    generator=torch.Generator().manual_seed(shared.seed), time_budget_s=config.budget_s,
                    on_record=report)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    last = records[-1]
    note = {**asked, "batch": recipe.batch, "steps": last.step, "train_seconds": round(last.wall_s, 1),
            "final_loss": last.loss, "data": source, **metadata(shared.device)}
    path.with_suffix(".json").write_text(json.dumps(note, indent=2) + "\n")
    print(f"wrote {path} after {last.step} steps ({last.wall_s:.0f} s), final loss {last.loss:+.5g}")
    return 0


COMMAND = Command("fit", "train one model with one recipe (default deep-ebm/DSM) on the embedded data or --data, "
                  "and save its weights", DEFAULT, run, QUICK, plan)
