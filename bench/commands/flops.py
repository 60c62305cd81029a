r"""``fdsm-bench flops``: the model FLOPs of each ``train-steps`` case, and the rate a run ran them at.

Counts one training step per (model, objective) on the meta device (``bench.flops.step_gflop``: shapes only, so the
paper's sizes count in seconds on a CPU) and writes ``flops.csv`` (model, objective, size, batch, gflop, and a
message where a model cannot run on meta):

    fdsm-bench flops --size paper --models deep-ebm,ncsn --out results/local

``--times RUN/train_steps.csv`` counts the ``ok`` rows of that run instead (a file with none is refused), at their own
size and batch (a user's model as train-steps built it: its spec, ``event_shape`` and ``lr``), and adds each row's
``time_ms`` and the rate it ran its arithmetic at,

.. math::
    \text{tflops} = \frac{\text{gflop}}{\text{time\_ms}} \quad (\text{GFLOP / ms} = \text{TFLOP/s}),

which ``train-steps`` records itself since it counts FLOPs; this puts the rate beside runs from before then, such
as the H200's ``results/gpu-h200/train_steps.csv``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bench.config import Shared, UsageError, option, positive_int
from bench.csvlog import check_writable, write_atomic
from bench.experiment import Command
from bench.experiments import train_steps
from bench.flops import counted_gflop
from bench.step_case import recipe_for

CASE_COLUMNS = ["model", "objective", "size", "batch"]


@dataclass(frozen=True)
class FlopsConfig:
    models: tuple[str, ...] = option(train_steps.DEFAULT.models, "models", convert=train_steps.check_models)
    size: str = option("paper", "model size", choices=("paper", "cpu"))
    batch: int | None = option(None, "batch for every row", type=positive_int,
                               default_text="train-steps' own at that size")
    times: Path | None = option(None, "a train_steps.csv: count its ok rows and add their time_ms and rate",
                                default_text="none")


def timed_cases(path: Path) -> pd.DataFrame:
    """The ``ok`` rows of a train-steps CSV: their case columns and ``time_ms``; for a user's model also how it was
    built (``event_shape`` as train-steps wrote it, "" where the model declares its own, and ``lr``)."""
    if not path.is_file():
        raise UsageError(f"--times {path}: no such file (expected a train_steps.csv)")
    try:
        rows = pd.read_csv(path, dtype={"event_shape": str})  # "4" or "1,28,28", not 4.0 beside empty cells
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"--times {path}: not a CSV ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                         "expected a train_steps.csv") from err
    missing = {*CASE_COLUMNS, "time_ms", "status"} - set(rows)
    if missing:
        raise UsageError(f"--times {path}: not a train_steps.csv, it lacks the columns {sorted(missing)}")
    ok = rows.status == "ok"
    if not ok.any():
        raise UsageError(f"--times {path}: no ok rows to rate (its {len(rows)} rows' status and message say why); "
                         "expected a train_steps.csv with ok rows")
    user = [c for c in ("event_shape", "lr") if c in rows]  # how a user's model row was built
    rows = rows.loc[ok, [*CASE_COLUMNS, "time_ms", *user]].reset_index(drop=True)
    if "event_shape" in rows:
        rows["event_shape"] = rows.event_shape.fillna("")  # an empty cell: the model's own event_shape
    return rows


def _counted(case: dict) -> tuple[float, str]:
    try:
        recipe = recipe_for(case)
    except KeyError:
        return float("nan"), f"no recipe {case['model']}/{case['objective']} here"
    return counted_gflop(case, recipe)


def _cases(config: FlopsConfig, shared: Shared) -> pd.DataFrame:
    """The cases to count, every check made (``--times``' file, ``--out``): a run's ok rows, or train-steps'."""
    check_writable(shared.out, make=False)
    if config.times is not None:
        return timed_cases(config.times)
    steps = dataclasses.replace(train_steps.DEFAULT, models=config.models, size=config.size, batch=config.batch)
    return pd.DataFrame(train_steps.cases(steps, dataclasses.replace(shared, device=torch.device("cpu"),
                                                                     dtype=torch.float32)))


def plan(config: FlopsConfig, shared: Shared) -> str:
    rows = _cases(config, shared)
    source = f"the ok rows of {config.times}" if config.times is not None else "train-steps' cases"
    return f"flops: would count {len(rows)} cases ({source}) into {shared.out / 'flops.csv'}"


def run(config: FlopsConfig, shared: Shared) -> int:
    rows = _cases(config, shared)
    rows["gflop"], rows["message"] = zip(*map(_counted, rows.to_dict("records")), strict=True)
    if "time_ms" in rows:
        rows["tflops"] = rows.gflop / rows.time_ms
    rows = rows[[*CASE_COLUMNS, *(c for c in ("time_ms", "gflop", "tflops") if c in rows), "message"]]
    write_atomic(rows, shared.out / "flops.csv")
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.3g}"))  # a user's small model: 9.2e-05 GFLOP
    print(f"\nwrote {shared.out / 'flops.csv'}")
    return 0


COMMAND = Command("flops", "model FLOPs per training step of each train-steps case (meta device), and the rate of "
                  "a train-steps run", FlopsConfig(), run, plan=plan,
                  ignores=("device", "dtype", "quick", "seed", "repeats", "retry"))  # float32 counts on the meta device
