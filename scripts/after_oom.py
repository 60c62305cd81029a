"""Does a case right after an out-of-memory case measure the same as alone? The same derivative case timed in a
worker right after a forced OOM in it and in a fresh worker, alternately, under the same address-space cap.

    PYTHONPATH=. python scripts/after_oom.py --out results/cpu/faults

The case is ``derivatives``' at size ``cpu``: deep EBM, fd-batched, T = 2, batch 2, float32, its default step, 1
warm-up and 7 timed calls. The OOM is a real case: exact-reverse at T = 6 on 8 points. The cap
(``FDSM_WORKER_RLIMIT_AS_MB``, test-only, ``bench.isolation``) is the case's own peak address space, measured
alone in an uncapped worker, plus ``--margin-mb``. Before the fix (NOTE [a worker that ran out of memory is
replaced] in ``bench.isolation``) the case after the OOM ran in the spent worker and failed ("could not create a
primitive", checked with the ``Worker`` of commit 5d00b98 given the same cap); now that worker is replaced, and
this measures that the case after it times as it does alone. The rounds alternate the order (after-OOM first in
even rounds, fresh first in odd ones), so that drift of the machine cancels.

Writes ``after_oom.csv`` (one row per round and condition), ``after_oom.log`` (what it printed) and
``README.md`` (the command, what it shows, the numbers and the machine) in ``--out``. Target: the same status in
every row, and median times within 25 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

from bench.config import Shared
from bench.csvlog import write_atomic
from bench.derivative_case import measure_derivative
from bench.environment import metadata, prepare_process
from bench.experiments import derivatives
from bench.isolation import RLIMIT_ENV, Worker, run_case

CASE_TIMEOUT_S = 300.0
COLUMNS = ("time_ms", "time_ms_iqr", "peak_mem_mb", "rel_error", "message")


def _case(method: str, order: int, batch: int) -> dict:
    """One case of ``derivatives`` at size ``cpu`` on the CPU (its default model, step, warm-up and repeats)."""
    config = dataclasses.replace(derivatives.DEFAULT, methods=(method,), orders=(order,), batch=batch, size="cpu")
    return derivatives.cases(config, Shared(device="cpu"))[0]


def measured_in_worker(case: dict) -> dict:
    """``measure_derivative``'s row, with the worker's pid and its peak address space (VmPeak, MiB) after it."""
    row = measure_derivative(case)
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmPeak:"))
    return {**row, "pid": os.getpid(), "vm_peak_mb": peak_kb // 1024}


def worker_pid(_: object = None) -> int:
    return os.getpid()


def after_oom(case: dict, oom_case: dict, threads: int) -> dict:
    """The case in a worker right after ``oom_case`` ran out of memory in it."""
    with Worker(threads=threads) as worker:
        pid = worker.run(worker_pid, timeout_s=CASE_TIMEOUT_S).result
        oom = worker.run(measure_derivative, oom_case, timeout_s=CASE_TIMEOUT_S)
        outcome = worker.run(measured_in_worker, case, timeout_s=CASE_TIMEOUT_S)
    return {"condition": "after-oom", "oom_status": oom.status, "oom_message": oom.message[:200], "oom_pid": pid,
            **_columns(outcome)}


def fresh(case: dict, threads: int) -> dict:
    """The case alone, in a fresh worker."""
    return {"condition": "fresh", "oom_status": "", "oom_message": "", "oom_pid": None,
            **_columns(run_case(measured_in_worker, case, timeout_s=CASE_TIMEOUT_S, threads=threads))}


def _columns(outcome) -> dict:
    result = outcome.result or {}
    return {"status": result.get("status", outcome.status), "pid": result.get("pid"),
            **{k: result.get(k, outcome.message if k == "message" else None) for k in COLUMNS}}


def summarize(rows: pd.DataFrame) -> tuple[list[str], bool]:
    """Lines of the summary, and whether the target holds (same status everywhere, medians within 25 %)."""
    medians = {c: statistics.median(g["time_ms"]) for c, g in rows.groupby("condition")}
    memory = {c: statistics.median(g["peak_mem_mb"]) for c, g in rows.groupby("condition")}
    ratio = medians["after-oom"] / medians["fresh"]
    statuses = {c: ", ".join(f"{s} x{n}" for s, n in g["status"].value_counts().items())
                for c, g in rows.groupby("condition")}
    oom = ", ".join(f"{s} x{n}" for s, n in rows[rows.condition == "after-oom"]["oom_status"].value_counts().items())
    replaced = (rows[rows.condition == "after-oom"]["pid"] != rows[rows.condition == "after-oom"]["oom_pid"]).all()
    held = rows["status"].nunique() == 1 and 0.8 <= ratio <= 1.25
    return [f"forced OOM case: {oom}; the case after it ran in another worker every round: {replaced}",
            f"status: after-oom {statuses['after-oom']}; fresh {statuses['fresh']}",
            f"median time_ms over the rounds: after-oom {medians['after-oom']:.2f}, fresh {medians['fresh']:.2f}; "
            f"ratio after-oom / fresh {ratio:.3f}",
            f"median peak_mem_mb: after-oom {memory['after-oom']:.2f}, fresh {memory['fresh']:.2f}; rel_error the "
            f"same in every row: {rows['rel_error'].nunique() == 1} ({rows['rel_error'].iloc[0]:.3e})",
            f"target (same status, within 25 %): {'met' if held else 'NOT met'}"], held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each worker")
    parser.add_argument("--margin-mb", type=int, default=150, help="the cap above the case's own peak (MiB)")
    parser.add_argument("--out", type=Path, default=Path("results/local/faults"))
    args = parser.parse_args()
    prepare_process()  # as every fdsm-bench process and its workers (bench.environment): the rows' metadata says so
    case, oom_case = _case("fd-batched", order=2, batch=2), _case("exact-reverse", order=6, batch=8)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    os.environ.pop(RLIMIT_ENV, None)
    alone = run_case(measured_in_worker, case, timeout_s=CASE_TIMEOUT_S, threads=args.threads)
    if alone.status != "ok":
        print(f"after_oom: the case failed alone, uncapped ({alone.status}: {alone.message})", file=sys.stderr)
        return 1
    cap_mb = alone.result["vm_peak_mb"] + args.margin_mb
    os.environ[RLIMIT_ENV] = str(cap_mb)  # the workers inherit it; this process is not capped
    say(f"case: {case['model']} size {case['size']}, {case['method']}, T = {case['order']}, batch {case['batch']}, "
        f"{case['repeats']} timed calls; forced OOM: {oom_case['method']}, T = {oom_case['order']}, batch "
        f"{oom_case['batch']}; cap {cap_mb} MiB ({alone.result['vm_peak_mb']} MiB alone + {args.margin_mb}); "
        f"{args.threads} torch thread(s) per worker")
    rows = []
    for round_ in range(args.rounds):
        runs = (lambda: after_oom(case, oom_case, args.threads), lambda: fresh(case, args.threads))
        for run in runs if round_ % 2 == 0 else runs[::-1]:
            row = {"round": round_, **run()}
            rows.append(row)
            say(f"round {round_} {row['condition']:9s} {row['status']:6s} time_ms {row['time_ms'] or float('nan'):8.2f}"
                f" (IQR {row['time_ms_iqr'] or float('nan'):.2f})  pid {row['pid']}"
                + (f"  after {row['oom_status']} in pid {row['oom_pid']}" if row["oom_pid"] else ""))
    device = torch.device("cpu")
    frame = pd.DataFrame([{**row, "cap_mb": cap_mb, **metadata(device), "threads": args.threads} for row in rows])
    frame["oom_pid"] = frame["oom_pid"].astype("Int64")  # empty for the fresh rows
    summary, held = summarize(frame)
    for line in summary:
        say(line)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(frame, args.out / "after_oom.csv")
    (args.out / "after_oom.log").write_text("\n".join(lines) + "\n")
    machine = metadata(device)
    (args.out / "README.md").write_text(readme(summary, machine, args))
    print(f"wrote {args.out / 'after_oom.csv'}, {args.out / 'after_oom.log'} and {args.out / 'README.md'}")
    return 0 if held else 1


def readme(summary: list[str], machine: dict, args: argparse.Namespace) -> str:
    command = "PYTHONPATH=. python scripts/after_oom.py --out results/cpu/faults"
    if (args.rounds, args.threads, args.margin_mb) != (5, 1, 150):
        command += f" --rounds {args.rounds} --threads {args.threads} --margin-mb {args.margin_mb}"
    body = "\n".join(f"  {line}" for line in summary)
    return f"""# results/cpu/faults: a case after an out-of-memory case measures as it does alone

