"""Peak memory of one call, above the baseline of what was allocated before it (DESIGN.md, measurement rules).

- CUDA: ``torch.cuda.reset_peak_memory_stats``, then ``max_memory_allocated - memory_allocated`` before the call
  (the baseline is the model plus its inputs), plus the allocator's reserved peak and an NVML device reading
  (``pynvml`` from the ``nvidia-ml-py`` package, imported only here and only when present). NVML counts the CUDA
  context and every other process, and samples once after the call: a cross-check, not the measurement.
- CPU: the process's resident-set high-water mark. On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets
  ``VmHWM`` in ``/proc/self/status`` to the current resident set, so the peak of one call is
  ``VmHWM(after) - VmRSS(before)``, after free heap pages are handed back (NOTE [CPU peak memory and malloc]).
  Run each configuration in a worker process (``bench.isolation``), so that nothing else runs in the process.

>>> mem = peak_memory(lambda: torch.ones(64, 1024, 1024), torch.device("cpu"))  # 256 MiB
>>> mem.peak_mb > 200
True
"""

from __future__ import annotations

import ctypes
import functools
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

MB = 2**20  # bytes per MiB; every *_mb column is in MiB

# NOTE [CPU peak memory and malloc]
# glibc's malloc keeps freed blocks in its heap, resident, and reuses them: after a warm-up call, a second call of
# the same configuration fits in pages that are already resident and would not raise VmHWM at all. So the probe
# first calls malloc_trim(0), which hands every free heap page back to the OS (glibc >= 2.8 also releases free
# pages inside the heap), and only then resets VmHWM: the resident set is the live memory, and the peak above it
# is what the call itself needed. Torch's CPU allocator does not cache, so nothing else holds freed tensor memory.
# Without glibc (musl, macOS) the trim is skipped and small configurations may read low.


# NOTE [steady malloc for timing]
# glibc's malloc serves a block above its mmap threshold (128 KiB at start) by mmap, and unmaps it when it is
# freed; it trims the top of its heap once more than the trim threshold is free there. Both thresholds adapt: the
# free of an mmapped block raises them to its size. So how many pages a call faults in (each one zeroed by the
# kernel) depends on what the process allocated before it: the same derivative call, in processes with another
# history (a compile before it, a reference, the order of the cases), ran up to twice as long, its time mostly
# page faults (results/cpu/malloc/). ``steady_malloc`` fixes both thresholds, which also turns their adaptation off:
# blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and freed pages stay resident for the
# next call, which then faults none. Every process of the suite calls it at start (``bench.environment.
# prepare_process``); the memory probe still hands the free pages back before it measures (the NOTE above), and the
# ``malloc`` metadata column says which setting a row ran under.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 * MB  # glibc's largest on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2**30  # free heap past this is trimmed: in effect only by the memory probe's malloc_trim
_malloc = "default"  # this process's setting: "steady" once steady_malloc took effect


def steady_malloc() -> str:
    """Fix glibc's mmap and trim thresholds for this process (NOTE [steady malloc for timing]); returns the
    setting now in effect, ``"steady"``, or ``"default"`` where this is not glibc (musl, macOS), as ``malloc_setting``.
    """
    global _malloc
    try:
        libc = ctypes.CDLL(None)
        if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
            _malloc = "steady"
    except (OSError, AttributeError):  # no mallopt
        pass
    return _malloc


def malloc_setting() -> str:
    """``steady`` where this process fixed glibc's malloc thresholds (``steady_malloc``), else ``default``."""
    return _malloc


def _release_free_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of one call in MiB; NaN where a reading does not exist on this device."""

    peak_mb: float  # CUDA: allocator peak above baseline; CPU: VmHWM above the VmRSS before the call
    reserved_mb: float = math.nan  # CUDA: caching-allocator reserved peak above its baseline (empty cache)
    nvml_used_mb: float = math.nan  # CUDA: NVML device memory in use after the call (all processes, with context)


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # "VmHWM:   123456 kB"
    raise RuntimeError(f"peak_memory: no {field} line in {_STATUS}; CPU peak memory needs Linux /proc")


def cpu_peak_supported() -> bool:
    """Whether this process can reset and read its resident-set high-water mark (Linux /proc)."""
    return _STATUS.exists() and _CLEAR_REFS.exists()


@functools.cache
def _nvml():
    """The initialized ``pynvml`` module (nvidia-ml-py), or None where it or the driver is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no package, no driver
        return None
    return pynvml


def _nvml_handle(nvml, device: torch.device):
    """The NVML handle of a torch device, found by PCI bus id: NVML's indices ignore CUDA_VISIBLE_DEVICES and
    may order devices differently from CUDA, so the CUDA ordinal is only the fallback."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    try:
        bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        return nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except (AttributeError, nvml.NVMLError):  # an older torch without PCI properties, or an unknown bus id
        return nvml.nvmlDeviceGetHandleByIndex(index)


def _nvml_used_mb(device: torch.device) -> float:
    nvml = _nvml()
    if nvml is None:
        return math.nan
    try:
        return nvml.nvmlDeviceGetMemoryInfo(_nvml_handle(nvml, device)).used / MB
    except nvml.NVMLError:
        return math.nan


def _peak_cuda(fn: Callable[[], object], device: torch.device) -> PeakMemory:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # so that the reserved peak is this call's, not blocks cached by earlier cases
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    baseline_reserved = torch.cuda.memory_reserved(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    reserved = torch.cuda.max_memory_reserved(device) - baseline_reserved
    del result
    return PeakMemory(peak / MB, reserved / MB, _nvml_used_mb(device))


def _peak_cpu(fn: Callable[[], object]) -> PeakMemory:
    if not cpu_peak_supported():
        return PeakMemory(math.nan)
    gc.collect()
    _release_free_heap()  # NOTE [CPU peak memory and malloc]
    _CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
    baseline_kib = _status_kib("VmRSS")
    result = fn()
    peak_kib = _status_kib("VmHWM")
    del result
    return PeakMemory(max(peak_kib - baseline_kib, 0) * 1024 / MB)


def peak_memory(fn: Callable[[], object], device: torch.device) -> PeakMemory:
    """Call ``fn()`` once and return its peak memory above the baseline before the call.

    What ``fn`` returns is held until the peak is read, so it counts (a derivative's output and its graph).
    """
    return _peak_cuda(fn, device) if device.type == "cuda" else _peak_cpu(fn)
