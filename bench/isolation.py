"""Run one benchmark case at a time in a worker process, with a time budget, so that no case can crash a sweep.

A ``Worker`` is a spawned Python process that runs the cases it is sent, one after another. For each case the
outcome is one of the ``status`` values of DESIGN.md:

========= ==========================================================================================
ok        the case returned; ``result`` holds what it returned (a picklable row, usually a dict)
timeout   it ran past ``timeout_s``: the worker is killed, and the next case starts a fresh one
oom       it raised an out-of-memory error (CUDA or CPU allocator, ``MemoryError``), or the worker was
          killed by a signal while running it (the Linux OOM killer sends SIGKILL)
error     any other exception; ``message`` is ``"TypeName: text"``
========= ==========================================================================================

Why a process: a slow exact derivative at high order cannot be interrupted inside a torch op, but a process can be
killed; and the CPU peak-memory probe (``bench.memory``) reads the whole process's resident set, so nothing else
may run in that process. The worker starts with a fixed torch thread count.

The case function must be importable by name (a module-level function), since the worker is spawned:

>>> with Worker(threads=1) as worker:                                      # doctest: +SKIP
...     worker.run(math.factorial, 5, timeout_s=10)
CaseOutcome(status='ok', result=120, message='', wall_s=...)
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

STATUSES = ("ok", "oom", "timeout", "unsupported", "error")
STARTUP_TIMEOUT_S = 120.0  # spawning a worker imports torch; generous for a loaded 2-core machine


@dataclass(frozen=True)
class CaseOutcome:
    """What running one case gave: a status from ``STATUSES``, the case's return value if ok, and a message."""

    status: str
    result: Any = None
    message: str = ""
    wall_s: float = 0.0  # wall-clock seconds in the worker, start-up excluded


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocator failure (torch's CUDA/CPU out-of-memory errors or ``MemoryError``)."""
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _serve(conn: Connection, threads: int | None) -> None:
    """The worker's loop: receive ``(fn, args)``, send back ``(status, result, message, wall_s)``; None stops."""
    import torch

    from bench.environment import use_ieee_float32

    if threads is not None:
        torch.set_num_threads(threads)
    use_ieee_float32()
    conn.send("ready")
    while (job := conn.recv()) is not None:
        fn, args = job
        t0 = time.perf_counter()
        try:
            reply = ("ok", fn(*args), "")
        except Exception as err:  # every failure becomes a row; the sweep goes on
            reply = ("oom" if is_out_of_memory(err) else "error", None, f"{type(err).__name__}: {err}")
        conn.send((*reply, time.perf_counter() - t0))


class Worker:
    """A spawned process that runs one case at a time (see the module docstring). Use it as a context manager."""

    def __init__(self, *, threads: int | None = None):
        self.threads = threads
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        if self._process is None or not self._process.is_alive():
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            self._process = context.Process(target=_serve, args=(child, self.threads), daemon=True,
                                            name="fdsm-bench-worker")
            self._process.start()
            child.close()  # so that the parent sees EOF when the worker dies
            self._conn = parent
            if not parent.poll(STARTUP_TIMEOUT_S) or parent.recv() != "ready":
                self._kill()
                raise RuntimeError(f"Worker: the worker process did not start within {STARTUP_TIMEOUT_S} s")
        return self._conn

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process, self._conn = None, None

    def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> CaseOutcome:
        """Run ``fn(*args)`` in the worker and wait at most ``timeout_s`` seconds (start-up not included)."""
        conn = self._start()
        conn.send((fn, args))
        if not conn.poll(timeout_s):
            self._kill()
            return CaseOutcome("timeout", message=f"exceeded the time budget of {timeout_s:g} s", wall_s=timeout_s)
        try:
            status, result, message, wall_s = conn.recv()
        except EOFError:  # the worker died while running the case
            self._process.join()
            code = self._process.exitcode
            self._kill()
            killed = code is not None and code < 0
            status = "oom" if killed and -code == signal.SIGKILL else "error"
            name = signal.Signals(-code).name if killed else f"exit code {code}"
            return CaseOutcome(status, message=f"worker died ({name}) while running {getattr(fn, '__name__', fn)}")
        return CaseOutcome(status, result, message, wall_s)

    def close(self) -> None:
        """Stop the worker (politely if it is idle)."""
        if self._process is not None and self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(timeout=5)
        self._kill()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_case(fn: Callable[..., Any], *args: Any, timeout_s: float, threads: int | None = None) -> CaseOutcome:
    """Run one case in a fresh worker process (start-up costs about a second: reuse a ``Worker`` for sweeps)."""
    with Worker(threads=threads) as worker:
        return worker.run(fn, *args, timeout_s=timeout_s)
