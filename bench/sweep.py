"""Run a sweep: a list of cases, each measured once, each giving exactly one CSV row, resumable, with a progress bar.

A *case* is a dict of configuration values (the CSV's key columns: model, method, order, ...). ``run_sweep`` skips
the cases the ``CsvLog`` already holds (and says so where a kept row was measured with other ``SETTINGS``: repeats,
warm-up, threads), runs each other one through ``measure(case) -> dict`` and appends the row

    {**case, **measured, "status": ..., "message": ..., **metadata(device)}

where a metadata column the case or the measurement already sets keeps their value: ``train-steps`` sets
``float32_math`` per case and its worker measures ``threads``, which this process cannot see.
``measure`` returns the measured columns (``time_ms``, ``peak_mem_mb``, ``rel_error``, ...) and may set its own
``status`` (``"unsupported"`` for a method this machine cannot run). With ``isolate=True`` every case runs in a
``bench.isolation.Worker`` process under the ``timeout_s`` budget, which is what the CPU peak-memory probe needs;
a case that times out, runs out of memory or raises gets a ``timeout``, ``oom`` or ``error`` row with the message
(a worker killed by a signal: an ``error`` row that names the signal), the next case gets a fresh worker, and the
sweep goes on. ``isolate=False`` runs in this process (no time budget; errors still become rows), for
sweeps that measure no memory.

``numbers`` (an ``Experiment``'s) are the measured columns an ``ok`` row must carry, finite: an ``ok`` row where one
is missing or not finite would be a dishonest row, so it becomes an ``error`` row whose message names the columns
and their values, e.g. ``"time_ms is nan: an ok row must carry it"``. The one allowed gap is a ``rel_error`` that
is NaN while the row's message says why (``"no rel_error: the float64 reference failed (...)"``).

Ctrl-C (SIGINT) or SIGTERM stops a sweep cleanly: the worker is killed wherever it is blocked, the rows so far are
kept (``CsvLog`` writes each one atomically, and a signal waits until a row is written), one line says how many
rows the file keeps and that re-running the same command resumes, and the process exits with 128 + the signal's
number (130, 143) through ``SystemExit``, without a traceback.

``measure`` must be a module-level function (the worker is spawned and imports it by name).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.csvlog import CsvLog, as_key, missing_numbers
from bench.environment import metadata
from bench.isolation import CaseOutcome, Worker, failure, signals_blocked

Case = Mapping[str, Any]
Measure = Callable[[Case], dict[str, Any]]


def _in_process(measure: Measure, case: Case) -> CaseOutcome:
    try:
        return CaseOutcome("ok", measure(case))
    except Exception as err:  # every failure becomes a row; the sweep goes on
        status, message = failure(err)
        return CaseOutcome(status, message=message)


def outcome_row(case: Case, outcome: CaseOutcome, device: torch.device,
                numbers: Sequence[str] = ()) -> dict[str, Any]:
    """The CSV row for one case: configuration, measured columns (if ok), status, message and metadata (the
    metadata columns the case or the measurement does not set itself). An ``ok`` row without one of its
    ``numbers`` is an ``error`` row (the module docstring)."""
    measured = dict(outcome.result or {})
    status = measured.pop("status", outcome.status)
    message = measured.pop("message", outcome.message)
    row = {**case, **measured, "status": status, "message": message}
    if status == "ok" and (wrong := missing_numbers(row, numbers)):
        them = "it" if len(wrong) == 1 else "them"
        row["status"] = "error"
        row["message"] = f"{', '.join(wrong)}: an ok row must carry {them}" + (f" ({message})" if message else "")
    return {**row, **{k: v for k, v in metadata(device).items() if k not in row}}


# How a row was measured, which is not part of its configuration: a kept row measured otherwise is reported.
SETTINGS = ("repeats", "warmup", "threads")


def kept_with_other_settings(cases: Sequence[Case], log: CsvLog, threads: int | None) -> dict[str, set[str]]:
    """Per setting (``SETTINGS``), the stored values that differ from what this sweep asks, over the rows it keeps.
    ``threads`` is what this process asks its worker for (None: not set here, so not compared)."""
    differ: dict[str, set[str]] = {}
    for case in cases:
        row = log.stored(case)
        asked = {**{k: case[k] for k in SETTINGS if k in case}, **({"threads": threads} if threads else {})}
        for setting, value in asked.items():
            if setting in row and as_key(row[setting]) != as_key(value):
                differ.setdefault(setting, set()).add(f"{as_key(row[setting])} (asked: {value})")
    return differ


def exit_status(rows: pd.DataFrame, desc: str) -> int:
    """A command's exit status after its sweep, with a line saying why when it is 1: 1 if any row is an ``error``
    (a case that raised, or a wrong answer), or if no row ran ``ok`` although some could have (not every row is
    ``unsupported`` on this machine); else 0. ``timeout`` and ``oom`` rows are budgets the sweep was given, recorded
    as outcomes. So a stage of ``all`` or a CI step whose cases failed is not reported as a success."""
    status = rows["status"]
    errors = int((status == "error").sum())
    if errors:
        print(f"{desc}: {errors} of {len(rows)} rows are errors; their message column says why")
        return 1
    if not (status == "ok").any() and not (status == "unsupported").all():
        print(f"{desc}: no row ran ok ({len(rows)} rows); the status and message columns say why")
        return 1
    return 0


class SweepInterrupted(BaseException):
    """SIGTERM arrived during ``run_sweep`` (a BaseException, like the KeyboardInterrupt of SIGINT, so that no
    ``except Exception`` of a measurement swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise SweepInterrupted(signum)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``SweepInterrupted`` while the block runs; the old handler is back after (main thread only,
    where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM are ignored while the block runs (main thread only); the old handlers are back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def _stop(err: BaseException, cases: Sequence[Case], measured: int, log: CsvLog, desc: str) -> SystemExit:
    """The one line of an interrupted sweep, and the exit it ends with: 128 + the signal's number."""
    signum = err.signum if isinstance(err, SweepInterrupted) else signal.SIGINT
    kept = len(log.rows_for(cases))
    print(f"{desc}: stopped by {signal.Signals(signum).name}; {kept} of {len(cases)} rows are kept in {log.path} "
          f"({measured} measured by this run); run the same command again to resume", file=sys.stderr, flush=True)
    return SystemExit(128 + signum)


def run_sweep(cases: Sequence[Case], measure: Measure, log: CsvLog, *, device: torch.device, timeout_s: float,
              isolate: bool = True, threads: int | None = None, desc: str = "sweep",
              numbers: Sequence[str] = ()) -> pd.DataFrame:
    """Measure every case not yet in ``log`` (see the module docstring); returns the rows of ``cases``. Ctrl-C or
    SIGTERM ends it with ``SystemExit(130)`` or ``SystemExit(143)`` once the worker is killed."""
    todo = [case for case in cases if not log.done(case)]
    if retried := log.retried(cases):
        tqdm.write(f"{desc}: {len(retried)} rows kept in {log.path} are measured again: "
                   f"{'; '.join(sorted(set(retried)))} (--retry {','.join(sorted(log.retry))}: a status to retry; "
                   "else what the row lacks)")
    if len(todo) < len(cases):
        tqdm.write(f"{desc}: {len(cases) - len(todo)} of {len(cases)} rows already in {log.path}, skipped")
        differ = kept_with_other_settings([c for c in cases if log.done(c)], log, threads)
        if differ:
            what = "; ".join(f"{k} {', '.join(sorted(v))}" for k, v in differ.items())
            tqdm.write(f"{desc}: some rows kept were measured with other settings ({what}); to measure them "
                       f"again with this run's, move {log.path} away or use another --out")
    worker = Worker(threads=threads) if isolate and todo else None
    measured = 0
    try:
        with _sigterm_raises(), tqdm(todo, desc=desc, unit="case", dynamic_ncols=True) as bar:
            for case in bar:
                bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in case.items() if k in ("method", "order",
                                                                                            "eps", "dtype")))
                outcome = (worker.run(measure, case, timeout_s=timeout_s) if worker is not None
                           else _in_process(measure, case))
                row = outcome_row(case, outcome, device, numbers)
                if row["status"] != "ok":
                    tqdm.write(f"{desc}: {dict(case)} -> {row['status']}: {row['message']}")
                with signals_blocked(signal.SIGINT, signal.SIGTERM):  # a row is written whole, and counted
                    log.append(row)
                    measured += 1
    except (KeyboardInterrupt, SweepInterrupted) as err:
        with _signals_ignored():  # a second Ctrl-C does not cut the clean-up short
            if worker is not None:
                worker.close()  # a case in flight: killed at once
            stop = _stop(err, cases, measured, log, desc)
        raise stop from None
    finally:
        if worker is not None:
            worker.close()
    return log.rows_for(cases)
