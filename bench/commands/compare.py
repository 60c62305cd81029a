"""``fdsm-bench compare OLD NEW``: the ratio NEW / OLD of one metric, row by row, and a regression gate.

Every CSV that both result folders hold (``derivatives.csv``, ``train_steps.csv``, ...) is read with
``bench.csvlog.read_rows`` (a CSV that is not well formed is refused in one line; older column names and
checkpoint paths are brought up to date, so that one job run into two folders, or with its checkpoint elsewhere,
matches row for row) and joined on its configuration columns:
the registered experiment's ``compare_keys`` (``keys`` when None), or, for a CSV no experiment writes, every text
or integer column that is not metadata (``keys_for``). For each row of OLD it prints ``old``, ``new`` and
``ratio = new / old`` of ``--metric``, and marks a regression where the metric got worse by more than
``--threshold`` (for time, memory and error: ratio > 1 + threshold; for throughput and speedups:
ratio < 1 / (1 + threshold)), where a row that was ``ok`` is not ``ok`` any more or lost its number (NOTE [a lost
number]: the metric empty, text, or a time <= 0), and where a row, a CSV or the metric's column of OLD is missing
from NEW. A CSV of OLD or NEW that lacks ``status`` or a key that the suite always writes (``method``), where the
other has it, is malformed: a usage error (exit 2), not a join on fewer keys (``check_columns``).

Before the tables it lists the metadata (``bench.environment.METADATA_COLUMNS``, but the timestamp) whose values
differ between OLD and NEW. A ratio between two machines says more about the machines than the code: where a row
of NEW was measured on another machine than its row of OLD (``device_name``, ``torch`` or ``threads`` differ),
its ratio is shown but does not count as a regression unless ``--across-machines`` is given; missing rows and
rows no longer ``ok`` still do.

A metric that no CSV of OLD has is a usage error (exit 2): a gate that compared nothing must not pass; so is one
that a CSV of OLD holds but not as measured numbers (``status``, ``model``, a key: ``check_metric``). The exit
status is 1 when anything regressed, so CI can gate on it; pytest-benchmark's ``--benchmark-compare-fail`` plays
the same role for its JSON. ``--dry-run`` makes the same checks (``pairs``) and says, per CSV, what would be
compared and on which keys (``plan``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.config import Shared, UsageError, option
from bench.csvlog import as_key, read_rows
from bench.environment import METADATA_COLUMNS
from bench.experiment import Command
from bench.results import ALIASES, RANDOM_WEIGHTS, is_digest

NAME = "compare"
HELP = "compare two result folders row by row; exit 1 when a metric regressed past a threshold"

HIGHER_IS_BETTER = ("gb_per_s", "frac_of_copy", "speedup", "cosine")
NOT_KEYS = (*METADATA_COLUMNS, "status", "message")
# a row measured where any of these differ was measured on another machine: its times are not comparable
MACHINE_COLUMNS = ("device_name", "torch", "threads")
UNREPORTED_METADATA = ("timestamp",)  # differs between any two runs: says nothing
# the values a measured metric can take (NOTE [a lost number]); any other metric: any finite number
POSITIVE = ("time_ms", "time_compute_ms", "time_loss_ms", "time_backward_ms", "time_update_ms", "time_ms_per_step",
            "trace_ms", "compile_ms", "gb_per_s", "tflops", "speedup", "speedup_taylor", "time_ratio")  # > 0
NON_NEGATIVE = ("time_ms_iqr", "peak_mem_mb", "reserved_mb", "nvml_used_mb", "comm_allreduce_ms", "rel_error",
                "rel_error_max", "err_estimate")  # >= 0: a peak above the baseline, an error, a spread


def _positive(threshold: float) -> float:
    if not threshold > 0:
        raise UsageError(f"--threshold {threshold}: expected a positive fraction, e.g. 0.10")
    return threshold


@dataclass(frozen=True)
class CompareConfig:
    old: Path = option(None, "the baseline result folder", positional=True, type=Path)
    new: Path = option(None, "the result folder to check", positional=True, type=Path)
    metric: str = option("time_ms", "the column to compare")
    threshold: float = option(0.10, "the relative change that counts as a regression, e.g. 0.10 for 10%",
                              convert=_positive)
    across_machines: bool = option(False, "count a worse metric as a regression also where OLD and NEW were "
                                          "measured on different machines (device_name, torch or threads)")


DEFAULT = CompareConfig()


# ---- key columns ----------------------------------------------------------------------------------------------

def registry() -> dict[str, Any]:
    """CSV file name -> the registered ``bench.experiment.Experiment`` that writes it."""
    from bench.experiments import EXPERIMENTS  # imported here: the registry imports every experiment's module

    return {e.csv: e for e in EXPERIMENTS}


def declared_keys(csv_name: str) -> tuple[str, ...] | None:
    """The registered experiment's ``compare_keys`` (its ``keys`` when None), or None for an unregistered CSV."""
    experiment = registry().get(csv_name)
    if experiment is None:
        return None
    return tuple(experiment.keys if experiment.compare_keys is None else experiment.compare_keys)


