"""The deep EBM's SSM objectives with Taylor mode's rules fused (fdsm.taylor.fused_rules), timed in pairs.

    PYTHONPATH=. python results/cpu/taylor/fused-ssm/fused_ssm.py > results/cpu/taylor/fused-ssm/fused_ssm.log

One loss and its backward per call (no optimizer step, the same for every objective), on the deep EBM (``cpu``
preset, seeded weights, channels_last as in ``train-steps``) at batch 64: SSM (double backward), SSM-Taylor eager,
SSM-Taylor with fused rules (forward and backward kernels) and FD-SSM, alternated round by round in one process
(``bench.timing.measure_interleaved``), each ratio taken per round. The compiles happen in the untimed warm-up.
"""

from __future__ import annotations

import contextlib

import torch

import fdsm.objectives as obj
from bench.environment import metadata, use_ieee_float32
from bench.timing import fix_cpu_threads, measure_interleaved, paired_ratio
from fdsm.models import build
from fdsm.taylor import fused_rules

use_ieee_float32()
fix_cpu_threads(2)
torch.manual_seed(0)
model = build("deep-ebm", size="cpu").to(memory_format=torch.channels_last)
x = torch.rand(64, 1, 32, 32).contiguous(memory_format=torch.channels_last)
LOSSES = {
    "SSM": (lambda: obj.ssm_loss(model.log_density, x, noise="gaussian"), contextlib.nullcontext),
    "SSM-Taylor": (lambda: obj.ssm_loss(model.log_density, x, noise="gaussian", method="taylor"),
                   contextlib.nullcontext),
    "SSM-Taylor+fused": (lambda: obj.ssm_loss(model.log_density, x, noise="gaussian", method="taylor"), fused_rules),
    "FD-SSM": (lambda: obj.fd_ssm_loss(model.log_density, x, eps=0.05), contextlib.nullcontext),
}


def step(loss, context):
    def call():
        with context():
            loss().backward()
        model.zero_grad(set_to_none=True)
    return call


calls = [step(*LOSSES[name]) for name in LOSSES]
timings = dict(zip(LOSSES, measure_interleaved(calls, torch.device("cpu"), warmup=2, repeats=15), strict=True))
print(metadata(torch.device("cpu")))
for name, timing in timings.items():
    print(f"{name:18s} median {timing.median_ms:7.1f} ms")
for over, under in (("SSM", "SSM-Taylor"), ("SSM", "SSM-Taylor+fused"), ("SSM-Taylor", "SSM-Taylor+fused"),
                    ("SSM-Taylor", "FD-SSM"), ("SSM-Taylor+fused", "FD-SSM")):
    r = paired_ratio(timings[over], timings[under])
    print(f"{over} / {under}: {r.median:.2f} [{r.q1:.2f}, {r.q3:.2f}]")
