"""Faults in a sweep's worker, injected for real: out of memory, a signal that kills the worker, Ctrl-C and SIGTERM.

Each fault happens as it would in a run: the memory is exhausted under an address-space cap (the test-only
``FDSM_WORKER_RLIMIT_AS_MB`` of ``bench.isolation``), a worker kills itself with SIGKILL or a segfault, and the
interrupts go to a ``python -m bench derivatives --quick`` subprocess. Then the next case must be honest: ``ok`` in
a fresh worker, or a resumed sweep that ends with every row. Sizes are ``--quick``'s (a 2-channel deep EBM); the
whole file takes about half a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.config import Shared
from bench.csvlog import CsvLog
from bench.derivative_case import measure_derivative
from bench.experiments import derivatives
from bench.isolation import RLIMIT_ENV, CaseOutcome, Worker, is_spent, run_case
from bench.sweep import outcome_row, run_sweep
from fdsm import NotSupported

ROOT = Path(__file__).parents[1]
CPU = torch.device("cpu")
CASE_TIMEOUT_S = 120  # generous: a loaded 2-core machine


def _quick_case(method: str, order: int, batch: int) -> dict:
    """One case of ``derivatives --quick`` (the 2-channel deep EBM), with another method, order and batch."""
    config = dataclasses.replace(derivatives.QUICK, methods=(method,), orders=(order,), batch=batch)
    return derivatives.cases(config, Shared(device="cpu", quick=True))[0]


# Case functions run in a spawned worker, so they live at module level.
def _pid(_: object = None) -> int:
    return os.getpid()


def _measured_in_worker(case: dict) -> dict:
    """``measure_derivative``'s row, with the worker's pid and its peak address space (VmPeak) in MiB after it."""
    row = measure_derivative(case)
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmPeak:"))
    return {**row, "pid": os.getpid(), "vm_peak_mb": peak_kb // 1024}


def _kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _segfault(_: object = None) -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _unpicklable(_: object = None):
    return lambda: None


def _not_supported(_: object = None) -> None:
    raise NotSupported("exact-taylor: no Taylor rule for the aten op aten.atan.default")


def _caught_oom(_: object = None) -> dict:
    return {"time_ms": 1.0, "message": "no rel_error: the float64 reference failed (RuntimeError: "
            "DefaultCPUAllocator: can't allocate memory)"}


# --- a worker that ran out of memory, or died, is replaced --------------------------------------------------------

@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmPeak from Linux /proc/self/status")
def test_a_case_after_an_out_of_memory_case_runs_ok_in_a_fresh_worker(monkeypatch):
    # The finding: under an address-space cap, exact-reverse at high T is an oom row, and the next fd-batched case
    # in the same worker failed, though alone under the same cap it runs ok. The cap: what fd-batched needs alone
    # (VmPeak of a fresh uncapped worker) plus 150 MiB, which exact-reverse at T = 6 on 8 points overruns; in the
    # old, reused worker the fd-batched case after it then failed with oom on this machine.
    fd, exact = _quick_case("fd-batched", order=5, batch=4), _quick_case("exact-reverse", order=6, batch=8)
    alone = run_case(_measured_in_worker, fd, timeout_s=CASE_TIMEOUT_S, threads=1)
    assert alone.status == "ok", alone.message
    monkeypatch.setenv(RLIMIT_ENV, str(alone.result["vm_peak_mb"] + 150))  # workers inherit the environment
    with Worker(threads=1) as worker:
        before = worker.run(_measured_in_worker, fd, timeout_s=CASE_TIMEOUT_S)
        oom = worker.run(measure_derivative, exact, timeout_s=CASE_TIMEOUT_S)
        after = worker.run(_measured_in_worker, fd, timeout_s=CASE_TIMEOUT_S)
    assert before.status == "ok", before.message  # alone under the cap, it fits
    assert oom.status == "oom", (oom.status, oom.message)
    assert "can't allocate memory" in oom.message
    assert after.status == "ok", after.message
    assert after.result["pid"] != before.result["pid"]  # the worker that ran out of memory was replaced
    assert math.isfinite(after.result["time_ms"]) and after.result["rel_error"] == before.result["rel_error"]


def test_a_worker_killed_by_a_signal_is_an_error_row_that_names_it_and_the_next_case_gets_a_fresh_worker():
    with Worker(threads=1) as worker:
        first, same = worker.run(_pid, timeout_s=CASE_TIMEOUT_S), worker.run(_pid, timeout_s=CASE_TIMEOUT_S)
        killed = worker.run(_kill_self, signal.SIGKILL, timeout_s=CASE_TIMEOUT_S)
        second = worker.run(_pid, timeout_s=CASE_TIMEOUT_S)
        segfault = worker.run(_segfault, timeout_s=CASE_TIMEOUT_S)
        third = worker.run(_pid, timeout_s=CASE_TIMEOUT_S)
        unpicklable = worker.run(_unpicklable, timeout_s=CASE_TIMEOUT_S)
        fourth = worker.run(_pid, timeout_s=CASE_TIMEOUT_S)
        unsupported = worker.run(_not_supported, timeout_s=CASE_TIMEOUT_S)  # a method that does not apply to f
        same_again = worker.run(_pid, timeout_s=CASE_TIMEOUT_S)  # leaves the worker as it was: it is reused
    assert killed == CaseOutcome("error", message="worker killed by SIGKILL while running _kill_self; the kernel's "
                                 "OOM killer sends SIGKILL, so it may have run out of memory")
    assert segfault == CaseOutcome("error", message="worker killed by SIGSEGV while running _segfault")
    assert unpicklable.status == "error" and unpicklable.message.startswith(
        "the result of _unpicklable could not be sent back (AttributeError: Can't pickle local object")
    assert (unsupported.status, unsupported.message) == (  # the message as raised: it says why
        "unsupported", "exact-taylor: no Taylor rule for the aten op aten.atan.default")
    assert first.status == same.status == second.status == third.status == fourth.status == "ok"
    assert first.result == same.result and len({first.result, second.result, third.result, fourth.result}) == 4
    assert same_again.result == fourth.result


@pytest.mark.parametrize(("status", "result", "spent"), [
    ("ok", {"time_ms": 1.0}, False),
    ("ok", 120, False),
    ("ok", {"status": "unsupported", "message": "needs CUDA"}, False),
    ("ok", _caught_oom(), True),  # an honest row, from a worker that ran out of memory
    ("unsupported", None, False),  # fdsm.NotSupported: the method does not apply; nothing went wrong
    ("oom", None, True),
    ("error", None, True),  # "could not create a primitive" is an error row of a spent worker
    ("timeout", None, True),
])
def test_a_worker_is_reused_only_after_a_clean_case(status, result, spent):
    assert is_spent(status, result) is spent


# --- no ok row without its numbers --------------------------------------------------------------------------------

NUMBERS = ("time_ms", "peak_mem_mb", "rel_error")


def _row(numbers: tuple[str, ...] = NUMBERS, **measured) -> dict:
    return outcome_row({"method": "m", "order": 1}, CaseOutcome("ok", measured), CPU, numbers)


@pytest.mark.parametrize(("measured", "status", "message"), [
    ({"time_ms": 1.0, "peak_mem_mb": 2.0, "rel_error": 1e-3}, "ok", ""),
    ({"time_ms": math.nan, "peak_mem_mb": 2.0, "rel_error": 1e-3}, "error", "time_ms is nan: an ok row must carry it"),
    ({"time_ms": 1.0, "rel_error": math.inf}, "error", "peak_mem_mb is missing, rel_error is inf: an ok row must "
                                                       "carry them"),
    ({"time_ms": "fast", "peak_mem_mb": None, "rel_error": 0.0}, "error", "time_ms is 'fast', not a number, "
                                                                         "peak_mem_mb is missing: an ok row must "
                                                                         "carry them"),
    # the one allowed gap: a NaN rel_error whose message says why
    ({"time_ms": 1.0, "peak_mem_mb": 2.0, "rel_error": math.nan, "message": "no rel_error: the float64 reference "
      "failed (RuntimeError: out of memory)"}, "ok", "no rel_error: the float64 reference failed (RuntimeError: out "
     "of memory)"),
    ({"time_ms": 1.0, "peak_mem_mb": 2.0, "rel_error": math.nan}, "error", "rel_error is nan: an ok row must carry "
                                                                         "it"),
    ({"time_ms": math.nan, "peak_mem_mb": 2.0, "rel_error": 0.0, "message": "warm-up only"}, "error",
     "time_ms is nan: an ok row must carry it (warm-up only)"),
])
def test_an_ok_row_without_its_numbers_is_an_error_row(measured, status, message):
    row = _row(**measured)
    assert (row["status"], row["message"]) == (status, message)
    assert row.get("time_ms", "absent") is measured.get("time_ms", "absent")  # the values are kept, for the record


def test_only_ok_rows_and_only_the_declared_numbers_are_checked():
    assert _row((), time_ms=math.nan)["status"] == "ok"  # an experiment that declares none
    assert _row(("time_ms",), time_ms=1.0, rel_error=math.nan)["status"] == "ok"
    unsupported = outcome_row({"method": "m"}, CaseOutcome("ok", {"status": "unsupported", "message": "no GPU"}),
                              CPU, NUMBERS)
    timeout = outcome_row({"method": "m"}, CaseOutcome("timeout", message="exceeded"), CPU, NUMBERS)
    assert (unsupported["status"], timeout["status"]) == ("unsupported", "timeout")


# --- Ctrl-C and SIGTERM -------------------------------------------------------------------------------------------

def _interrupt_on_second_case(case: dict) -> dict:
    if case["order"] == 2:
        raise KeyboardInterrupt
    return {"time_ms": 1.0}


def test_an_interrupted_sweep_keeps_its_rows_says_so_in_one_line_and_exits_130(tmp_path, capsys):
    log = CsvLog(tmp_path / "s.csv", key_columns=("method", "order"))
    cases = [{"method": "m", "order": order} for order in (1, 2, 3)]
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        run_sweep(cases, _interrupt_on_second_case, log, device=CPU, timeout_s=30, isolate=False, desc="s")
    assert stop.value.code == 130 and stop.value.__suppress_context__  # no traceback of the interrupt
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"s: stopped by SIGINT; 1 of 3 rows are kept in {log.path} (1 measured by this run); run the same command "
        "again to resume")
    assert pd.read_csv(log.path)["order"].tolist() == [1]


COMMAND = [sys.executable, "-m", "bench", "derivatives", "--quick", "--device", "cpu", "--threads", "1",
           "--methods", "fd-batched", "--orders", "1,2,3,4"]


def _rows(csv: Path) -> int:
    return len(pd.read_csv(csv)) if csv.exists() and csv.stat().st_size else 0


def _workers_of(pid: int) -> list[int]:
    """The spawned workers (``multiprocessing.spawn``'s children, not its resource tracker) of process ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # not a process, or it ended meanwhile
    return found


def _as_in_a_terminal() -> None:
    """In the child before exec: SIGINT and SIGTERM at their defaults and unblocked, as for a terminal's foreground
    job. A runner started in the background by a non-interactive shell (``pytest ... &``) has SIGINT ignored, and
    its children inherit that: the sweep would never see the Ctrl-C."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _interrupt(out: Path, signum: int, *, group: bool) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Run the sweep, send ``signum`` once it has written one more row (to its process group, as a terminal's
    Ctrl-C does, or to the process, as ``kill`` does); the finished process and the workers it had then."""
    csv = out / "derivatives.csv"
    start = _rows(csv)
    process = subprocess.Popen([*COMMAND, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_in_a_terminal)
    deadline = time.monotonic() + 300
    while _rows(csv) <= start and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the sweep ended before it could be interrupted"
    workers = _workers_of(process.pid)
    (os.killpg if group else os.kill)(process.pid, signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), workers


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker in /proc")
def test_ctrl_c_and_sigterm_stop_a_sweep_cleanly_and_the_same_command_resumes(tmp_path):
    csv = tmp_path / "derivatives.csv"
    for signum, group, code in ((signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)):
        kept_before = _rows(csv)
        done, workers = _interrupt(tmp_path, signum, group=group)
        output = done.stdout + done.stderr
        assert done.returncode == code, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        lines = [line for line in output.splitlines() if "stopped by" in line]
        kept = _rows(csv)
        assert lines == [f"derivatives: stopped by {signal.Signals(signum).name}; {kept} of 4 rows are kept in "
                         f"{csv} ({kept - kept_before} measured by this run); run the same command again to resume"]
        assert kept > kept_before and (pd.read_csv(csv)["status"] == "ok").all()
        assert len(workers) == 1 and _gone(workers[0]), workers  # killed, not orphaned
    done = subprocess.run([*COMMAND, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"{kept} of 4 rows already in {csv}, skipped" in done.stdout
    rows = pd.read_csv(csv)
    assert sorted(rows["order"]) == [1, 2, 3, 4] and (rows["status"] == "ok").all()