def aliases_for(csv_name: str) -> Mapping[str, str]:
    """The column renames to apply when reading ``csv_name``: the suite's and its experiment's."""
    experiment = registry().get(csv_name)
    return {**ALIASES, **(dict(experiment.aliases) if experiment is not None else {})}


def required_columns(csv_name: str) -> tuple[str, ...]:
    """The columns that every results file ``csv_name`` of the suite has, whatever its version: ``status`` and the
    declared keys among the experiment's required ``columns``. The other keys came later (``cudnn_benchmark`` and
    ``float32_math`` of train_steps.csv, say): an older CSV without one is joined on fewer keys, and says so."""
    experiment = registry().get(csv_name)
    required = set(experiment.columns) if experiment is not None else set()
    return (*(k for k in declared_keys(csv_name) or () if k in required), "status")


def check_columns(csv_name: str, old: pd.DataFrame, new: pd.DataFrame, paths: tuple[Path, Path]) -> None:
    """A ``UsageError`` where OLD or NEW lacks a ``required_columns`` column that the other has: a malformed results
    file (``status`` or ``method`` cut off), whose rows would otherwise be read as ok, or merged on fewer keys."""
    sides = (("OLD", old, paths[0], "NEW", new), ("NEW", new, paths[1], "OLD", old))
    for label, frame, path, other_label, other in sides:
        lacks = [c for c in required_columns(csv_name) if c in other.columns and c not in frame.columns]
        if lacks:
            raise UsageError(f"{path} ({label}): no column {', '.join(lacks)}, which {other_label}'s {csv_name} has "
                             "and the suite always writes: a malformed results file, not compared")


