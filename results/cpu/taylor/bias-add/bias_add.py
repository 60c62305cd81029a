"""The deep EBM's Taylor SSM step with a bias (and a constant shift) added to the primal row in place under autograd,
against the out-of-place add that ``fdsm.taylor.rules.add_to_primal`` makes there, timed in pairs.

    PYTHONPATH=. python results/cpu/taylor/bias-add/bias_add.py > results/cpu/taylor/bias-add/bias_add.log

One loss and its backward per call (no optimizer step) on the deep EBM (``cpu`` preset, seeded weights,
channels_last as in ``train-steps``) at batch 64, the two variants alternated round by round in one process
(``bench.timing.measure_interleaved``) and their ratio taken per round. The in-place variant is the rule's former
code, ``series[0].add_(value)``, which autograd records as ``CopySlices``.
"""

from __future__ import annotations

import torch

import fdsm.objectives as obj
from bench.environment import metadata, use_ieee_float32
from bench.timing import fix_cpu_threads, measure_interleaved, paired_ratio
from fdsm.models import build
from fdsm.taylor import rules

use_ieee_float32()
fix_cpu_threads(2)
torch.manual_seed(0)
model = build("deep-ebm", size="cpu").to(memory_format=torch.channels_last)
x = torch.rand(64, 1, 32, 32).contiguous(memory_format=torch.channels_last)
out_of_place = rules.add_to_primal


def in_place(series, value):
    series[0].add_(value)
    return series


def step(add):
    def call():
        rules.add_to_primal = add
        obj.ssm_loss(model.log_density, x, noise="gaussian", method="taylor").backward()
        model.zero_grad(set_to_none=True)
    return call


timings = measure_interleaved([step(in_place), step(out_of_place)], torch.device("cpu"), warmup=2, repeats=15)
rules.add_to_primal = out_of_place
print(metadata(torch.device("cpu")))
for name, timing in zip(("in place (CopySlices)", "out of place"), timings, strict=True):
    print(f"{name:22s} median {timing.median_ms:7.1f} ms")
r = paired_ratio(timings[1], timings[0])
print(f"out of place / in place: {r.median:.2f} [{r.q1:.2f}, {r.q3:.2f}]")
