"""``fdsm-bench fit``: train one model with one recipe and save its weights, e.g. the trained deep EBM of Figure 2.

The paper measures Figure 2 on a deep EBM *trained* on MNIST; ``fit`` makes such a checkpoint on the embedded
default data (scikit-learn's digits, resized to the model's input: ``fdsm.data.for_event_shape``). It runs
``fdsm.training.train`` with a recipe of ``fdsm.training.RECIPES`` (the model, objective, optimizer and batch of a
paper table row) for ``--steps`` steps or ``--budget`` seconds, whichever ends first, and writes the
``state_dict`` to ``--save`` (default ``OUT/checkpoints/<model>-<objective>.pt``) with a JSON note of how it was
made beside it. ``fdsm-bench derivatives --checkpoint PATH`` then measures that model. Like the sweeps, it
resumes: an existing checkpoint is kept (the rows measured on it stay valid) if its note records the settings asked
for; other settings are a usage error, and ``--overwrite`` trains again. The CSVs' ``weights`` column names the
checkpoint by its path, so rows measured on weights that ``--overwrite`` replaced would be resumed as if measured on
the new ones: ``fit`` lists the CSVs beside it that hold such rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch

from bench.cli import UsageError
from bench.commands.derivatives import QUICK as DERIVATIVES_QUICK
from bench.config import positive_int
from bench.environment import metadata
from fdsm.data import for_event_shape
from fdsm.training import RECIPES, Record, train

NAME = "fit"
HELP = "train one model with one recipe (default deep-ebm/DSM) on the embedded data and save its weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fit")
    g.add_argument("--recipe", default="deep-ebm/DSM", help=f"one of {', '.join(RECIPES.names())} "
                                                            "(default: deep-ebm/DSM)")
    g.add_argument("--size", choices=("paper", "cpu"), help="model preset (default: paper on CUDA, else cpu)")
    g.add_argument("--width", type=int, help="the deep EBM's n_chan (default: the preset's; --quick: the quick "
                                             "derivative sweeps' width, so that they can load the checkpoint)")
    g.add_argument("--steps", type=positive_int, help="training steps (default: 400; --quick: 3)")
    # The step count, not the clock, should end a default run, so that the checkpoint is the same on a loaded
    # machine; the budget is a safety stop (400 steps took 102 s on 2 CPU cores, results/cpu/all.log).
    g.add_argument("--budget", dest="budget_s", type=float, default=300.0,
                   help="training seconds, whichever of steps and budget ends first (default: 300)")
    g.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate (default: 1e-3; the paper's rates are for 300k steps)")
    g.add_argument("--samples", type=int, default=2048, help="training samples from the embedded data (default 2048)")
    g.add_argument("--save", type=Path, help="where to write the state_dict (default: OUT/checkpoints/...)")
    g.add_argument("--overwrite", action="store_true", help="train again even if the checkpoint exists")


def checkpoint_path(out: Path, recipe_name: str) -> Path:
    """The default ``--save``: ``OUT/checkpoints/deep-ebm-DSM.pt`` for ``deep-ebm/DSM``."""
    return out / "checkpoints" / (recipe_name.replace("/", "-").replace("*", "-serial") + ".pt")


def kept_settings(path: Path, asked: dict) -> str:
    """How the settings in the checkpoint's JSON note differ from ``asked`` ("" when they agree; a setting that an
    older note does not record is not compared)."""
    note_path = path.with_suffix(".json")
    note = json.loads(note_path.read_text()) if note_path.is_file() else {}
    return ", ".join(f"{k} {note[k]} (asked: {v})" for k, v in asked.items() if k in note and note[k] != v)


def run(args: argparse.Namespace) -> int:
    try:
        base = RECIPES.get(args.recipe)
    except (ValueError, RuntimeError) as err:  # an unknown or disabled recipe: the message lists the names
        raise UsageError(f"--recipe: {err}") from err
    if args.budget_s <= 0 or args.lr <= 0:
        raise UsageError(f"--budget {args.budget_s}, --lr {args.lr}: expected positive values")
    size = args.size or ("paper" if args.device.type == "cuda" else "cpu")
    steps = args.steps if args.steps is not None else (3 if args.quick else 400)
    width = args.width if args.width is not None or not args.quick else DERIVATIVES_QUICK.width
    asked = {"recipe": args.recipe, "size": size, "width": width, "lr": args.lr, "steps_asked": steps,
             "samples": args.samples, "seed": args.seed}
    path = args.save or checkpoint_path(args.out, args.recipe)
    if path.exists() and not args.overwrite:
        kept = kept_settings(path, asked)
        if kept:
            raise UsageError(f"{path} exists but was trained with other settings ({kept}); --overwrite trains "
                             "again (the CSV rows measured on the old weights keep their label: use another --out)")
        print(f"{path} exists with these settings, kept (--overwrite trains again)")
        return 0
    recipe = dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=args.lr))
    torch.manual_seed(args.seed)
    model = recipe.build_model(size, **({} if width is None else {"n_chan": width})).to(args.device)
    event_shape = tuple(model.config.event_shape)
    data = for_event_shape(event_shape, args.samples, args.seed)  # (N, *event)

    def report(record: Record) -> None:
        print(f"{args.recipe} step {record.step:5d}  {record.wall_s:6.1f} s  loss {record.loss:+.5g}", flush=True)

    records = train(model, recipe, data.to(args.device), steps=steps, evaluate=lambda: 0.0,
                    eval_every=max(1, steps // 10), generator=torch.Generator().manual_seed(args.seed),
                    time_budget_s=args.budget_s, on_record=report)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    last = records[-1]
    note = {**asked, "batch": recipe.batch, "steps": last.step,
            "train_seconds": round(last.wall_s, 1), "final_loss": last.loss,
            "data": f"embedded default for {event_shape} (fdsm.data.for_event_shape)", **metadata(args.device)}
    path.with_suffix(".json").write_text(json.dumps(note, indent=2) + "\n")
    print(f"wrote {path} after {last.step} steps ({last.wall_s:.0f} s), final loss {last.loss:+.5g}")
    stale = rows_on(path, args.out)
    if stale:
        print(f"warning: {', '.join(stale)} hold rows measured on the weights this run replaced; a resumed sweep would "
              f"keep them: move those files away or use another --out")
    return 0


def rows_on(checkpoint: Path, out: Path) -> list[str]:
    """The CSVs in ``out`` with rows whose ``weights`` column names ``checkpoint``."""
    return [csv.name for csv in sorted(out.glob("*.csv"))
            if "weights" in (frame := pd.read_csv(csv)) and (frame["weights"].astype(str) == str(checkpoint)).any()]
