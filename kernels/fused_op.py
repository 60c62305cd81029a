"""How a Triton kernel becomes a differentiable call with a torch fallback: the machinery every op shares.

An op is a :class:`FusedOp`: a plain-torch reference (the oracle, the benchmark baseline, and the ``"torch"``
backend, differentiated by autograd) plus two Triton launchers, forward and backward. Calling the op resolves the
backend (:func:`kernels.backend.resolve_backend`); the Triton path runs through one generic
``torch.autograd.Function`` that saves the inputs in forward and hands them to the backward launcher.

The launchers share the helpers below: argument checks that name the call, output allocation (NaN-filled under
the :func:`poison_outputs` test hook, so that an element a kernel forgets to write shows up), and scalar constants
passed to kernels as one-element tensors of the compute dtype (Triton passes a Python float as float32, which
would round a float64 constant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from kernels.backend import resolve_backend, tl
from kernels.constants import constant

# Flat indices in the kernels are int32: tensors up to 2**31 - 1 elements (8 GiB of float32).
MAX_NUMEL = 2**31 - 1


@dataclass(frozen=True)
class FusedOp:
    """One fused operation: a torch reference and the Triton launchers that replace it.

    ``forward(*inputs, **consts) -> Tensor`` and ``backward(grad_out, *inputs, needs_grad, **consts) -> tuple``
    (one gradient or None per input; ``needs_grad[i]`` says whether input i wants one) launch the kernels.
    ``consts`` are the op's non-tensor arguments (a scale, an eps); they get no gradient.
    """

    name: str  # the public name, used in error messages
    reference: Callable[..., Tensor]  # plain torch, differentiable by autograd
    forward: Callable[..., Tensor]  # Triton launcher
    backward: Callable[..., tuple[Tensor | None, ...]]  # Triton launcher

    def __call__(self, *inputs: Tensor, backend: str = "auto", **consts) -> Tensor:
        if resolve_backend(backend, inputs[0].device, caller=self.name) == "torch":
            return self.reference(*inputs, **consts)
        return _FusedFunction.apply(self, consts, *inputs)


class _FusedFunction(torch.autograd.Function):
    """``apply(op, consts, *inputs)``: ``op.forward`` now, ``op.backward`` on the saved inputs later.

    The backward launchers are not themselves differentiable (``once_differentiable``): first-order gradients,
    which is what a training step through a directional derivative or a loss head needs.
    """

    @staticmethod
    def forward(ctx, op: FusedOp, consts: dict, *inputs: Tensor) -> Tensor:
        ctx.op, ctx.consts = op, consts
        ctx.save_for_backward(*inputs)
        return op.forward(*inputs, **consts)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        needs_grad = ctx.needs_input_grad[2:]  # skip op and consts
        grads = ctx.op.backward(grad_out.contiguous(), *ctx.saved_tensors, needs_grad=needs_grad, **ctx.consts)
        return (None, None, *grads)


# ---------------------------------------------------------------------------------------------------------------
# Launcher helpers


def check_shape(caller: str, name: str, t: Tensor, dim: int, expected: str) -> None:
    """``t`` is a floating tensor with ``dim`` dimensions; ``expected`` spells the shape for the message."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{caller}: expected {name} to be a tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() != dim or not t.is_floating_point():
        raise ValueError(f"{caller}: expected {name} to be a floating tensor of shape {expected}, "
                         f"got {t.dtype} of shape {tuple(t.shape)}")


def check_like(caller: str, ref_name: str, ref: Tensor, **others: Tensor) -> None:
    """Every tensor in ``others`` has the shape, dtype and device of ``ref``."""
    for name, t in others.items():
        if not isinstance(t, Tensor) or (t.shape, t.dtype, t.device) != (ref.shape, ref.dtype, ref.device):
            got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{caller}: expected {name} to match {ref_name} ({ref.dtype} {tuple(ref.shape)} "
                             f"on {ref.device}), got {got}")


def coefficients(caller: str, name: str, values: Tensor | Sequence[float], like: Tensor) -> Tensor:
    """Stencil offsets or weights as a 1-D tensor on ``like``'s device, in ``like``'s dtype or float32 if that is
    narrower (FD weights grow like 2^T and must not round to half precision); a tensor keeps its graph."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    if isinstance(values, Tensor):
        c = values.to(dtype=dtype, device=like.device)
    else:  # a stencil's numbers: cached, since building a CUDA tensor from a list waits for the stream
        c = constant(tuple(float(value) for value in values), dtype, like.device)
    if c.dim() != 1 or c.numel() == 0:
        raise ValueError(f"{caller}: expected {name} to be a non-empty 1-D sequence, got shape {tuple(c.shape)}")
    return c


def check_numel(caller: str, numel: int) -> None:
    if numel > MAX_NUMEL:
        raise ValueError(f"{caller}(backend='triton'): {numel} elements exceed the kernels' int32 indexing "
                         f"({MAX_NUMEL}); split the batch or use backend='torch'")


_POISON = False


@contextmanager
def poison_outputs() -> Iterator[None]:
    """Test hook: outputs the Triton launchers allocate start as NaN, so an unwritten element shows up."""
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous


def new_output(shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialized output with ``like``'s dtype and device (NaN-filled under :func:`poison_outputs`)."""
    out = torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
    return out.fill_(float("nan")) if _POISON else out


def scalar(value: float, like: Tensor) -> Tensor:
    """A constant as a one-element tensor on ``like``'s device, in ``like``'s dtype or float32 if that is narrower
    (the kernels compute in at least float32, see :func:`compute_dtype`; in float16 a scale 1/eps^2 overflows for
    eps < 0.004, and bfloat16 rounds it), for a kernel to ``tl.load`` without rounding (``torch.full`` launches a
    fill; it does not wait for the stream as a host-to-device copy would)."""
    return torch.full((1,), float(value), dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)


def compute_dtype(dtype: torch.dtype):
    """The dtype kernels compute and accumulate in: float64 for float64, float32 for everything narrower."""
    return tl.float64 if dtype == torch.float64 else tl.float32
