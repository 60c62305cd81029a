"""A tidy CSV that survives crashes and resumes: one row per measurement, rewritten atomically after every row.

``CsvLog(path, key_columns)`` reads what ``path`` already holds. ``log.done(row)`` tells whether a row with the
same values in ``key_columns`` (the configuration: model, method, order, ...) is already there, and
``log.append(row)`` adds one row and rewrites the file atomically (write a temporary file beside it, flush, fsync,
``os.replace``), so that an interrupted sweep leaves every finished row on disk and never a half-written line.
Re-running the same command then skips the finished rows. The whole file is rewritten each time; sweeps here have
hundreds of rows, not millions.

Rows are dicts; the columns are ``key_columns`` and ``columns`` (the schema, always present, in that order), then
any other keys of the rows in first-seen order; a row without a column gets an empty cell.
Keys are compared as text, with numbers normalized (``1``, ``1.0`` and ``"1.0"`` are the same key), since a CSV
round trip loses the types. A file written by an older version is read through ``bench.results.normalize``: a
renamed column (``aliases``, e.g. ``width`` -> ``n_chan``) gets its current name and a checkpoint path in ``weights``
its content digest, so that its rows match the cases of today's commands; the file is rewritten in that form only
when a row is appended.

pytest-benchmark JSON (``pytest bench/ --benchmark-json=out.json``) converts to the same rows with
``rows_from_pytest_benchmark``, so one writer serves both paths::

    log = CsvLog("derivatives.csv", key_columns=DERIVATIVE_KEYS)
    for row in rows_from_pytest_benchmark("out.json"):
        log.append(row)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.results import normalize


def as_key(value: Any) -> str:
    """A value as a key: numbers by their float value to 12 significant digits, anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        return format(float(value), ".12g")
    except (TypeError, ValueError):
        return str(value)


class CsvLog:
    """The rows of one CSV file, appended one at a time and rewritten atomically (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, key_columns: Sequence[str], columns: Sequence[str] = (),
                 aliases: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.key_columns = tuple(key_columns)
        self.columns = tuple(dict.fromkeys([*self.key_columns, *columns]))  # always present, first, in this order
        self.frame = read_rows(self.path, aliases)
        self.frame = pd.DataFrame() if self.frame is None else self.frame
        missing = [c for c in self.key_columns if len(self.frame) and c not in self.frame.columns]
        if missing:
            raise ValueError(f"CsvLog({str(self.path)!r}): the existing file lacks the key column(s) {missing}; "
                             f"it was written by another command or version: move it away or use another --out")
        # key -> the newest row with that key, as read from the file (``done``, ``stored``); appends add to it
        self._rows = {self._key(row): row for row in self.frame.to_dict("records")}

    def _key(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        missing = [c for c in self.key_columns if c not in row]
        if missing:
            raise KeyError(f"CsvLog.append(row): the row lacks the key column(s) {missing}; got {sorted(row)}")
        return tuple(as_key(row[c]) for c in self.key_columns)

    def done(self, row: Mapping[str, Any]) -> bool:
        """Whether a row with the same key values is already in the file."""
        return self._key(row) in self._rows

    def stored(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The newest row of the file with the same key values as ``row`` ({} when there is none)."""
        return self._rows.get(self._key(row), {})

    def rows_for(self, cases: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
        """The rows whose keys are those of ``cases`` (e.g. the current sweep's, in a file that holds more)."""
        wanted = {self._key(case) for case in cases}
        mask = [self._key(row) in wanted for row in self.frame.to_dict("records")]
        return self.frame[mask].reset_index(drop=True)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row and rewrite the file atomically."""
        key = self._key(row)  # checks the key columns before anything is written
        new = pd.DataFrame([dict(row)])
        frame = new if self.frame.empty else pd.concat([self.frame, new], ignore_index=True)
        rest = [c for c in frame.columns if c not in self.columns]
        self.frame = frame.reindex(columns=[*self.columns, *rest])
        self._write()
        self._rows[key] = dict(row)

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.append(row)

    def _write(self) -> None:
        write_atomic(self.frame, self.path)


def write_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to the CSV ``path`` atomically (a temporary file beside it, flushed, fsynced, then
    ``os.replace``): a crash leaves the old file or the new one, never half of one. For a whole table at once,
    such as a summary derived from a ``CsvLog``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            frame.to_csv(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a results CSV is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_rows(path: str | os.PathLike, aliases: Mapping[str, str] | None = None) -> pd.DataFrame | None:
    """The rows of a results CSV in today's form (``bench.results.normalize``), or None when there is no file or it
    is empty."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return None
    frame = pd.read_csv(path)
    return normalize(frame, aliases) if aliases is not None else normalize(frame)


def rows_from_pytest_benchmark(json_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The CSV rows of a pytest-benchmark JSON file: each benchmark's ``extra_info`` (which holds the row's
    configuration, memory, error and status) with ``time_ms`` and ``time_ms_iqr`` from its stats (seconds -> ms).
    Only an ``ok`` row gets a time: a case that failed its check was timed, but the time is not of a right answer."""
    report = json.loads(Path(json_path).read_text())
    rows = []
    for bench in report.get("benchmarks", []):
        stats = bench.get("stats") or {}
        row = dict(bench.get("extra_info", {}))
        if stats and row.get("status") == "ok":
            row["time_ms"] = stats["median"] * 1e3
            row["time_ms_iqr"] = stats["iqr"] * 1e3
        rows.append(row)
    return rows
