"""``bench.memory.steady_malloc``: every process of the suite fixes glibc's malloc thresholds, so that a repeated
call faults no pages in (NOTE [steady malloc for timing]), the rows say so, and the memory probe still measures."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.environment import METADATA_COLUMNS
from bench.memory import peak_memory

REPO = Path(__file__).resolve().parents[1]
GLIBC = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's")

# A call whose blocks (1 to 24 MiB, all below the fixed 32 MiB threshold) are freed before the next: its page faults
# in each of six calls, in a fresh process, after steady_malloc or not.
CALLS = """
import resource, sys, torch
if sys.argv[1] == "steady":
    from bench.memory import steady_malloc
    assert steady_malloc() == "steady"
def call():
    blocks = [torch.ones(n * 2**18) for n in (1, 5, 20, 3, 12)]  # n MiB of float32 each
    del blocks
    torch.ones(24 * 2**18)
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    call()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", CALLS, mode], cwd=REPO, check=True, capture_output=True, text=True)
    return [int(line) for line in out.stdout.split()]


@needs_glibc
def test_after_steady_malloc_a_repeated_call_faults_no_pages_in():
    steady = _faults("steady")
    assert steady[0] > 1000  # the first call faults its blocks in (one 4 KiB page each), as without the setting
    # once the heap has grown to the call's pattern (by the third call: where a block lands depends on the blocks
    # freed before it), every call reuses the freed pages; glibc's default went on re-faulting thousands per call
    assert max(steady[3:]) <= 256, steady


@needs_glibc
def test_every_suite_process_runs_steady_and_the_metadata_says_so():
    # the pytest process has not called it, a CLI process has (bench.environment.prepare_process)
    probe = ("from bench.environment import prepare_process, metadata; import torch; prepare_process(); "
             "print(metadata(torch.device('cpu'))['malloc'])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "steady"
    assert "malloc" in METADATA_COLUMNS


@needs_glibc
def test_the_memory_probe_still_sees_a_calls_peak_with_freed_pages_kept():
    # freed pages stay resident under steady malloc; the probe hands them back first (malloc_trim), so a call that
    # reuses them still raises the high-water mark by what it needs
    out = subprocess.run([sys.executable, "-c", (
        "import torch; from bench.memory import steady_malloc, peak_memory; steady_malloc(); "
        "call = lambda: torch.ones(16, 2**18) + 1; call(); call(); "  # two 16 MiB blocks, freed, kept resident
        "print(peak_memory(call, torch.device('cpu')).peak_mb)")], cwd=REPO, check=True, capture_output=True, text=True)
    assert 28 < float(out.stdout) < 48  # the two 16 MiB blocks of one call
    assert peak_memory(lambda: torch.ones(16, 2**18), torch.device("cpu")).peak_mb > 12  # and in this process
