"""``fdsm-bench models``: list every registered model with its size, input shape and parameter count.

Models are built on the meta device, so even the paper sizes are listed instantly and use no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bench.config import Shared, UsageError, option
from bench.csvlog import ResultsFileError, check_writable, write_atomic
from bench.experiment import Command
from fdsm.models import MODELS, SIZES, build, parameter_count


@dataclass(frozen=True)
class ModelsConfig:
    csv: Path | None = option(None, "also write the table to this CSV file")


def model_table() -> pd.DataFrame:
    """One row per (model, size): model, size, interface, input_shape, parameters, summary."""
    rows = []
    for entry in MODELS:
        spec = entry.value
        for size in SIZES:
            with torch.device("meta"):
                model = build(spec.name, size=size)
            rows.append(
                {
                    "model": spec.name,
                    "size": size,
                    "interface": spec.interface,
                    "input_shape": "x".join(map(str, model.event_shape)),
                    "parameters": parameter_count(model),
                    "summary": spec.summary,
                }
            )
    return pd.DataFrame(rows)


def plan(config: ModelsConfig, shared: Shared) -> str:
    """What ``run`` would print and write, after the check of ``--csv`` that ``write_atomic`` makes when it writes
    (a folder, a place that cannot be written), without writing."""
    if config.csv is not None:
        if config.csv.is_dir():
            raise UsageError(f"--csv {config.csv}: a folder where a results CSV belongs; choose another --csv")
        check_writable(config.csv.parent, make=False, option="--csv")
    return f"models: would list {len(MODELS.names())} models" + (f", into {config.csv}" if config.csv else "")


def run(config: ModelsConfig, shared: Shared) -> int:
    table = model_table()
    if config.csv is not None:  # before the table: a path that cannot be written is refused before any output
        try:
            write_atomic(table, config.csv)
        except ResultsFileError as err:
            raise UsageError(f"--csv {str(err).removesuffix('; choose another --out')}; choose another --csv") \
                from err
    print(table.drop(columns="summary").to_string(index=False, formatters={"parameters": "{:,}".format}))
    if config.csv is not None:
        print(f"wrote {config.csv}")
    return 0


COMMAND = Command("models", "list the models (name, size, input shape, parameter count); --csv writes them",
                  ModelsConfig(), run, plan, ignores=("dtype", "seed", "repeats", "retry"))  # meta-device counts
