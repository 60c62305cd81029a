"""Where the Figure-2 batch's time goes: torch.profiler over eager fd-batched and Taylor mode with fused rules.

    PYTHONPATH=. python results/cpu/taylor/profile/profile_batch2.py > results/cpu/taylor/profile/profile_batch2.log

The trained deep EBM (``cpu`` preset), batch 2, T = 6, float32, the cases of ``fdsm-bench derivatives --compiled``
(the same steps from ``results/cpu/eps_sweep.csv``). Each call is warmed up (its kernels compiled), then 20 calls
run under the profiler. Per call: the convolutions (``aten::mkldnn_convolution``, the linear work both share), each
method's activations (FD's ``aten::softplus`` and ``aten::sub``; the fused rules' compiled kernels, ``## Call
CompiledFxGraph``), and the profiled ops' total. The profiler sees ops, not the Python around them: the wall time
per call, measured beside it without the profiler, shows the rest.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.profiler import profile

from bench.config import Shared
from bench.derivative_case import FUSED, derivative_closure
from bench.environment import metadata, use_ieee_float32
from bench.experiments.derivatives import DerivativesConfig, cases
from bench.timing import fix_cpu_threads

CALLS = 20
ROWS = {"convolutions": ("aten::mkldnn_convolution",), "FD's activations": ("aten::softplus", "aten::sub"),
        "fused kernels": ("## Call CompiledFxGraph",)}

use_ieee_float32()
fix_cpu_threads(2)
config = DerivativesConfig(checkpoint=Path("results/cpu/checkpoints/deep-ebm-DSM.pt"),
                           steps_from=Path("results/cpu/eps_sweep.csv"), batch=2, orders=(6,),
                           methods=("exact-taylor", "fd-batched"), compiled=True)
calls = {case["method"]: derivative_closure(case) for case in cases(config, Shared(device=torch.device("cpu")))
         if case["method"] in ("fd-batched", "exact-taylor" + FUSED)}
print(metadata(torch.device("cpu")))
for method, call in calls.items():
    for _ in range(3):  # warm-up: trace and compile
        call()
    start = time.perf_counter()
    for _ in range(CALLS):
        call()
    wall = (time.perf_counter() - start) / CALLS * 1e3
    with profile() as prof:
        for _ in range(CALLS):
            call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / CALLS / 1e3
    print(f"{method}: wall {wall:.2f} ms a call, profiled ops {total:.2f} ms")
    for row, names in ROWS.items():
        ms = sum(e.self_cpu_time_total for e in events if e.key.startswith(names)) / CALLS / 1e3
        if ms:
            print(f"  {row:18s} {ms:.2f} ms")
