r"""A benchmark is a declaration, the runner is generic: ``Command`` for every subcommand, ``Experiment`` for sweeps.

An ``Experiment`` (anchors: Triton's ``perf_report`` / ``Benchmark``, asv) is one frozen object that says
everything about a sweep:

- ``stem``: the CSV and PNG name (``eps_sweep`` -> ``eps_sweep.csv``, ``eps_sweep.png``), ``keys`` (the
  configuration columns: a row is measured once per key) and ``columns`` (the required columns, always present);
- ``default`` and ``quick``: its config dataclass (``bench.config.option`` fields: the CLI options are generated
  from them) and the ``--quick`` preset;
- ``cases(config, shared)``: the list of cases, checked before any runs (a bad value is a ``UsageError``);
- ``measure(case)``: one case's measured columns; module-level, since it runs in the isolated worker
  (``bench.isolation``);
- ``plot(rows, path)``, ``summary(rows)`` (printed), ``report(rows, folder)`` (its section of ``report.md``),
  ``axes`` (the key columns that vary within one run) and ``compare_keys`` (what ``compare`` joins on);
- ``benchmark(case)``: optional, the pytest-benchmark view of one case (``Bench``), which
  ``bench/test_experiments.py`` generates a suite from;
- ``isolate`` (each case in a worker process, the default), ``aliases`` (old column names of older CSVs),
  ``png`` (another figure name), ``in_main_job`` (``fdsm-bench all`` runs it), ``numbers`` (the measured
  columns without which an ``ok`` row would be dishonest: ``run_sweep`` makes such a row an ``error``) and
  ``ignores`` (the shared options it has no use for: its parser refuses them).

``Experiment.run(config, shared)`` is the one runner: cases, the resumable ``CsvLog``, ``run_sweep`` (a progress
bar, one row per case, failures as rows), the figure, the summary and the exit status. ``bench.experiments`` holds
the registry; ``cli``, ``all``, ``report``, ``compare`` and the pytest-benchmark suite loop over it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from bench.config import Shared
from bench.csvlog import CsvLog, check_writable
from bench.sweep import exit_status, run_sweep
from bench.timing import fix_cpu_threads

# Columns of a case that say what it measured without being keys (``CsvLog``'s ``identity``): a user's model's
# source digest (``bench.user_model.model_source``), so that the rows of a model edited since are measured again.
IDENTITY = ("model_source",)

Case = Mapping[str, Any]


@dataclass(frozen=True)
class Command:
    """A subcommand: its name and help, its config (``default``, ``quick``), ``run(config, shared) -> int`` and
    ``plan(config, shared) -> str``, what ``--dry-run`` prints instead of running (after every check), and
    ``ignores``: the shared options it has no use for, which its parser then refuses (``--dtype`` where the
    command takes ``--dtypes``, ``--repeats`` where nothing is timed)."""

    name: str
    help: str
    default: Any
    run: Callable[[Any, Shared], int]
    plan: Callable[[Any, Shared], str]
    quick: Any = None
    ignores: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bench:
    """One case as a pytest-benchmark target: ``call()`` is what is timed, ``finish(result)`` the row's other
    columns (memory, error, loss) with its ``status`` ("ok", or "error" and a ``message`` for a wrong answer)."""

    call: Callable[[], Any]
    finish: Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Experiment:
    """A sweep, declared (see the module docstring)."""

    name: str
    help: str
    stem: str
    keys: tuple[str, ...]
    columns: tuple[str, ...]
    default: Any
    quick: Any
    cases: Callable[[Any, Shared], list[dict[str, Any]]]
    measure: Callable[[Case], dict[str, Any]]
    plot: Callable[[pd.DataFrame, Path], Any] | None = None
    summary: Callable[[pd.DataFrame], str] | None = None
    report: Callable[[pd.DataFrame, Path], str] | None = None
    axes: tuple[str, ...] = ()
    compare_keys: tuple[str, ...] | None = None  # None: ``keys``
    isolate: bool = True  # each case in a worker process under the config's ``timeout_s``; False: in this one
    benchmark: Callable[[Case], Bench] | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)  # old column name -> current, for older CSVs
    png: str | None = None  # the figure's file name; None: ``<stem>.png``
    in_main_job: bool = True  # ``fdsm-bench all`` runs it, in the registry's order
    numbers: tuple[str, ...] = ()  # the measured columns an ``ok`` row must carry, finite (else it is an error row)
    ignores: tuple[str, ...] = ()  # shared options the sweep has no use for (``Command.ignores``)

    @property
    def csv(self) -> str:
        return f"{self.stem}.csv"

    @property
    def figure(self) -> str:
        return self.png or f"{self.stem}.png"

    def log(self, folder: Path, retry: tuple[str, ...] = ()) -> CsvLog:
        return CsvLog(folder / self.csv, key_columns=self.keys, columns=self.columns, aliases=self.aliases,
                      retry=retry, numbers=self.numbers, identity=IDENTITY)

    def command(self) -> Command:
        return Command(self.name, self.help, self.default, self.run, self.plan, self.quick, self.ignores)

    def plan(self, config: Any, shared: Shared) -> str:
        """What ``run`` would measure: the cases (every check done, the CSV read), and which are already there."""
        todo = self.cases(config, shared)
        check_writable(shared.out, make=False)  # as run does, without making the folder
        log = self.log(shared.out, shared.retry)
        new = [case for case in todo if not log.done(case)]
        retried = log.retried(todo)
        again = (f" ({len(retried)} of them again: {'; '.join(sorted(set(retried)))}; --retry {','.join(shared.retry)})"
                 if retried else "")
        lines = [f"{self.name}: {len(todo)} cases, {len(todo) - len(new)} already in {log.path}, {len(new)} to run"
                 f"{again}"]
        if new:
            frame = pd.DataFrame(new)
            varying = [k for k in self.keys if k in frame and frame[k].astype(str).nunique() > 1]
            lines.append(frame[varying or list(frame)[:4]].to_string(index=False, max_rows=40))
        return "\n".join(lines)

    def run(self, config: Any, shared: Shared) -> int:
        """Measure every case not yet in the folder's CSV, then plot and summarize the run's rows."""
        threads = fix_cpu_threads(getattr(config, "threads", None))
        todo = self.cases(config, shared)
        check_writable(shared.out)  # after the options' checks, before any case
        log = self.log(shared.out, shared.retry)
        timeout_s = getattr(config, "timeout_s", math.inf) if self.isolate else math.inf
        rows = run_sweep(todo, self.measure, log, device=shared.device, timeout_s=timeout_s, isolate=self.isolate,
                         threads=threads, desc=self.name, numbers=self.numbers)
        written = [str(log.path)]
        if self.plot is not None and len(rows):
            self.plot(rows, shared.out / self.figure)
            written.append(str(shared.out / self.figure))
        if self.summary is not None and len(rows):
            tqdm.write(self.summary(rows))
        tqdm.write(f"wrote {' and '.join(written)} ({len(rows)} rows)")
        return exit_status(rows, self.name)
