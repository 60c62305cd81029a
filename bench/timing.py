r"""Wall-clock time of a callable: warm-up, then repeats, reported as the median and the interquartile range.

Measurement rules (DESIGN.md): warm up first; on CUDA, time each repeat with a pair of CUDA events recorded on the
current stream (the host never reads a clock while kernels are queued); on the CPU, fix the number of intra-op
threads and record it. Each repeat is one call of ``fn``, timed on its own, so the spread between repeats is visible:

.. math::
    \text{median} = q_{0.5}(t_1, \dots, t_R), \qquad \text{IQR} = q_{0.75} - q_{0.25}.

>>> timing = measure_time(lambda: sum(range(1000)), torch.device("cpu"), warmup=1, repeats=5)
>>> timing.repeats, timing.median_ms > 0, timing.iqr_ms >= 0
(5, True, True)
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """The result of ``measure_time``: median and IQR of the per-call times in milliseconds."""

    median_ms: float
    iqr_ms: float  # q3_ms - q1_ms
    q1_ms: float
    q3_ms: float
    repeats: int
    threads: int  # torch intra-op threads during the measurement (CPU); recorded on CUDA too
    samples_ms: tuple[float, ...]  # every repeat, in call order


def fix_cpu_threads(threads: int | None = None) -> int:
    """Fix torch's intra-op thread count and return it.

    ``threads=None`` keeps ``OMP_NUM_THREADS`` when it is set, else torch's current count. Fixing it once, before
    any measurement, keeps every repeat and every case of a sweep on the same number of cores.
    """
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    if threads < 1:
        raise ValueError(f"fix_cpu_threads(threads): expected threads >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q2, q3


def _time_cuda(fn: Callable[[], object], device: torch.device) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    stream = torch.cuda.current_stream(device)
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end)  # ms


def _time_cpu(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3  # ms


def first_call_ms(fn: Callable[[], object], device: torch.device) -> float:
    """The wall time of one call, the device synchronized before and after: the first call of a compiled
    function, whose compile runs on the host."""
    if device.type != "cuda":
        return _time_cpu(fn)
    torch.cuda.synchronize(device)
    return _time_cpu(lambda: (fn(), torch.cuda.synchronize(device)))


def measure_time(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, repeats: int = 5) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    On CUDA each repeat is bracketed by CUDA events on the current stream (work ``fn`` puts on side streams must
    be joined back to it, as ``fd-streams`` does); the device is synchronized after the warm-up. On the CPU each
    repeat is timed with ``time.perf_counter``; fix the thread count first (``fix_cpu_threads``).
    """
    return measure_interleaved([fn], device, warmup=warmup, repeats=repeats)[0]


def measure_interleaved(fns: Sequence[Callable[[], object]], device: torch.device, *, warmup: int = 1,
                        repeats: int = 5) -> list[Timing]:
    """Time several callables side by side, as ``measure_time`` times one: a Timing per callable.

    Each of ``repeats`` rounds calls every callable once, timed on its own, in list order on even rounds and in
    reverse on odd ones (so that neither always runs right after the other). A slow phase of a noisy machine then
    lands on every callable of the round alike, and ``samples_ms[r]`` of two Timings are a pair: the ratio of two
    callables' times is best taken per round (``paired_ratio``), which cancels most of that drift.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"measure_interleaved(fns, device, warmup, repeats): expected warmup >= 0 and repeats >= 1, "
                         f"got warmup={warmup}, repeats={repeats}")
    cuda = device.type == "cuda"
    for _ in range(warmup):
        for fn in fns:
            fn()
    if cuda:
        torch.cuda.synchronize(device)
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            samples[i].append(_time_cuda(fns[i], device) if cuda else _time_cpu(fns[i]))
    return [_timing(s) for s in samples]


def _timing(samples: list[float]) -> Timing:
    q1, median, q3 = _quartiles(samples)
    return Timing(median_ms=median, iqr_ms=q3 - q1, q1_ms=q1, q3_ms=q3, repeats=len(samples),
                  threads=torch.get_num_threads(), samples_ms=tuple(samples))


@dataclass(frozen=True)
class Ratio:
    """Median and quartiles of the per-round ratios of two interleaved timings."""

    median: float
    q1: float
    q3: float


def paired_ratio(numerator: Timing, denominator: Timing) -> Ratio:
    r"""The ratio of two timings from one ``measure_interleaved`` call, taken per round:
    :math:`q_{1/2/3}(t^a_r / t^b_r)`, r = 1..R; e.g. a speed-up is baseline over candidate."""
    if len(numerator.samples_ms) != len(denominator.samples_ms):
        raise ValueError(f"paired_ratio: expected timings of the same rounds, got {len(numerator.samples_ms)} and "
                         f"{len(denominator.samples_ms)} samples")
    q1, median, q3 = _quartiles([a / b for a, b in zip(numerator.samples_ms, denominator.samples_ms, strict=True)])
    return Ratio(median=median, q1=q1, q3=q3)


class PhaseClock:
    """Splits each call of a step into its phases (``fdsm.training.PHASES``): ``start()`` before the call, and
    ``mark(phase)`` as each phase ends. On CUDA a stamp is an event recorded on the current stream (the host does not
    wait; read the times once the calls are synchronized, as ``measure_interleaved`` leaves them), on the CPU a
    ``time.perf_counter`` reading. The phases of one call add up to its time, less the few microseconds between the
    step timer's stamps and these."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.calls: list[list[tuple[str, float | torch.cuda.Event]]] = []

    def _stamp(self) -> float | torch.cuda.Event:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))  # the stream the step timer's events are on
        return event

    def start(self) -> None:
        self.calls.append([("start", self._stamp())])

    def mark(self, phase: str) -> None:
        self.calls[-1].append((phase, self._stamp()))

    def median_ms(self, last: int) -> dict[str, float]:
        """{phase: the median of its time over the last ``last`` calls, in ms}, phases in call order."""
        times: dict[str, list[float]] = {}
        for stamps in self.calls[-last:]:
            for (_, begin), (phase, end) in itertools.pairwise(stamps):
                times.setdefault(phase, []).append(begin.elapsed_time(end) if self.cuda else (end - begin) * 1e3)
        return {phase: statistics.median(ms) for phase, ms in times.items()}


def timing_columns(timing: Timing) -> dict[str, float | int]:
    """The CSV columns of a timing: median, IQR and both quartiles in ms (plots draw the quartiles, so that a
    skewed spread shows as skewed), and the number of repeats."""
    return {"time_ms": timing.median_ms, "time_ms_iqr": timing.iqr_ms, "time_ms_q1": timing.q1_ms,
            "time_ms_q3": timing.q3_ms, "repeats": timing.repeats}
