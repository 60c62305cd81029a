r"""``fdsm-bench flops``: the model FLOPs of each ``train-steps`` case, and the rate a run ran them at.

Counts one training step per (model, objective) on the meta device (``bench.flops.step_gflop``: shapes only, so the
paper's sizes count in seconds on a CPU) and writes ``flops.csv`` (model, objective, size, batch, gflop, and a
message where a model cannot run on meta):

    fdsm-bench flops --size paper --models deep-ebm,ncsn --out results/local

``--times RUN/train_steps.csv`` counts the ``ok`` rows of that run instead, at their own size and batch, and adds
each row's ``time_ms`` and the rate it ran its arithmetic at,

.. math::
    \text{tflops} = \frac{\text{gflop}}{\text{time\_ms}} \quad (\text{GFLOP / ms} = \text{TFLOP/s}),

which ``train-steps`` records itself since it counts FLOPs; this puts the rate beside runs from before then, such
as the H200's ``results/gpu-h200/train_steps.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd
import torch

from bench.cli import UsageError
from bench.commands import train_steps
from bench.config import comma_words
from bench.flops import counted_gflop

NAME = "flops"
HELP = "model FLOPs per training step of each train-steps case (meta device), and the rate of a train-steps run"

CASE_COLUMNS = ["model", "objective", "size", "batch"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("flops")
    g.add_argument("--models", type=comma_words, help="models (default: train-steps' models)")
    g.add_argument("--size", choices=("paper", "cpu"), default="paper", help="model size (default: paper)")
    g.add_argument("--batch", type=int, help="batch for every row (default: train-steps' own at that size)")
    g.add_argument("--times", type=Path, help="a train_steps.csv: count its ok rows and add their time_ms and rate")


def timed_cases(path: Path) -> pd.DataFrame:
    """The ``ok`` rows of a train-steps CSV: their case columns and ``time_ms``."""
    if not path.is_file():
        raise UsageError(f"--times {path}: no such file (expected a train_steps.csv)")
    rows = pd.read_csv(path)
    missing = {*CASE_COLUMNS, "time_ms", "status"} - set(rows)
    if missing:
        raise UsageError(f"--times {path}: not a train_steps.csv, it lacks the columns {sorted(missing)}")
    return rows.loc[rows.status == "ok", [*CASE_COLUMNS, "time_ms"]].reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    if args.times is not None:
        rows = timed_cases(args.times)
    else:
        config = dataclasses.replace(train_steps.DEFAULT, models=args.models or train_steps.DEFAULT.models,
                                     size=args.size, batch=args.batch)
        todo = train_steps.cases(config, dtype="float32", device=torch.device("cpu"), seed=args.seed)
        rows = pd.DataFrame(todo, columns=CASE_COLUMNS)
    rows["gflop"], rows["message"] = zip(*map(counted_gflop, rows.to_dict("records")), strict=True)
    if "time_ms" in rows:
        rows["tflops"] = rows.gflop / rows.time_ms
    rows = rows[[c for c in rows if c != "message"] + ["message"]]  # the reason, if any, last
    args.out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out / "flops.csv", index=False)
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"\nwrote {args.out / 'flops.csv'}")
    return 0
