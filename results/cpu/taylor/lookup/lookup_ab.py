"""Taylor mode's trace lookup before and after commit 06f3570 (each module keeps its attribute layout), timed on
the same pass: the trained deep EBM (``cpu`` preset), batch 2, T = 6, float32, the eager and the fused Taylor pass of
``fdsm-bench derivatives --compiled`` and ``fd-batched``, alternated round by round in one process. The old lookup
is ``fdsm/taylor/trace.py`` as of commit 45eb2f9, read from git and imported beside the current one.

    PYTHONPATH=. python results/cpu/taylor/lookup/lookup_ab.py > results/cpu/taylor/lookup/lookup_ab.log

Prints each variant's median time, its ratio to fd-batched per round, and new / old per round (median [quartiles]).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.config import Shared
from bench.derivative_case import FUSED, derivative_closure
from bench.environment import metadata, module_at, prepare_process
from bench.experiments.derivatives import DerivativesConfig, cases
from fdsm.taylor import propagate, trace

OLD_COMMIT, ROUNDS = "45eb2f9", 80


def with_lookup(call, lookup):
    def timed_call():
        propagate.traced = lookup
        try:
            return call()
        finally:
            propagate.traced = trace.traced
    return timed_call


def quartiles(values: list[float]) -> str:
    v, n = sorted(values), len(values)
    return f"{v[n // 2]:.3f} [{v[n // 4]:.3f}, {v[3 * n // 4]:.3f}]"


prepare_process()
torch.set_num_threads(2)
config = DerivativesConfig(checkpoint=Path("results/cpu/checkpoints/deep-ebm-DSM.pt"),
                           steps_from=Path("results/cpu/eps_sweep.csv"), batch=2, orders=(6,),
                           methods=("exact-taylor", "fd-batched"), compiled=True)
calls = {c["method"]: derivative_closure(c) for c in cases(config, Shared(device=torch.device("cpu")))
         if not c["method"].endswith("+compiled")}
old = module_at(OLD_COMMIT, "fdsm/taylor/trace.py", "trace_old").traced
variants = {"fd-batched": calls["fd-batched"]}
for name, method in (("fused", "exact-taylor" + FUSED), ("eager", "exact-taylor")):
    variants[f"{name}-old"] = with_lookup(calls[method], old)
    variants[f"{name}-new"] = with_lookup(calls[method], trace.traced)
for call in variants.values():  # warm-up: traces and compiles
    for _ in range(3):
        call()
times = {name: [] for name in variants}
for _ in range(ROUNDS):
    for name, call in variants.items():
        start = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - start)
print(metadata(torch.device("cpu")))
for name, t in times.items():
    print(f"{name:11s} {statistics.median(t) * 1e3:7.2f} ms   / fd-batched "
          f"{quartiles([a / b for a, b in zip(t, times['fd-batched'], strict=True)])}")
for name in ("fused", "eager"):
    ratios = [a / b for a, b in zip(times[f"{name}-new"], times[f"{name}-old"], strict=True)]
    print(f"{name} new / old lookup: {quartiles(ratios)}")
