"""``fdsm-bench models``: list every registered model with its size, input shape and parameter count.

Models are built on the meta device, so even the paper sizes are listed instantly and use no memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from fdsm.models import MODELS, SIZES, build, parameter_count

NAME = "models"
HELP = "list the models (name, size, input shape, parameter count); --csv writes them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, default=None, help="also write the table to this CSV file")


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


def run(args: argparse.Namespace) -> int:
    table = model_table()
    print(table.drop(columns="summary").to_string(index=False, formatters={"parameters": "{:,}".format}))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0
