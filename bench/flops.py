r"""The model FLOPs of a training step, counted on the meta device: shapes only, so the paper's sizes count in
seconds on a CPU.

    fdsm-bench flops --size paper --models deep-ebm,ncsn   # a row per train-steps case (bench.commands.flops)

``FlopCount`` adds up ``torch.utils.flop_counter``'s formulas (convolutions, matmuls, attention; elementwise ops
and dense linear algebra such as DKEF's solves count zero) over every aten op run under it, the nested
``autograd.grad(create_graph=True)`` passes of the gradient objectives included (``FlopCounterMode`` itself refuses
those: its module tracker cannot follow a leaf through ``autograd.grad``). A step's time over its FLOPs is the rate
it ran its arithmetic at:

.. math::
    \text{tflops} = \frac{\text{gflop}}{\text{time\_ms}} \quad (\text{GFLOP / ms} = \text{TFLOP/s}).

An FD objective and its gradient counterpart can do much the same arithmetic and still differ in step time: the
speed-up is then the rate, not the FLOPs. The counts and rates measured with this module are in
results/cpu/README.md ("Where FD's speed-up comes from") and results/gpu-h200/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from fdsm.recipes import Recipe, example_batch


class FlopCount(TorchDispatchMode):
    """``with FlopCount() as count: ...`` then ``count.total``: the FLOPs of the aten ops run inside."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_gflop(case: Mapping[str, Any], recipe: Recipe) -> float:
    """The model FLOPs of one training step of a ``train-steps`` case (its ``recipe``, ``size`` and ``batch``), in
    GFLOP: the loss and its backward, on the meta device. The optimizer step is elementwise (zero)."""
    with torch.device("meta"):
        model = recipe.build_model(case["size"])
    x = example_batch(model, int(case["batch"]), device="meta")
    with FlopCount() as count:
        recipe.loss(model, x).backward()
    return count.total / 1e9


def counted_gflop(case: Mapping[str, Any], recipe: Recipe) -> tuple[float, str]:
    """``step_gflop(case, recipe)`` and "", or NaN and why it could not be counted: the FLOPs are an auxiliary
    column, so a model that cannot run on the meta device keeps the rest of its row."""
    try:
        return step_gflop(case, recipe), ""
    except Exception as err:
        return float("nan"), f"FLOPs not counted on the meta device ({type(err).__name__}: {err})"
