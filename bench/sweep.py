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
a case that times out, runs out of memory or raises gets a ``timeout``, ``oom`` or ``error`` row with the message,
and the sweep goes on. ``isolate=False`` runs in this process (no time budget; errors still become rows), for
sweeps that measure no memory.

``measure`` must be a module-level function (the worker is spawned and imports it by name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.csvlog import CsvLog, as_key
from bench.environment import metadata
from bench.isolation import CaseOutcome, Worker, is_out_of_memory

Case = Mapping[str, Any]
Measure = Callable[[Case], dict[str, Any]]


def _in_process(measure: Measure, case: Case) -> CaseOutcome:
    try:
        return CaseOutcome("ok", measure(case))
    except Exception as err:  # every failure becomes a row; the sweep goes on
        return CaseOutcome("oom" if is_out_of_memory(err) else "error", message=f"{type(err).__name__}: {err}")


def outcome_row(case: Case, outcome: CaseOutcome, device: torch.device) -> dict[str, Any]:
    """The CSV row for one case: configuration, measured columns (if ok), status, message and metadata (the
    metadata columns the case or the measurement does not set itself)."""
    measured = dict(outcome.result or {})
    status = measured.pop("status", outcome.status)
    message = measured.pop("message", outcome.message)
    row = {**case, **measured, "status": status, "message": message}
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


def run_sweep(cases: Sequence[Case], measure: Measure, log: CsvLog, *, device: torch.device, timeout_s: float,
              isolate: bool = True, threads: int | None = None, desc: str = "sweep") -> pd.DataFrame:
    """Measure every case not yet in ``log`` (see the module docstring); returns the rows of ``cases``."""
    todo = [case for case in cases if not log.done(case)]
    if len(todo) < len(cases):
        tqdm.write(f"{desc}: {len(cases) - len(todo)} of {len(cases)} rows already in {log.path}, skipped")
        differ = kept_with_other_settings([c for c in cases if log.done(c)], log, threads)
        if differ:
            what = "; ".join(f"{k} {', '.join(sorted(v))}" for k, v in differ.items())
            tqdm.write(f"{desc}: some rows kept were measured with other settings ({what}); to measure them "
                       f"again with this run's, move {log.path} away or use another --out")
    worker = Worker(threads=threads) if isolate and todo else None
    try:
        with tqdm(todo, desc=desc, unit="case", dynamic_ncols=True) as bar:
            for case in bar:
                bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in case.items() if k in ("method", "order",
                                                                                            "eps", "dtype")))
                outcome = (worker.run(measure, case, timeout_s=timeout_s) if worker is not None
                           else _in_process(measure, case))
                row = outcome_row(case, outcome, device)
                if row["status"] != "ok":
                    tqdm.write(f"{desc}: {dict(case)} -> {row['status']}: {row['message']}")
                log.append(row)
    finally:
        if worker is not None:
            worker.close()
    return log.rows_for(cases)
