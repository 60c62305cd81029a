"""Is Triton usable here, and which implementation (``"triton"`` or ``"torch"``) serves a call.

Triton is optional. This module imports it once, records why when it cannot, and gives the kernel modules a
``jit`` decorator that works either way: with Triton it is ``triton.jit``; without it, it returns a stand-in that
raises with the reason when launched. The kernel modules use ``from __future__ import annotations``, so their
``tl.constexpr`` annotations are never evaluated at import, and ``import kernels`` works on a machine without
Triton.

NOTE [the Triton interpreter]: with ``TRITON_INTERPRET=1`` in the environment when a kernel is decorated, Triton
runs it in Python on the CPU (numpy underneath), on CPU tensors. That is how the tests check every kernel on a
machine without a GPU. The variable is read when ``kernels`` is first imported, so set it before that (the test
suite does it in ``tests/conftest.py``). Without it, the Triton backend needs CUDA tensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

try:
    import triton
    import triton.language as tl
except ImportError as err:  # Triton is an optional dependency (pyproject extra "kernels")
    triton = None
    tl = None
    TRITON_IMPORT_ERROR: str | None = f"triton is not importable ({err})"
else:
    TRITON_IMPORT_ERROR = None

HAS_TRITON: bool = TRITON_IMPORT_ERROR is None
# Read once, when the kernels are decorated: see NOTE [the Triton interpreter].
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "yes", "on"}

BACKENDS = ("auto", "triton", "torch")


class _Unavailable:
    """What ``jit`` returns without Triton: launching it (``kernel[grid](...)``) raises with the reason."""

    def __init__(self, fn: Callable):
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def __getitem__(self, grid):
        raise RuntimeError(f"Triton kernel {self.__name__} cannot run: {TRITON_IMPORT_ERROR}")


def jit(fn: Callable):
    """``triton.jit`` when Triton imports; otherwise a stand-in that explains itself when launched."""
    return triton.jit(fn) if HAS_TRITON else _Unavailable(fn)


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on tensors of ``device``, or None when it can."""
    if not HAS_TRITON:
        return TRITON_IMPORT_ERROR
    if device.type == "cuda" or INTERPRET:
        return None
    return (
        f"Triton kernels need CUDA tensors, got {device.type} tensors; on the CPU they run only under the "
        "interpreter, with TRITON_INTERPRET=1 set before `kernels` (and triton) is imported"
    )


def resolve_backend(backend: str, device: torch.device, *, caller: str) -> str:
    """Map ``backend`` ("auto" | "triton" | "torch") to the implementation that runs on ``device``.

    ``auto`` picks Triton for CUDA tensors when Triton imports, and torch otherwise (the interpreter is a
    correctness tool, never chosen by ``auto``). ``triton`` where it cannot run is a RuntimeError that says why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{caller}: expected backend in {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if HAS_TRITON and device.type == "cuda" else "torch"
    if backend == "triton" and (reason := triton_unavailable_reason(device)) is not None:
        raise RuntimeError(f"{caller}(backend='triton'): {reason}; use backend='torch' or 'auto'")
    return backend
