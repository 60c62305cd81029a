"""Run one benchmark case at a time in a worker process, with a time budget, so that no case can crash a sweep.

A ``Worker`` is a spawned Python process that runs the cases it is sent, one after another. For each case the
outcome is one of the ``status`` values of DESIGN.md:

=========== ==========================================================================================
ok          the case returned; ``result`` holds what it returned (a picklable row, usually a dict)
timeout     it ran past ``timeout_s``: the worker is killed
oom         it raised an out-of-memory error (CUDA or CPU allocator, ``MemoryError``): the worker is killed
error       any other exception, ``message`` is ``"TypeName: text"``; or the worker died while running the
            case: the message names the signal that killed it (``"worker killed by SIGSEGV while running
            measure_derivative"``) or its exit code. For SIGKILL it adds that the kernel's OOM killer sends
            it, so the case *may* have run out of memory: that is no evidence that it did (a person or a
            supervisor sends SIGKILL too), so it is no ``oom`` row. The worker is killed after any error
unsupported it raised ``fdsm.NotSupported``: the method does not apply to this f (Taylor mode with no rule
            for one of its ops); ``message`` says why and what to do
=========== ==========================================================================================

After a ``timeout``, an ``oom``, an ``error`` or an ``ok`` whose row's ``message`` reports an allocator failure
that the case caught (``measure_derivative``'s float64 reference), the worker is gone and the next case starts a
fresh one: NOTE [a worker that ran out of memory is replaced]. So a worker is reused only after a clean case.

Why a process: a slow exact derivative at high order cannot be interrupted inside a torch op, but a process can be
killed; and the CPU peak-memory probe (``bench.memory``) reads the whole process's resident set, so nothing else
may run in that process. The worker starts with a fixed torch thread count. It ignores SIGINT, so that a Ctrl-C at
the terminal (which reaches the whole process group) is the parent's to handle: ``close()`` kills a worker that is
busy, wherever it is blocked, and on Linux a worker dies with its parent (``PR_SET_PDEATHSIG``).

The case function must be importable by name (a module-level function), since the worker is spawned:

>>> with Worker(threads=1) as worker:                                      # doctest: +SKIP
...     worker.run(math.factorial, 5, timeout_s=10)
CaseOutcome(status='ok', result=120, message='', wall_s=...)

Test-only: the environment variable ``FDSM_WORKER_RLIMIT_AS_MB`` (MiB) caps a worker's address space
(``RLIMIT_AS``, what ``ulimit -v`` sets) from its start, before it imports torch, so that a test can make a case
run out of memory for real. Workers inherit the environment; a benchmark run must not set it.

NOTE [a worker that ran out of memory is replaced]: under an address-space cap, an ``exact-reverse`` case at T = 5
raised out-of-memory, as it should, and the next case in the same worker (``fd-batched``, which runs ``ok`` alone
under the same cap) failed with oneDNN's "could not create a primitive". The failed case leaves its memory behind.
Measured here (exact-reverse, T = 6, batch 8, ``--quick`` model, under the cap): the C heap (``[heap]`` in
``/proc/self/smaps``) grew from 110 to 395 MiB with the autograd graph's small blocks and stayed so after the
exception, the resident set 290 MiB above its size before, the address space at the cap; ``gc.collect()`` freed
nothing; the next ``fd-batched`` case (T = 5, batch 4) then failed its allocations. That worker is spent. So
after an ``oom`` the worker is killed, like after a ``timeout``; after an ``error`` too (it can be the same state:
"could not create a primitive" is an error, not an oom), and after an ``ok`` row that reports an allocator failure
it caught. The next case pays a fresh start (one or two seconds) instead of inheriting that state.
``tests/test_faults_workers.py`` reproduces it; ``scripts/after_oom.py`` measures that a case after an OOM times
the same as alone (``results/cpu/faults``).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from typing import Any

STATUSES = ("ok", "oom", "timeout", "unsupported", "error")
STARTUP_TIMEOUT_S = 120.0  # spawning a worker imports torch; generous for a loaded 2-core machine
RLIMIT_ENV = "FDSM_WORKER_RLIMIT_AS_MB"  # test-only: the worker's address-space cap in MiB (module docstring)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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
    return isinstance(err, RuntimeError) and reports_out_of_memory(str(err))


def failure(err: BaseException) -> tuple[str, str]:
    """The status and message of a case that raised ``err``: ``oom`` for an allocator failure; ``unsupported`` for a
    method that does not apply to this f (``fdsm.NotSupported``: Taylor mode with no rule for one of its ops), its
    message as it is, since it says why, and for an op whose higher-order derivative PyTorch does not implement
    (nested autograd through attention's CPU kernel: ``derivative for aten::... is not implemented``); else
    ``error``. The message names the exception's type but for NotSupported."""
    from fdsm.registry import NotSupported

    if isinstance(err, NotSupported):
        return "unsupported", str(err)
    if isinstance(err, RuntimeError) and re.search(r"derivative for \S+ is not implemented", str(err)):
        return "unsupported", (f"PyTorch implements no derivative of an op this method differentiates through, at "
                               f"this order (exact-taylor has its own rules): {type(err).__name__}: {err}")
    return "oom" if is_out_of_memory(err) else "error", f"{type(err).__name__}: {err}"


def reports_out_of_memory(text: str) -> bool:
    """Whether a message reports an allocator failure (torch's CUDA and CPU allocators' wording)."""
    return "out of memory" in text or "can't allocate memory" in text


def is_spent(status: str, result: Any) -> bool:
    """Whether a worker must be replaced after a case that gave ``status`` and ``result`` (NOTE [a worker that ran
    out of memory is replaced]): it raised (``fdsm.NotSupported`` aside: a method that does not apply leaves the
    process as it was), or its row's message reports an allocator failure it caught."""
    if status not in ("ok", "unsupported"):
        return True
    message = result.get("message") if isinstance(result, Mapping) else None
    return isinstance(message, str) and reports_out_of_memory(message)


def death_message(exitcode: int | None, doing: str) -> str:
    """Why a worker died while ``doing`` (e.g. "running measure_derivative"): the signal that killed it, or its
    exit code. SIGKILL is not called out of memory: it only may have been (the module docstring)."""
    if exitcode is None or exitcode >= 0:
        return f"worker exited with code {exitcode} while {doing}"
    try:
        signame = signal.Signals(-exitcode).name
    except ValueError:
        signame = f"signal {-exitcode}"
    message = f"worker killed by {signame} while {doing}"
    if -exitcode == signal.SIGKILL:
        message += "; the kernel's OOM killer sends SIGKILL, so it may have run out of memory"
    return message


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this process when its parent dies, even by SIGKILL, so that no worker is orphaned.
    (Strictly, when the parent's thread that started it ends: start workers from the main thread.)"""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the call
            os._exit(1)


def _cap_address_space() -> None:
    """Test-only (module docstring): ``RLIMIT_AS`` from ``FDSM_WORKER_RLIMIT_AS_MB``, if set."""
    mb = os.environ.get(RLIMIT_ENV)
    if mb:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (int(mb) * 2**20, hard))


def _serve(conn: Connection, threads: int | None, parent_pid: int) -> None:
    """The worker's loop: receive ``(fn, args)``, send back ``(status, result, message, wall_s)``; None stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal Ctrl-C is the parent's (module docstring)
    if hasattr(signal, "pthread_sigmask"):  # the parent started this process with SIGINT, SIGTERM blocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent(parent_pid)
    _cap_address_space()
    import torch

    from bench.environment import prepare_process

    if threads is not None:
        torch.set_num_threads(threads)
    prepare_process()
    conn.send("ready")
    while (job := conn.recv()) is not None:
        fn, args = job
        t0 = time.perf_counter()
        try:
            reply = ("ok", fn(*args), "")
        except Exception as err:  # every failure becomes a row; the sweep goes on
            status, message = failure(err)
            reply = (status, None, message)
        wall_s = time.perf_counter() - t0
        try:
            conn.send((*reply, wall_s))
        except (TypeError, AttributeError, RecursionError, ValueError, pickle.PicklingError) as err:  # pickling
            conn.send(("error", None, f"the result of {getattr(fn, '__name__', fn)} could not be sent back "
                       f"({type(err).__name__}: {err}); a case must return a picklable row", wall_s))


@contextlib.contextmanager
def signals_blocked(*signums: int) -> Iterator[None]:
    """Defer ``signums`` (delivered when the block ends) where the platform can; else do nothing."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Worker:
    """A spawned process that runs one case at a time (see the module docstring). Use it as a context manager."""

    def __init__(self, *, threads: int | None = None):
        self.threads = threads
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._idle = False  # started, and no case in flight: the worker waits for a job

    @property
    def pid(self) -> int | None:
        """The worker process's id, or None when none is running (the next ``run`` starts one)."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def _start(self) -> Connection:
        if self._process is None or not self._process.is_alive():
            self._kill()
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            self._process = context.Process(target=_serve, args=(child, self.threads, os.getpid()), daemon=True,
                                            name="fdsm-bench-worker")
            self._conn = parent
            # A Ctrl-C while the child starts would kill it with a traceback before it can ignore SIGINT: it
            # inherits this signal mask, and unblocks once it ignores SIGINT. Here they are delivered after.
            # (Starting the resource tracker, which spawn needs, unblocks both: so it is started first.)
            if os.name == "posix":
                resource_tracker.ensure_running()
            with signals_blocked(signal.SIGINT, signal.SIGTERM):
                self._process.start()
            child.close()  # so that the parent sees EOF when the worker dies
            if not parent.poll(STARTUP_TIMEOUT_S):
                self._kill()
                raise RuntimeError(f"Worker: the worker process did not start within {STARTUP_TIMEOUT_S} s")
            try:
                ready = parent.recv()
            except EOFError:
                ready = None
            if ready != "ready":
                self._process.join(timeout=5)
                why = death_message(self._process.exitcode, "starting")
                self._kill()
                raise RuntimeError(f"Worker: the worker process did not start: {why} (its stderr says more)")
            self._idle = True
        return self._conn

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process, self._conn, self._idle = None, None, False

    def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> CaseOutcome:
        """Run ``fn(*args)`` in the worker and wait at most ``timeout_s`` seconds (start-up not included).
        After anything but a clean ``ok`` the worker is gone, and the next call starts a fresh one (``is_spent``)."""
        conn = self._start()
        self._idle = False
        conn.send((fn, args))
        if not conn.poll(timeout_s):
            self._kill()
            return CaseOutcome("timeout", message=f"exceeded the time budget of {timeout_s:g} s", wall_s=timeout_s)
        try:
            status, result, message, wall_s = conn.recv()
        except EOFError:  # the worker died while running the case
            self._process.join()
            message = death_message(self._process.exitcode, f"running {getattr(fn, '__name__', fn)}")
            self._kill()
            return CaseOutcome("error", message=message)
        self._idle = True
        if is_spent(status, result):  # NOTE [a worker that ran out of memory is replaced]
            self._kill()
        return CaseOutcome(status, result, message, wall_s)

    def close(self) -> None:
        """Stop the worker: politely if it is idle, else (a case in flight, or starting) kill it at once."""
        if self._idle and self._process is not None and self._process.is_alive():
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
