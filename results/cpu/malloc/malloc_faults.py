"""A call's time and page faults under glibc's default malloc and under ``bench.memory.steady_malloc``.

    PYTHONPATH=. python results/cpu/malloc/malloc_faults.py > results/cpu/malloc/malloc_faults.log 2>&1

``fd-batched`` at batch 64, T = 1 on the trained deep EBM (``cpu`` preset, the cases of ``fdsm-bench derivatives``
with the steps of ``results/cpu/eps_sweep.csv``), in three fresh processes per setting: the median of 8 timed
calls and the minor page faults per call (``getrusage``), before and after the process compiles another call (the
whole Taylor pass under ``torch.compile``, as a ``derivatives --compiled`` worker does in the case before FD's).
Each process prints one line; the parent prints them as a table.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
from pathlib import Path
import torch
from bench.config import Shared
from bench.derivative_case import derivative_closure
from bench.environment import use_ieee_float32
from bench.experiments.derivatives import DerivativesConfig, cases
from bench.memory import malloc_setting, steady_malloc
from bench.timing import fix_cpu_threads

use_ieee_float32()
if sys.argv[1] == "steady":
    steady_malloc()
fix_cpu_threads(2)
config = DerivativesConfig(checkpoint=Path("results/cpu/checkpoints/deep-ebm-DSM.pt"),
                           steps_from=Path("results/cpu/eps_sweep.csv"), batch=64, orders=(1,),
                           methods=("exact-taylor", "fd-batched"), compiled=True)
calls = {case["method"]: derivative_closure(case) for case in cases(config, Shared(device=torch.device("cpu")))}
fd = calls["fd-batched"]

def timed(n=8):
    faults, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(n):
        start = time.perf_counter()
        fd()
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 1), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // n

fd()  # warm-up
before = timed()
calls["exact-taylor+compiled"]()  # a compile in this process (inductor's on-disk cache may hold it)
after = timed()
print(json.dumps({"malloc": malloc_setting(), "before": before, "after": after}))
"""

rows = []
for mode in ("default", "steady"):
    for process in range(3):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True)
        rows.append({"process": process + 1, **json.loads(out.stdout.strip().splitlines()[-1])})
print(f"python {sys.version.split()[0]}; fd-batched, deep EBM (cpu preset, fit checkpoint), batch 64, T = 1, 2 threads")
print("| malloc | process | before a compile: ms / call | page faults / call | after it: ms / call "
      "| page faults / call |")
print("|---|--:|--:|--:|--:|--:|")
for r in rows:
    (before_ms, before_faults), (after_ms, after_faults) = r["before"], r["after"]
    print(f"| {r['malloc']} | {r['process']} | {before_ms} | {before_faults} | {after_ms} | {after_faults} |")
