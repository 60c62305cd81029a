"""A tidy CSV that survives crashes and resumes: one row per measurement, rewritten atomically after every row.

``CsvLog(path, key_columns)`` reads what ``path`` already holds. ``log.done(row)`` tells whether a row with the
same values in ``key_columns`` (the configuration: model, method, order, ...) is already there, and
``log.append(row)`` adds one row and rewrites the file atomically (write a temporary file beside it, flush, fsync,
``os.replace``), so that an interrupted sweep leaves every finished row on disk and never a half-written line.
Re-running the same command then skips the finished rows, but for those whose status is one to ``retry``
(``CsvLog(..., retry=("error",))``, the CLI's ``--retry``) and those that are no measurement to keep (``broken``: a
status none of the suite writes, an ok row without its ``numbers``, or an ``identity`` column, such as a user's
model's source digest, that is not the case's): they are not done, and the row measured again takes their place.
The whole file is rewritten each time; sweeps here have hundreds of rows, not millions.

Rows are dicts; the columns are ``key_columns`` and ``columns`` (the schema, always present, in that order), then
any other keys of the rows in first-seen order; a row without a column gets an empty cell.
Keys are compared as text, with numbers normalized (``1``, ``1.0`` and ``"1.0"`` are the same key), since a CSV
round trip loses the types. A file written by an older version is read through ``bench.results.normalize``: a
renamed column (``aliases``, e.g. ``width`` -> ``n_chan``) gets its current name and a checkpoint path in ``weights``
its content digest, so that its rows match the cases of today's commands; the file is rewritten in that form only
when a row is appended.

A file the suite cannot take as its own is refused, never rewritten, with ``ResultsFileError`` (a ``UsageError``:
one line naming the file and what to do, exit status 2): one that is not a text CSV or does not parse, one whose
header lacks the key columns (another command's or version's), and one whose rows do not all have the header's
number of fields (see NOTE [a torn last row]). ``check_writable(folder)`` makes an output folder and proves it
writable before any case runs, so that a bad ``--out`` costs one line rather than a traceback.

pytest-benchmark JSON (``pytest bench/ --benchmark-json=out.json``) converts to the same rows with
``rows_from_pytest_benchmark``, so one writer serves both paths::

    log = CsvLog("derivatives.csv", key_columns=DERIVATIVE_KEYS)
    for row in rows_from_pytest_benchmark("out.json"):
        log.append(row)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import UsageError
from bench.isolation import STATUSES
from bench.results import normalize

REMEDY = "move it aside or use another --out"


class ResultsFileError(UsageError):
    """A results file or output folder that the suite cannot use as its own; the message names it and the remedy."""


def _one_line(err: BaseException) -> str:
    """``err`` as ``Type: message`` on one line (pandas' parser messages end in a newline)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def check_writable(folder: str | os.PathLike, *, make: bool = True, option: str = "--out") -> None:
    """Make ``folder`` (and its parents) and create and delete a temporary file in it; a folder that cannot be made
    or written (a path under a regular file, a read-only place) is a ``ResultsFileError`` naming it (as the value
    of ``option``). With ``make=False`` (a check before any work, a dry run) nothing is made: the folder, or else its
    nearest existing parent, must be a folder this process may write to.

    >>> import tempfile
    >>> file = Path(tempfile.mkdtemp()) / "a-file"
    >>> _ = file.write_text("")
    >>> check_writable(file / "out")
    Traceback (most recent call last):
    ...
    bench.csvlog.ResultsFileError: --out .../a-file/out: cannot write there (NotADirectoryError: ...); choose ...
    """
    folder = Path(folder)
    if not make:
        there = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
        if not (there.is_dir() and os.access(there, os.W_OK | os.X_OK)):
            what = "not a folder" if not there.is_dir() else "not writable"
            raise ResultsFileError(f"{option} {folder}: cannot write there ({there} is {what}); choose another "
                                   f"{option}")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fdsm-bench-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ResultsFileError(f"--out {folder}: cannot write there ({_one_line(err)}); choose another --out") from err


# The one number an ok row may lack, NaN, when its message says why (the float64 reference failed).
EXPLAINED_GAPS = ("rel_error",)


def missing_numbers(row: Mapping[str, Any], numbers: Sequence[str]) -> list[str]:
    """What is wrong with ``row``'s ``numbers`` columns ("time_ms is nan", "peak_mem_mb is missing"): each must be
    a finite number, but for a NaN in ``EXPLAINED_GAPS`` when the row has a message."""
    wrong = []
    for column in numbers:
        value = row.get(column)
        if value is None:
            wrong.append(f"{column} is missing")
        elif not isinstance(value, Real) or isinstance(value, bool):
            wrong.append(f"{column} is {value!r}, not a number")
        elif not math.isfinite(value) and not (column in EXPLAINED_GAPS and math.isnan(value) and row.get("message")):
            wrong.append(f"{column} is {value}")
    return wrong


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
                 aliases: Mapping[str, str] | None = None, retry: Collection[str] = (), numbers: Sequence[str] = (),
                 identity: Sequence[str] = ()):
        self.path = Path(path)
        self.retry = frozenset(retry)  # the statuses of kept rows that are not done: measured again, then replaced
        self.numbers = tuple(numbers)  # the columns a kept ok row must carry (``missing_numbers``), else not done
        # columns that say what was measured without being keys (a user's model's source digest): a kept row whose
        # value differs from a case's is not done; a case without the column does not compare it
        self.identity = tuple(identity)
        self.key_columns = tuple(key_columns)
        self.columns = tuple(dict.fromkeys([*self.key_columns, *columns]))  # always present, first, in this order
        self.frame = read_rows(self.path, aliases)
        self.frame = pd.DataFrame() if self.frame is None else self.frame
        missing = [c for c in self.key_columns if len(self.frame.columns) and c not in self.frame.columns]
        if missing:
            raise ResultsFileError(f"{self.path}: the existing file lacks the key column(s) {missing}; it was "
                                   f"written by another command or version, not this one's: {REMEDY}")
        # key -> the newest row with that key, as read from the file (``done``, ``stored``); appends add to it
        self._rows = {self._key(row): row for row in self.frame.to_dict("records")}

    def _key(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        missing = [c for c in self.key_columns if c not in row]
        if missing:
            raise KeyError(f"CsvLog.append(row): the row lacks the key column(s) {missing}; got {sorted(row)}")
        return tuple(as_key(row[c]) for c in self.key_columns)

    def done(self, row: Mapping[str, Any]) -> bool:
        """Whether a row with the same key values is already in the file, whole and of the same ``identity``
        (``broken``), with a status not to ``retry``."""
        kept = self._rows.get(self._key(row))
        return kept is not None and kept.get("status") not in self.retry and not self.broken(kept, row)

    def broken(self, kept: Mapping[str, Any], case: Mapping[str, Any] | None = None) -> str:
        """What makes a kept row no measurement to keep for ``case`` ("" for none): an ``identity`` column whose
        value is not the case's, or, where ``status`` is a column of the schema, a status that is none of
        ``STATUSES`` (a file without a status column, or edited) or an ok row without its ``numbers``. Such a row is
        measured again."""
        if differ := [c for c in self.identity if c in (case or {}) and as_key(kept.get(c)) != as_key(case[c])]:
            return ", ".join(f"{c} {as_key(kept.get(c)) or '(none)'} is now {as_key(case[c])}" for c in differ)
        if "status" not in self.columns:
            return ""
        status = kept.get("status")
        if not as_key(status):
            return "no status"
        if status not in STATUSES:
            return f"status {status!r} is none of {', '.join(STATUSES)}"
        return ", ".join(missing_numbers(kept, self.numbers)) if status == "ok" else ""

    def retried(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Why each kept row of ``rows`` that is not done is measured again by this run: its status, one to
        ``retry``, or what is broken about it."""
        return [self.broken(kept, row) or str(kept["status"])
                for row in rows if (kept := self._rows.get(self._key(row))) and not self.done(row)]

    def stored(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The newest row of the file with the same key values as ``row`` ({} when there is none)."""
        return self._rows.get(self._key(row), {})

    def rows_for(self, cases: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
        """The rows whose keys are those of ``cases`` (e.g. the current sweep's, in a file that holds more)."""
        wanted = {self._key(case) for case in cases}
        mask = [self._key(row) in wanted for row in self.frame.to_dict("records")]
        return self.frame[mask].reset_index(drop=True)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row, in place of the newest row with the same key values where there is one (a row measured
        again), and rewrite the file atomically."""
        key = self._key(row)  # checks the key columns before anything is written
        if key in self._rows:  # in the place of the newest row of that key (``done``'s), keeping the sweep's order
            kept = self.frame.to_dict("records")
            kept[max(i for i, r in enumerate(kept) if self._key(r) == key)] = dict(row)
            frame = pd.DataFrame(kept)
        else:
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
    if path.is_dir():
        raise ResultsFileError(f"{path}: a folder where a results CSV belongs; choose another --out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ResultsFileError(f"{path}: cannot write it ({_one_line(err)}); choose another --out") from err
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


# NOTE [a torn last row]
# ``CsvLog`` rewrites its file atomically, so a file it wrote ends with a whole row. A last row with fewer fields
# than the header was broken off by another writer (one that crashed, a copy cut short); pandas would read it with
# the missing cells as NaN, a row that looks measured and is not, and appending would write it back as one. So the
# rows are first split with the csv module on the raw text (which keeps quoted newlines inside their field) and any
# row whose field count differs from the header's refuses the file; only then does pandas parse it.


def _text(path: Path, remedy: str) -> str:
    """The text of a results CSV; a file that cannot be read or is not UTF-8 text is a ``ResultsFileError``."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ResultsFileError(f"{path}: cannot read it ({_one_line(err)}); {remedy}") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ResultsFileError(f"{path}: not a text CSV (not UTF-8 at byte {err.start}); {remedy}") from err
    if "\0" in text:
        raise ResultsFileError(f"{path}: not a text CSV (a NUL byte at character {text.index(chr(0))}); {remedy}")
    return text


def _check_rows(path: Path, text: str, remedy: str) -> bool:
    """Whether ``text`` holds a header; a row with another number of fields than the header (NOTE [a torn last
    row]) or text the csv module cannot split is a ``ResultsFileError``."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records = [(reader.line_num, fields) for fields in reader if fields]  # blank lines carry no row
    except csv.Error as err:
        raise ResultsFileError(f"{path}: cannot be parsed as CSV (line {reader.line_num}: {err}); {remedy}") from err
    if not records:
        return False
    width = len(records[0][1])
    for i, (line, fields) in enumerate(records[1:], start=2):
        if len(fields) != width:
            torn = i == len(records) and len(fields) < width
            what = "its last row, broken off by a writer that crashed" if torn else "a row"
            raise ResultsFileError(f"{path}: line {line} has {len(fields)} fields where the header has {width} "
                                   f"({what}; this suite writes whole files atomically); {remedy}")
    return True


def read_rows(path: str | os.PathLike, aliases: Mapping[str, str] | None = None, *,
              remedy: str = REMEDY) -> pd.DataFrame | None:
    """The rows of a results CSV in today's form (``bench.results.normalize``), or None when there is no file or it
    holds no header. A file that is not a well-formed CSV is a ``ResultsFileError`` (see the module docstring)
    ending in ``remedy`` (what the command reading it lets the user do), and is left as it is.

    >>> import tempfile
    >>> csv_path = Path(tempfile.mkdtemp()) / "rows.csv"
    >>> _ = csv_path.write_text("method,order,time_ms\\na,1,1.5\\na,2")
    >>> read_rows(csv_path)
    Traceback (most recent call last):
    ...
    bench.csvlog.ResultsFileError: .../rows.csv: line 3 has 2 fields where the header has 3 (its last row, ...
    """
    path = Path(path)
    if not path.exists():
        return None
    if path.is_dir():
        raise ResultsFileError(f"{path}: a folder where a results CSV belongs; {remedy}")
    text = _text(path, remedy)
    if not _check_rows(path, text, remedy):
        return None
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ResultsFileError(f"{path}: cannot be parsed as CSV ({_one_line(err)}); {remedy}") from err
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
