"""``fdsm-bench fit``: train one model with one recipe and save its weights, e.g. the trained deep EBM of Figure 2.

The paper measures Figure 2 on a deep EBM *trained* on MNIST; ``fit`` makes such a checkpoint on the embedded
default data (scikit-learn's digits, resized to the model's input: ``fdsm.data.for_event_shape``), or on a file
the user names with ``--data NAME[:PATH]`` (``bench.data_option``; e.g. ``--data mnist:train-images-idx3-ubyte.gz``):
images are fitted to the model's input (flattened for a flat one, such as NICE's), and a model with a ``dim``
(DKEF) is built at the dimension of tabular rows, as ``train`` builds it.
It runs ``fdsm.training.train`` with a recipe of ``fdsm.recipes.RECIPES`` (the model, objective, optimizer and
batch of a paper table row) for ``--steps`` steps or ``--budget`` seconds, whichever ends first, in ``--dtype``
(float32 or float64), and writes the ``state_dict`` to ``--save`` (default ``OUT/checkpoints/<model>-<objective>.pt``)
with a JSON note of how it was made beside it. ``fdsm-bench derivatives --checkpoint PATH`` then measures that model.
Like the sweeps, it resumes: an existing checkpoint is kept (the rows measured on it stay valid) if its note records
the settings asked for (``data`` is the ``--data`` text, ``embedded`` without one; ``data_source`` describes the
rows); other settings are a usage error, and ``--overwrite`` trains again. A ``--save`` that is a folder, or a file
that ``fit`` did not write (no note beside it), is refused, with or without ``--overwrite``; so is an ``--out`` that
is a file. Every check (``prepare``) is made before any training, by ``--dry-run`` too. The CSVs' ``weights`` column
names the checkpoint by a digest of its content, so rows measured on weights that ``--overwrite`` replaced no longer
match.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bench.config import QUICK_N_CHAN, Shared, UsageError, n_chan_setting, option, positive, positive_int
from bench.csvlog import check_writable
from bench.data_option import check_data, fit_to_event, read_data, sample_rows
from bench.environment import metadata
from bench.experiment import Command
from fdsm.data import for_event_shape
from fdsm.models import model_config, to_dtype
from fdsm.recipes import RECIPES, Recipe
from fdsm.training import Record, train


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
    n_chan: int | None = option(None, "the deep EBM's n_chan (models without one refuse it)", aliases=("--width",),
                                type=positive_int,
                                default_text=f"the preset's; --quick: {QUICK_N_CHAN} where the model has an n_chan")
    steps: int = option(400, "training steps", type=positive_int)
    # The step count, not the clock, should end a default run, so that the checkpoint is the same on a loaded
    # machine; the budget is a safety stop.
    budget_s: float = option(300.0, "training seconds, whichever of steps and budget ends first", flag="--budget",
                             convert=positive("--budget"))
    lr: float = option(1e-3, "learning rate (the paper's rates are for 300k steps)", convert=positive("--lr"))
    samples: int = option(2048, "training samples (at least the recipe's batch)", type=positive_int)
    data: str | None = option(None, "training data NAME[:PATH] through fdsm.data, e.g. mnist:FILE.gz",
                              convert=check_data, default_text="the embedded data for the model's input")
    save: Path | None = option(None, "where to write the state_dict (a file; its JSON note goes beside it)",
                               default_text="OUT/checkpoints/<recipe>.pt")
    overwrite: bool = option(False, "train again even if the checkpoint exists")


DEFAULT = FitConfig()
QUICK = dataclasses.replace(DEFAULT, steps=3)


def checkpoint_path(out: Path, recipe_name: str) -> Path:
    """The default ``--save``: ``OUT/checkpoints/deep-ebm-DSM.pt`` for ``deep-ebm/DSM``."""
    return out / "checkpoints" / (recipe_name.replace("/", "-").replace("*", "-serial") + ".pt")


def _note(path: Path) -> dict | None:
    """The JSON note that ``fit`` wrote beside the checkpoint ``path``, or None when there is none (or it is not
    one: unreadable, not JSON, or without the recipe every note records)."""
    try:
        note = json.loads(path.with_suffix(".json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return note if isinstance(note, dict) and "recipe" in note else None


def _check_save(path: Path, given: bool) -> None:
    """``path`` must be a file ``fit`` may write: not a folder, not under a file, and, if it exists, a checkpoint
    that ``fit`` wrote (its note beside it), never another file taken for one or overwritten."""
    option_name = "--save" if given else "--out"
    check_writable(path.parent, make=False, option=option_name)
    if path.is_dir():
        raise UsageError(f"--save {path}: a folder; expected the checkpoint file to write, e.g. "
                         f"{path / 'model.pt'}")
    if path.exists() and _note(path) is None:
        note = path.with_suffix(".json")
        why = f"no note {note.name} beside it" if not note.exists() else f"its note {note.name} is not one fit wrote"
        raise UsageError(f"{option_name}: {path} exists but is not a checkpoint written by fit ({why}); move it away "
                         f"or choose another {option_name}")


def kept_settings(note: dict, asked: dict) -> str:
    """How the settings in a checkpoint's note differ from ``asked`` ("" when they agree; a setting that an older
    note does not record is not compared)."""
    if "data_source" not in note and str(note.get("data", "")).startswith("embedded default"):
        note = {**note, "data": "embedded"}  # an older note described its data; this is how it said "embedded"
    return ", ".join(f"{k} {note[k]} (asked: {v})" for k, v in asked.items() if k in note and note[k] != v)


def _size(config: FitConfig, shared: Shared) -> str:
    return config.size or ("paper" if shared.device.type == "cuda" else "cpu")


@dataclass(frozen=True)
class Job:
    """What ``fit`` will do, every check made: the recipe, the model's build settings, the training rows (N,
    *event) and where they came from, the checkpoint path and the settings its note must record."""

    recipe: Recipe
    size: str
    overrides: dict
    data: Tensor
    source: str
    path: Path
    asked: dict
    kept: bool  # the checkpoint exists, made with the settings asked for


def _overrides(config: FitConfig, shared: Shared, recipe: Recipe, size: str, raw: Tensor | None) -> dict:
    """The model settings beside the preset: ``--n-chan`` (``--quick``'s where the model has an n_chan), and for
    tabular ``--data`` the dimension of its rows where the model has a ``dim`` (DKEF, as ``train`` builds it)."""
    fields = {f.name for f in dataclasses.fields(model_config(recipe.model, size))}
    n_chan = n_chan_setting(config.n_chan, recipe.model, fields, shared.quick)
    overrides = {} if n_chan is None else {"n_chan": n_chan}
    if raw is not None and raw.dim() == 2 and "dim" in fields:
        overrides["dim"] = raw.shape[1]
    return overrides


def _event_shape(config: FitConfig, recipe: Recipe, size: str, overrides: dict) -> tuple[int, ...]:
    """The input shape of the model fit will build, from a build on the meta device (no memory, no time)."""
    try:
        with torch.device("meta"):
            return tuple(recipe.build_model(size, **overrides).event_shape)
    except ValueError as err:  # e.g. NICE at an odd --data dimension
        raise UsageError(f"--recipe {recipe.name} on --data {config.data}: {err}") from err


def _training_rows(config: FitConfig, shared: Shared, recipe: Recipe, raw: Tensor | None,
                   event_shape: tuple[int, ...]) -> tuple[Tensor, str]:
    """The training rows (N, *event_shape), at least the recipe's batch of them, and where they came from."""
    if raw is None:
        return (for_event_shape(event_shape, config.samples, shared.seed),
                f"embedded default for {event_shape} (fdsm.data.for_event_shape)")
    if len(raw) < recipe.batch:
        raise UsageError(f"--data {config.data}: {len(raw)} rows; {recipe.name} needs at least {recipe.batch} (its "
                         "batch)")
    data = sample_rows(fit_to_event(raw, event_shape, f"--data {config.data}"), config.samples, shared.seed)
    return data, f"{config.data}, {len(data)} rows fitted to {event_shape}"


def prepare(config: FitConfig, shared: Shared) -> Job:
    """Every check of ``fit``, made alike by ``--dry-run`` and a run, before any training: the dtype, the output
    paths, the recipe's batch against ``--samples`` and the data's rows, the model settings against the recipe's
    model, the data against its input, and an existing checkpoint's note against the settings asked for."""
    shared.require_full_precision("fit trains", "in half precision the losses overflow and DKEF's solve does not run")
    check_writable(shared.out, make=False)
    path = config.save or checkpoint_path(shared.out, config.recipe)
    _check_save(path, given=config.save is not None)
    recipe = RECIPES.get(config.recipe)
    if config.samples < recipe.batch:
        raise UsageError(f"--samples {config.samples}: fewer than the batch of {config.recipe}; expected at least "
                         f"{recipe.batch}")
    size = _size(config, shared)
    raw = read_data(config.data) if config.data is not None else None  # a bad file: one line, exit 2
    overrides = _overrides(config, shared, recipe, size, raw)
    data, source = _training_rows(config, shared, recipe, raw, _event_shape(config, recipe, size, overrides))
    asked = {"recipe": config.recipe, "size": size, "width": overrides.get("n_chan"), "lr": config.lr,
             "steps_asked": config.steps, "samples": config.samples, "seed": shared.seed,
             "data": config.data or "embedded", "dtype": shared.dtype_name}
    note = _note(path) if path.exists() and not config.overwrite else None
    if note is not None and (differ := kept_settings(note, asked)):
        raise UsageError(f"{path} exists but was trained with other settings ({differ}); --overwrite trains again")
    if note is not None:  # kept only if it is the model its note says: a cut-off or replaced file is no checkpoint
        try:
            recipe.build_model(size, **overrides).load_state_dict(torch.load(path, map_location="cpu",
                                                                             weights_only=True))
        except Exception as err:  # unpickling errors of every kind, a state_dict of another model
            first = " ".join(str(err).split()).split(". ")[0][:160]  # the first sentence of torch's long messages
            raise UsageError(f"{path} exists with a note of these settings, but is not a state_dict of that model "
                             f"({type(err).__name__}: {first}); --overwrite trains again") from err
    return Job(dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim, lr=config.lr)), size, overrides,
               data, source, path, asked, kept=note is not None)