def keys_for(csv_name: str, old: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """The columns that identify a row of ``csv_name`` in both frames: the declared keys that both have, or, for a
    CSV no experiment declares, every column both have that is text, integer or boolean and not metadata."""
    shared = [c for c in old.columns if c in new.columns]
    declared = declared_keys(csv_name)
    if declared is not None:
        return [c for c in declared if c in shared]
    types = pd.api.types
    return [c for c in shared if c not in NOT_KEYS
            and any(f(old[c]) for f in (types.is_string_dtype, types.is_object_dtype, types.is_integer_dtype,
                                       types.is_bool_dtype))]


# ---- the metric -----------------------------------------------------------------------------------------------

def holds_numbers(column: pd.Series) -> bool:
    """Whether a column is one of numbers: empty, a numeric dtype, or text some of whose cells are numbers (the
    others are damaged cells, not a text column); not ``status``, ``model`` or a column of booleans (``flagged``)."""
    types = pd.api.types
    cells = column.dropna()
    if types.is_bool_dtype(column) or any(isinstance(v, bool) for v in cells):
        return False
    return cells.empty or types.is_numeric_dtype(column) or pd.to_numeric(cells, errors="coerce").notna().any()


def not_metrics(csv_name: str) -> set[str]:
    """The columns of ``csv_name`` that are not measurements: its declared keys, metadata, status and message."""
    return {*NOT_KEYS, *(declared_keys(csv_name) or ())}


def measured_columns(csv_name: str, frame: pd.DataFrame) -> list[str]:
    """The columns of ``frame`` that ``--metric`` can name and that hold a number."""
    return [c for c in frame.columns
            if c not in not_metrics(csv_name) and holds_numbers(frame[c]) and frame[c].notna().any()]


def check_metric(csv_name: str, old: pd.DataFrame, metric: str) -> None:
    """A ``UsageError`` where OLD's ``csv_name`` has a column ``metric`` that is not a measured number (``status``,
    ``model``, a key): its ratios would be NaN or meaningless, and a gate on them would pass having compared nothing.
    An empty column passes (every row of a CSV may have failed): there is nothing of it to lose."""
    if metric not in old.columns:
        return
    if not holds_numbers(old[metric]):
        why = f"not a numeric column of {csv_name}"
    elif metric in not_metrics(csv_name):
        why = f"a key or metadata column of {csv_name}, not a measurement"
    else:
        return
    raise UsageError(f"--metric {metric}: {why}; expected one of "
                     f"{', '.join(measured_columns(csv_name, old)) or '(none)'}")


# ---- one CSV --------------------------------------------------------------------------------------------------

# NOTE [a lost number]
# An ok row always carries its numbers (``bench.sweep`` makes an ok row without them an error row). Where NEW's row
# is ok but its metric is empty, text, infinite or a value the quantity cannot take (a time, a rate or a speed-up
# <= 0; a memory, an error or a spread < 0), while OLD's ok row had a valid one, NEW lost its number: the row counts
# as regressed, whatever the machines, and its status says why ("ok -> ok (time_ms <= 0)"). An invalid value is
# never divided: its ratio is empty. An ok row of OLD without a valid value (a speed-up on a row that has none) is
# not gated on the metric.

def why_invalid(column: pd.Series, metric: str) -> pd.Series:
    """Per cell of ``metric``'s column, why it is not a value of ``metric`` ("" where it is; NOTE [a lost
    number])."""
    number = pd.to_numeric(column, errors="coerce").astype(float)
    below, bound = pd.Series(False, index=column.index), ""
    if metric in POSITIVE:
        below, bound = number <= 0, "<= 0"
    elif metric in NON_NEGATIVE:
        below, bound = number < 0, "< 0"
    why = np.select([column.isna(), number.isna(), number.abs() == np.inf, below],
                    [f"no {metric}", f"{metric} not a number", f"{metric} not finite", f"{metric} {bound}"], "")
    return pd.Series(why, index=column.index, dtype=object)


def _text(column: pd.Series) -> pd.Series:
    """Values as join keys: numbers normalized (``1`` == ``1.0``), empty cells as ""; robust to dtypes that a
    CSV round trip chose differently in OLD and NEW (an empty column reads as float, a full one as text)."""
    return column.map(as_key).astype(object)


def compare_frames(old: pd.DataFrame, new: pd.DataFrame, keys: Sequence[str], metric: str, threshold: float, *,
                   across_machines: bool = False) -> pd.DataFrame:
    """One row per configuration of OLD: keys, old, new, ratio, status, machine, regressed.

    A row that was ``ok`` in OLD and is not ``ok`` in NEW, or is not in NEW at all (status ``missing``), or lost its
    number (NOTE [a lost number]), counts as regressed; so does a metric worse than the threshold, but only where
    both rows come from the same machine (``machine`` is "" there, else the ``MACHINE_COLUMNS`` that differ) unless
    ``across_machines``. A key that occurs more than once in a frame is compared by its last (newest) row."""
    keys = list(keys)
    machine = [c for c in MACHINE_COLUMNS if c in old.columns and c in new.columns and c not in keys]
    on = [f"_k{i}" for i in range(len(keys))] or ["_k"]  # no keys: every row of OLD against NEW's last row

    def side(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
        part = pd.DataFrame({f"_k{i}": _text(frame[k]) for i, k in enumerate(keys)} or {"_k": ""},
                            index=frame.index)
        part[metric + suffix] = pd.to_numeric(frame[metric], errors="coerce")
        part["invalid" + suffix] = why_invalid(frame[metric], metric)
        part["status" + suffix] = frame["status"].astype(object) if "status" in frame.columns else "ok"
        for c in machine:
            part[c + suffix] = _text(frame[c])
        if suffix == "_old":
            for k in keys:
                part[k] = frame[k]
        part["found" + suffix] = True
        return part.drop_duplicates(on, keep="last")

    joined = side(old, "_old").merge(side(new, "_new"), on=on, how="left")
    status_old = joined["status_old"].fillna("").astype(str)
    found = joined["found_new"].notna()
    status_new = joined["status_new"].where(found, "missing").fillna("").astype(str)
    valid_old, why_new = joined["invalid_old"] == "", joined["invalid_new"].fillna("")
    ratio = (joined[f"{metric}_new"] / joined[f"{metric}_old"]).where(valid_old & (why_new == ""))
    worse = (ratio < 1 / (1 + threshold) if metric in HIGHER_IS_BETTER else ratio > 1 + threshold).fillna(False)
    a = {c: joined[f"{c}_old"] for c in machine}
    b = {c: joined[f"{c}_new"].fillna("") for c in machine}
    differs = {c: (a[c] != "") & (b[c] != "") & (a[c] != b[c]) for c in machine}
    other = pd.Series(["+".join(c for c in machine if differs[c].iloc[i]) for i in range(len(joined))],
                      index=joined.index, dtype=object)
    lost = (status_old == "ok") & (status_new != "ok")
    lost_number = (status_old == "ok") & (status_new == "ok") & valid_old & (why_new != "")  # NOTE [a lost number]
    gated = worse if across_machines else worse & (other == "")
    status = status_old + " -> " + status_new + (" (" + why_new + ")").where(lost_number, "")
    return pd.DataFrame({
        **{k: joined[k] for k in keys},
        "old": joined[f"{metric}_old"], "new": joined[f"{metric}_new"], "ratio": ratio,
        "status": status, "machine": other, "regressed": gated | lost | lost_number,
    }).reset_index(drop=True)


# ---- metadata -------------------------------------------------------------------------------------------------

def _values(frames: Sequence[pd.DataFrame], column: str) -> list[str]:
    seen = {as_key(v) for frame in frames if column in frame.columns for v in frame[column].dropna().unique()}
    return sorted(seen - {""})


def metadata_differences(olds: Sequence[pd.DataFrame], news: Sequence[pd.DataFrame]) -> dict[str, tuple]:
    """Metadata column -> (OLD's values, NEW's values), for the columns whose sets of values differ."""
    out = {}
    for column in METADATA_COLUMNS:
        if column in UNREPORTED_METADATA:
            continue
        a, b = _values(olds, column), _values(news, column)
        if a != b and (a or b):
            out[column] = (a, b)
    return out


def _show(values: Sequence[str], most: int = 4) -> str:
    if not values:
        return "(none)"
    shown = ", ".join(values[:most])
    return shown + (f", ... ({len(values)} values)" if len(values) > most else "")


# ---- the command ----------------------------------------------------------------------------------------------


def _read(path: Path, aliases) -> pd.DataFrame:
    """The rows of a results CSV in today's terms (an empty file: no rows); a malformed one is a one-line error,
    whose remedy is compare's (it writes no --out: the file is one of the two folders compared)."""
    frame = read_rows(path, aliases, remedy="compare folders of the suite's own results")
    return pd.DataFrame() if frame is None else frame


@dataclass(frozen=True)
class Pair:
    """One CSV of OLD and its namesake in NEW, read and checked (``pairs``)."""

    name: str
    metric: str
    old: pd.DataFrame
    new_path: Path
    new: pd.DataFrame | None  # None: NEW has no such file

    @property
    def skipped(self) -> bool:
        """OLD has no column of the metric (time_ms in grad_agreement.csv): nothing of it to lose."""
        return self.metric not in self.old.columns

    @property
    def lost(self) -> str:
        """What NEW lost that OLD had, the whole CSV or the metric's column ("" when nothing)."""
        if self.new is None:
            return f"{self.new_path} is missing"
        return "" if self.metric in self.new.columns else f"{self.new_path} has no column {self.metric!r}"

    @property
    def keys(self) -> list[str]:
        """The columns the two are joined on (``keys_for``)."""
        return keys_for(self.name, self.old, self.new)

    def notes(self) -> list[str]:
        """What the reader of the table should know: keys not joined on, checkpoints named by a path."""
        notes = []
        one_sided = [k for k in (declared_keys(self.name) or ()) if (k in self.old.columns) != (k in self.new.columns)]
        if one_sided:
            notes.append(f"  key column(s) {one_sided} in only one of OLD and NEW: not joined on")
        for label, frame in (("OLD", self.old), ("NEW", self.new)):
            if "weights" in frame.columns:
                paths = sorted({v for v in frame["weights"].dropna().unique()
                                if isinstance(v, str) and v != RANDOM_WEIGHTS and not is_digest(v)})
                if paths:
                    notes.append(f"  weights of {label} named by a path that is not here, so not by content: "
                                 f"{_show(paths)}")
        return notes


def pairs(config: CompareConfig) -> list[Pair]:
    """Every CSV of OLD, in file order, with its namesake in NEW, after every check that comes before comparing
    (the folders, the threshold, ``check_metric``, ``check_columns``, some row of OLD to compare): ``run`` and
    ``--dry-run`` make the same ones."""
    for name, folder in (("OLD", config.old), ("NEW", config.new)):
        if folder is None or not Path(folder).is_dir():
            raise UsageError(f"{folder}: expected a result folder holding CSV files ({name})")
    old_folder, new_folder, metric = Path(config.old), Path(config.new), config.metric
    _positive(config.threshold)
    olds = sorted(old_folder.glob("*.csv"))
    if not olds:
        raise UsageError(f"{old_folder} holds no CSV file")
    found = []
    for old_path in olds:
        name, aliases = old_path.name, aliases_for(old_path.name)
        old = _read(old_path, aliases)
        check_metric(name, old, metric)
        new_path = new_folder / name
        pair = Pair(name, metric, old, new_path, _read(new_path, aliases) if new_path.exists() else None)
        if not pair.skipped and not pair.lost:
            check_columns(name, old, pair.new, (old_path, new_path))
        found.append(pair)
    if not any(len(pair.old) for pair in found if not pair.skipped):
        raise UsageError(f"no CSV in {old_folder} has a column {metric!r}: nothing was compared")
    return found


def plan(config: CompareConfig, shared: Shared) -> str:
    """What ``run`` would compare (``--dry-run``, after the same checks): per CSV of OLD, its rows and NEW's and the
    keys that join them."""
    machines = "" if config.across_machines else " (on one machine)"
    lines = [f"would compare {config.metric} of OLD {config.old} with NEW {config.new}, row by row: a row regresses "
             f"where {config.metric} got worse by more than {config.threshold:.0%}{machines}, or in NEW is missing, "
             "no longer ok or without its number"]
    for pair in pairs(config):
        if pair.skipped:
            lines.append(f"{pair.name}: no column {config.metric!r}, skipped")
        elif pair.lost:
            lines.append(f"{pair.name}: {pair.lost}: its {len(pair.old)} rows of OLD would count as regressed")
        else:
            lines.append(f"{pair.name}: {len(pair.old)} rows of OLD against {len(pair.new)} of NEW, joined on "
                         f"{', '.join(pair.keys)}")
            lines.extend(pair.notes())
    return "\n".join(lines)


def run(config: CompareConfig, shared: Shared) -> int:
    """Print the tables of ratios and the verdict; 1 when anything regressed (see the module docstring)."""
    metric = config.metric
    sections: list[str] = []  # printed after the metadata, in OLD's file order
    read_olds: list[pd.DataFrame] = []
    read_news: list[pd.DataFrame] = []
    regressions = compared = ungated = 0
    machines: set[str] = set()
    for pair in pairs(config):
        old, new = pair.old, pair.new
        if pair.skipped:
            sections.append(f"{pair.name}: no column {metric!r}, skipped")
            continue
        if pair.lost:
            sections.append(f"\n{pair.name}: REGRESSED, {pair.lost} ({len(old)} rows of OLD)")
            compared, regressions = compared + len(old), regressions + len(old)
            continue
        read_olds.append(old)
        read_news.append(new)
        keys = pair.keys
        table = compare_frames(old, new, keys, metric, config.threshold, across_machines=config.across_machines)
        compared += len(table)
        regressions += int(table["regressed"].sum())
        across = table["machine"] != ""
        machines.update(c for value in table.loc[across, "machine"] for c in value.split("+"))
        if not config.across_machines:
            ungated += int(across.sum())
        if not across.any():
            table = table.drop(columns="machine")
        sections.append(f"\n{pair.name}: {metric}, new / old ({len(table)} rows of OLD, joined on {', '.join(keys)})")
        sections.extend(pair.notes())
        sections.append(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))

    differences = metadata_differences(read_olds, read_news)
    if differences:
        print("metadata that differ between OLD and NEW:")
        for column, (a, b) in differences.items():
            print(f"  {column}: {_show(a)}  ->  {_show(b)}")
    if machines:
        what = ", ".join(c for c in MACHINE_COLUMNS if c in machines)
        if config.across_machines:
            print(f"OLD and NEW come from different machines ({what} differ): {metric} compared across machines "
                  "as asked (--across-machines)")
        else:
            print(f"OLD and NEW come from different machines ({what} differ): time-like metrics are not compared "
                  f"across machines, so {metric} is shown but only missing rows, status changes (ok -> not ok) and "
                  "lost numbers count as regressions there; --across-machines compares it")
    for section in sections:
        print(section)
    verdict = "REGRESSED" if regressions else "ok"
    caveat = f"; {ungated} rows from other machines not gated on {metric}" if ungated else ""
    print(f"\n{verdict}: {regressions} of {compared} rows worse than {1 + config.threshold:.2f}x on {metric}, "
          f"missing, no longer ok or without their {metric}{caveat}")
    return 1 if regressions else 0


# It reads two folders: no device, dtype, seed, size, timing or output folder of its own.
COMMAND = Command(NAME, HELP, DEFAULT, run, plan=plan, ignores=("device", "dtype", "out", "quick", "seed", "repeats",
                                                            "retry"))
