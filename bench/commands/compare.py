"""``fdsm-bench compare OLD NEW``: the ratio NEW / OLD of one metric, row by row, and a regression gate.

Every CSV that both result folders hold (``derivatives.csv``, ``train_steps.csv``, ...) is joined on its
configuration columns (``KEYS``; for other files, every text or integer column that is not metadata). For each
row of OLD it prints ``old``, ``new`` and ``ratio = new / old`` of ``--metric``, and marks a regression where the
metric got worse by more than ``--threshold`` (for time, memory and error: ratio > 1 + threshold; for throughput:
ratio < 1 / (1 + threshold)), where a row that was ``ok`` is not ``ok`` any more, and where a row, a CSV or the
metric's column of OLD is missing from NEW. A metric that no CSV of OLD has is a usage error (exit 2): a gate that
compared nothing must not pass. The exit status is 1 when
anything regressed, so CI can gate on it; pytest-benchmark's ``--benchmark-compare-fail`` plays the same role for
its JSON.

Ratios compare runs of one machine: a ratio between two machines says more about the machines than the code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.cli import UsageError
from bench.commands.train_steps import KEYS as TRAIN_STEPS_KEYS
from bench.derivative_case import CASE_KEYS
from bench.environment import METADATA_COLUMNS

NAME = "compare"
HELP = "compare two result folders row by row; exit 1 when a metric regressed past a threshold"

KEYS = {
    # a derivatives run's step may come from its eps-sweep, which can move between runs: not a key here
    "derivatives": tuple(k for k in CASE_KEYS if k != "eps"),
    "eps_sweep": CASE_KEYS,
    # a step time does not depend on the seed of the synthetic batch: compare runs made with other seeds
    "train_steps": tuple(k for k in TRAIN_STEPS_KEYS if k != "seed"),
    "kernels": ("kernel", "impl", "pass", "size_mb", "dtype", "device"),
}
HIGHER_IS_BETTER = ("gb_per_s", "frac_of_copy", "speedup", "cosine")
NOT_KEYS = (*METADATA_COLUMNS, "status", "message")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, help="the baseline result folder")
    parser.add_argument("new", type=Path, help="the result folder to check")
    parser.add_argument("--metric", default="time_ms", help="the column to compare (default: time_ms)")
    parser.add_argument("--threshold", type=float, default=0.10,
                        help="the relative change that counts as a regression (default: 0.10, i.e. 10%%)")


def key_columns(stem: str, old: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """The configuration columns of a CSV: ``KEYS[stem]``, else its shared text/integer non-metadata columns."""
    shared = [c for c in old.columns if c in new.columns]
    if stem in KEYS:
        return [c for c in KEYS[stem] if c in shared]
    return [c for c in shared if c not in NOT_KEYS
            and (pd.api.types.is_object_dtype(old[c]) or pd.api.types.is_integer_dtype(old[c]))]


def compare_frames(old: pd.DataFrame, new: pd.DataFrame, keys: list[str], metric: str,
                   threshold: float) -> pd.DataFrame:
    """One row per configuration of OLD: keys, old, new, ratio, status, regressed. A row that was ``ok`` in OLD
    and is not ``ok`` in NEW, or is not in NEW at all (status ``missing``), counts as regressed."""
    columns = [*keys, metric, "status"]
    joined = old[columns].merge(new[columns], on=keys, how="left", suffixes=("_old", "_new"))
    joined["status_new"] = joined["status_new"].fillna("missing")
    ratio = joined[f"{metric}_new"] / joined[f"{metric}_old"]
    worse = ratio < 1 / (1 + threshold) if metric in HIGHER_IS_BETTER else ratio > 1 + threshold
    lost = (joined["status_old"] == "ok") & (joined["status_new"] != "ok")
    return pd.DataFrame({
        **{k: joined[k] for k in keys},
        "old": joined[f"{metric}_old"], "new": joined[f"{metric}_new"], "ratio": ratio,
        "status": joined["status_old"] + " -> " + joined["status_new"],
        "regressed": worse.fillna(False) | lost,
    })


def run(args: argparse.Namespace) -> int:
    for folder in (args.old, args.new):
        if not folder.is_dir():
            raise UsageError(f"{folder}: expected a result folder holding CSV files")
    if args.threshold <= 0:
        raise UsageError(f"--threshold {args.threshold}: expected a positive fraction, e.g. 0.10")
    olds = sorted(args.old.glob("*.csv"))
    if not olds:
        raise UsageError(f"{args.old} holds no CSV file")
    regressions = compared = 0
    for old_path in olds:
        new_path = args.new / old_path.name
        old = pd.read_csv(old_path)
        if args.metric not in old.columns:  # e.g. time_ms in grad_agreement.csv: nothing of this metric to lose
            print(f"{old_path.name}: no column {args.metric!r}, skipped")
            continue
        new = pd.read_csv(new_path) if new_path.exists() else None
        if new is None or args.metric not in new.columns:
            lost = "is missing" if new is None else f"has no column {args.metric!r}"
            print(f"\n{old_path.name}: REGRESSED, {args.new / old_path.name} {lost} ({len(old)} rows of OLD)")
            compared, regressions = compared + len(old), regressions + len(old)
            continue
        table = compare_frames(old, new, key_columns(old_path.stem, old, new), args.metric, args.threshold)
        compared += len(table)
        regressions += int(table["regressed"].sum())
        print(f"\n{old_path.name}: {args.metric}, new / old ({len(table)} rows of OLD)")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if compared == 0:
        raise UsageError(f"no CSV in {args.old} has a column {args.metric!r}: nothing was compared")
    verdict = "REGRESSED" if regressions else "ok"
    print(f"\n{verdict}: {regressions} of {compared} rows worse than {1 + args.threshold:.2f}x on {args.metric}, "
          "missing or no longer ok")
    return 1 if regressions else 0