def plan(config: FitConfig, shared: Shared) -> str:
    job = prepare(config, shared)
    if job.kept:
        return f"fit: {job.path} exists, trained with these settings: kept, nothing to train (--overwrite trains again)"
    state = "new" if not job.path.exists() else "trained again"
    return (f"fit: would train {config.recipe} (size {job.size}) for {config.steps} steps or {config.budget_s:g} s "
            f"on {job.source}, in {shared.dtype_name}, into {job.path} ({state})")


def run(config: FitConfig, shared: Shared) -> int:
    job = prepare(config, shared)
    if job.kept:
        print(f"{job.path} exists with these settings, kept (--overwrite trains again)")
        return 0
    torch.manual_seed(shared.seed)
    model = to_dtype(job.recipe.build_model(job.size, **job.overrides), shared.dtype, shared.device)
    data = job.data.to(device=shared.device, dtype=shared.dtype)  # (N, *event)
    job.recipe.prepare_model(model, data)

    def report(record: Record) -> None:
        print(f"{config.recipe} step {record.step:5d}  {record.wall_s:6.1f} s  loss {record.loss:+.5g}", flush=True)

    records = train(model, job.recipe, data, steps=config.steps, evaluate=dict,
                    eval_every=max(1, config.steps // 10), generator=torch.Generator().manual_seed(shared.seed),
                    time_budget_s=config.budget_s, on_record=report)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), job.path)
    last = records[-1]
    note = {**job.asked, "batch": job.recipe.batch, "steps": last.step, "train_seconds": round(last.wall_s, 1),
            "final_loss": last.loss, "data_source": job.source, **metadata(shared.device)}
    job.path.with_suffix(".json").write_text(json.dumps(note, indent=2) + "\n")
    print(f"wrote {job.path} after {last.step} steps ({last.wall_s:.0f} s), final loss {last.loss:+.5g}")
    return 0


COMMAND = Command("fit", "train one model with one recipe (default deep-ebm/DSM) on the embedded data or --data, "
                  "and save its weights", DEFAULT, run, plan, QUICK,
                  ignores=("repeats", "retry"))  # nothing timed; it resumes by its note, not by rows
