r"""Each elementwise Taylor rule as one compiled kernel: within ``fused_rules()``, the composition of every rule
runs as one loop nest made by ``torch.compile``, while the rest of the pass (convolutions, autograd) stays eager.

Eagerly, the composition :math:`\varphi(z(t)) = \sum_m c_m\, \delta(t)^m` of an elementwise rule
(``fdsm.taylor.compose``) is O(K^2) small ops over slices of the coefficient stack: on a small batch their launches
cost more than their arithmetic, and on a large one each pass over the (K+1)-row stack goes through memory again.
Here the coefficients :math:`c_m(z_0)` and the row form of the composition (``compose.horner_rows``, one
expression per output coefficient) are compiled together, so one kernel reads the K+1 input rows once and writes
the K+1 output rows once: as ``fd-batched``'s activation is one kernel over its stacked points. The rule's backward
(``compose.Composed``) is unchanged, so the result keeps its autograd graph, as a training step needs.

One kernel per (φ, K, dims, dtype, device, options), each a function with a code object of its own
(``fdsm.own_code``), compiled with dynamic shapes: the first call of each pays the compile (seconds on a CPU;
inductor keeps its kernels on disk). A φ whose coefficient function cannot be told apart by value (a closure over
an unhashable object) runs eagerly, as outside ``fused_rules()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import types
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from fdsm.own_code import own_code

Composition = Callable[..., Tensor]  # (z, *, coefficients) -> φ(z(t))

_OPTIONS: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("fused_rules", default=None)
_KERNELS: dict[tuple, Callable[[Tensor], Tensor]] = {}

# The coefficient functions call functools.lru_cache'd builders of constant tables (compose.derivative_tables,
# kernels.constants.constant), pure functions of their arguments: dynamo traces through the cache, and nothing can
# go stale. Its warning about them, from these modules, is not shown.
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`-wrapped function at "
                        "'(rules|compose).py", category=UserWarning)


@contextlib.contextmanager
def fused_rules(**compile_options) -> Iterator[None]:
    """Within it, the elementwise rules of Taylor mode compose by one compiled kernel each; ``compile_options`` go
    to ``torch.compile`` (``backend``, ``mode``, ...; ``dynamic`` is True unless given).

    >>> with fused_rules(backend="eager"):
    ...     enabled()
    True
    """
    token = _OPTIONS.set(tuple(sorted(({"dynamic": True} | compile_options).items())))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def enabled() -> bool:
    """Whether the rules run within ``fused_rules()``."""
    return _OPTIONS.get() is not None


def _value_key(coefficients: Callable) -> tuple | None:
    """What tells a coefficient function apart: a function by its code and the values it closes over, a
    ``functools.partial`` by its function and arguments; None where one of those values is not hashable, or is a
    tensor (hashed by identity: a new one per call would compile a new kernel per call)."""
    if isinstance(coefficients, functools.partial):
        inner = _value_key(coefficients.func)
        values = (*coefficients.args, *coefficients.keywords.values())
        key = inner and (inner, coefficients.args, tuple(sorted(coefficients.keywords.items())))
    elif isinstance(coefficients, types.FunctionType):
        values = (*(cell.cell_contents for cell in coefficients.__closure__ or ()), *(coefficients.__defaults__ or ()))
        key = (coefficients.__code__, values)
    else:
        return None
    if any(isinstance(value, Tensor) for value in values):
        return None
    try:
        hash(key)
    except TypeError:
        return None
    return key


def kernel(composition: Composition, coefficients: Callable, z: Tensor) -> Callable[[Tensor], Tensor] | None:
    """The compiled ``composition(z, coefficients=coefficients)`` for a z like this one, made on first use; None
    where ``coefficients`` has no value key (it then runs eagerly)."""
    value = _value_key(coefficients)
    if value is None:
        return None
    options = _OPTIONS.get()
    key = (composition, value, z.shape[0], z.dim(), z.dtype, z.device.type, options)
    if key not in _KERNELS:  # the first function of this key stands for all: equal by value
        _KERNELS[key] = torch.compile(own_code(composition, coefficients=coefficients), **dict(options))
    return _KERNELS[key]


def kernels() -> int:
    """How many kernels have been made (one per φ, K, dims, dtype, device and options)."""
    return len(_KERNELS)
