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

# A call that allocates 64 blocks of about 98 KiB, each below glibc's initial mmap threshold (so from the heap), and
# frees them: its page faults in each of eight calls, in a fresh process, after steady_malloc ("steady") or not
# ("default", to run by hand). With glibc's default the freed top of the heap exceeds the trim threshold and is handed
# back after every call, so every call faults its blocks in again; with the thresholds fixed nothing is trimmed.
CALLS = """
import resource, sys, torch
if sys.argv[1] == "steady":
    from bench.memory import steady_malloc
    assert steady_malloc() == "steady"
def call():
    blocks = [torch.ones(25_000) for _ in range(64)]
    del blocks
for _ in range(8):
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
    assert max(steady[2:]) <= 16, steady  # from the third on, the freed pages are reused


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