```
{command}
```

(`scripts/after_oom.py`; it wrote `after_oom.csv`, one row per round and condition, and `after_oom.log`.)

What it shows: a sweep's worker that ran out of memory is replaced before the next case (NOTE [a worker that ran
out of memory is replaced] in `bench/isolation.py`), so that case is measured as if it ran alone.

The same derivative case (deep EBM at size `cpu`, fd-batched, T = 2, batch 2, 7 timed calls) is timed in
{args.rounds} rounds, each in two conditions, alternately: right after a real out-of-memory case (exact-reverse,
T = 6, on 8 points) in the same worker, and in a fresh worker. Both run under the same address-space cap
(`FDSM_WORKER_RLIMIT_AS_MB`: the case's own peak plus {args.margin_mb} MiB). Before the fix the case after the OOM
ran in the spent worker and was an `error` row, "RuntimeError: could not create a primitive" (checked with the
`Worker` of commit 5d00b98, given the same cap, at margins of 100, 150 and 200 MiB; `tests/test_faults_workers.py`
reproduces such a failure with the `--quick` model). The target now: the same status in every row, and median
times within 25 %.

```
{body}
```

The times are of one process at a time on a shared machine: the rounds alternate the order so that its drift
cancels, and the comparison is of the medians over the rounds, not of single rounds.

Machine: {machine['device_name']}, {args.threads} torch thread(s) per worker, torch {machine['torch']},
Python {machine['python']}, commit {machine['git_commit']}, measured {machine['timestamp']}.
"""


if __name__ == "__main__":
    raise SystemExit(main())
