"""A convolution's bias added to the primal rows of its Taylor series under autograd, three ways, timed in pairs on
the deep EBM's Taylor SSM step (loss and backward) and on its Taylor pass alone:

- ``CopySlices``: ``series[:rows].add_(value)``, in place, as autograd records the update of a slice (it clones the
  whole gradient in the backward);
- ``out of place``: ``series + e_0 value`` over the whole series (one more pass over it in the forward, and the
  whole gradient reduced in the backward), the rule's code from 91e90c9 until this study's commit;
- ``_AddToPrimal``: in place, through its own autograd node (``fdsm.taylor.rules.operands._AddToPrimal``: the gradient
  passes through, the bias's is the primal rows' summed), the rule's code since.

    PYTHONPATH=. python results/cpu/taylor/bias-add/bias_add.py > results/cpu/taylor/bias-add/bias_add.log

With the suite's steady malloc (``bench.environment.prepare_process``). The step: one loss and its backward per
call (no optimizer step) on the deep EBM (``cpu`` preset, seeded weights, channels_last as in ``train-steps``) at
batch 64. The pass: ``exact-taylor`` at T = 5 with the parameters requiring grad (as in ``derivatives``), batch 64
and batch 2. The variants of one case alternate round by round in one process (``bench.timing.measure_interleaved``),
each ratio to ``_AddToPrimal`` taken per round.
"""

from __future__ import annotations

import torch

import fdsm.objectives as obj
from bench.environment import metadata, prepare_process
from bench.timing import fix_cpu_threads, measure_interleaved, paired_ratio
from fdsm import directional_derivative
from fdsm.models import build
from fdsm.taylor.rules import affine, operands, structural

prepare_process()
fix_cpu_threads(2)
torch.manual_seed(0)
model = build("deep-ebm", size="cpu").to(memory_format=torch.channels_last)
node = operands.add_to_primal
USERS = (structural, affine)  # the modules whose rules call it: the convolution's and addmm's bias


def use(add):
    for module in USERS:
        module.add_to_primal = add


def copy_slices(series, value, rows=1):
    series[:rows].add_(value)
    return series


def out_of_place(series, value, rows=1):
    if rows == 1:
        return operands._plus_primal(series, value)
    return operands._plus_primal(series.unflatten(0, (-1, rows)), value).flatten(0, 1)  # the (K+1)·B-row form


VARIANTS = {"CopySlices": copy_slices, "out of place": out_of_place, "_AddToPrimal": node}


def using(add, call):
    def timed():
        use(add)
        try:
            call()
        finally:
            use(node)
    return timed


def ssm_step(x):
    def call():
        obj.ssm_loss(model.log_density, x, noise="gaussian", method="taylor").backward()
        model.zero_grad(set_to_none=True)
    return call


def taylor_pass(x, v):
    return lambda: directional_derivative(model.log_density, x, v, 5, method="exact-taylor")


def inputs(batch):
    x = torch.rand(batch, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    return x, torch.randn_like(x)


x64, v64 = inputs(64)
x2, v2 = inputs(2)
CASES = {"SSM-Taylor step, batch 64": (ssm_step(x64), 30), "Taylor pass T = 5, batch 64": (taylor_pass(x64, v64), 30),
         "Taylor pass T = 5, batch 2": (taylor_pass(x2, v2), 120)}
print(metadata(torch.device("cpu")))
reference = taylor_pass(x2, v2)()
for add in VARIANTS.values():  # the same numbers every way
    use(add)
    assert torch.equal(taylor_pass(x2, v2)(), reference)
use(node)
for case, (call, repeats) in CASES.items():
    timings = measure_interleaved([using(add, call) for add in VARIANTS.values()], torch.device("cpu"), warmup=2,
                                  repeats=repeats)
    print(f"{case} ({repeats} rounds):")
    for name, timing in zip(VARIANTS, timings, strict=True):
        r = paired_ratio(timing, timings[-1])
        print(f"  {name:13s} median {timing.median_ms:7.2f} ms, / _AddToPrimal {r.median:.3f} [{r.q1:.3f}, {r.q3:.3f}]")
