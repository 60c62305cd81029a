r"""Each elementwise Taylor rule as one compiled kernel: within ``fused_rules()``, the composition of every rule
runs as one loop nest made by ``torch.compile``, while the rest of the pass (convolutions, autograd) stays eager.

Eagerly, the composition :math:`\varphi(z(t)) = \sum_m c_m\, \delta(t)^m` of an elementwise rule
(``fdsm.taylor.compose``) is O(K^2) small ops over slices of the coefficient stack: on a small batch their launches
cost more than their arithmetic, and on a large one each pass over the (K+1)-row stack goes through memory again.
Here the coefficients :math:`c_m(z_0)` and the row form of the composition (``compose.horner_rows``, one
expression per output coefficient) are compiled together, so one kernel reads the K+1 input rows once and writes
the K+1 output rows once: as ``fd-batched``'s activation is one kernel over its stacked points. The result keeps its
autograd graph, as a training step needs: the rule's closed-form backward (``compose.Composed``) is one compiled
kernel too, where no graph of the backward itself is recorded (a double backward runs it eagerly).

One kernel per (φ, K, dims, dtype, device type, options), each a function with a code object of its own
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

Composition = Callable[..., Tensor]  # (z, [grad,] *, coefficients) -> φ(z(t)) or its backward

_OPTIONS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("fused_rules", default=None)
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
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
    if compile_options.get("mode") in CUDAGRAPH_MODES:
        raise ValueError(f"fused_rules(mode={compile_options['mode']!r}): a mode with CUDA graphs hands out outputs "
                         "that its next replay overwrites, and a rule's output is updated in place; use the default "
                         "mode or 'max-autotune-no-cudagraphs'")
    token = _OPTIONS.set({"dynamic": True} | compile_options)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def enabled() -> bool:
    """Whether the rules run within ``fused_rules()``."""
    return _OPTIONS.get() is not None


def options() -> dict | None:
    """The compile options of the enclosing ``fused_rules()``; None outside one. A rule's backward runs where
    ``backward()`` is called, perhaps outside the block: its forward keeps these for it."""
    return _OPTIONS.get()


_UNKEYED = object()  # what _plain_key gives a value that is not plain


def _value_key(coefficients: Callable) -> tuple | None:
    """What tells a coefficient function apart by value: a function by its module, code, and the values it closes
    over and takes as defaults; a ``functools.partial`` by its function and arguments. None (it then runs eagerly)
    where one of those values is not a plain value (a number, string, flag, dtype, None, a tuple of them, or such a
    function): a tensor or a module hashes by identity, so a new one per call would compile a new kernel per call."""
    if isinstance(coefficients, functools.partial):
        values = (coefficients.func, *coefficients.args, *coefficients.keywords.values())
        tail = tuple(coefficients.keywords)
    elif isinstance(coefficients, types.FunctionType):
        values = (*(cell.cell_contents for cell in coefficients.__closure__ or ()), *(coefficients.__defaults__ or ()),
                  *(coefficients.__kwdefaults__ or {}).values())
        tail = (coefficients.__module__, coefficients.__code__, tuple(coefficients.__kwdefaults__ or ()))
    else:
        return None
    keys = tuple(_plain_key(v) for v in values)
    return None if any(k is _UNKEYED for k in keys) else (keys, tail)


def _plain_key(value: object) -> object:
    """A plain value as itself (a function or partial by its value key, a tuple item by item); ``_UNKEYED`` for
    anything else."""
    if isinstance(value, (functools.partial, types.FunctionType)):
        key = _value_key(value)
        return _UNKEYED if key is None else key
    if isinstance(value, tuple):
        keys = tuple(_plain_key(v) for v in value)
        return _UNKEYED if any(k is _UNKEYED for k in keys) else ("tuple", keys)
    return value if isinstance(value, (int, float, bool, str, type(None), torch.dtype)) else _UNKEYED


def kernel(composition: Composition, coefficients: Callable, z: Tensor, compile_options: dict | None = None
           ) -> Callable[..., Tensor] | None:
    """The compiled ``composition(z, ..., coefficients=coefficients)`` for a z like this one, made on first use,
    with ``compile_options`` (default: the enclosing ``fused_rules()``'s); None where ``coefficients`` has no value
    key (it then runs eagerly)."""
    value = _value_key(coefficients)
    if value is None:
        return None
    compile_options = _OPTIONS.get() if compile_options is None else compile_options
    key = (composition, value, z.shape[0], z.dim(), z.dtype, z.device.type, repr(sorted(compile_options.items())))
    if key not in _KERNELS:  # the first function of this key stands for all: equal by value
        _KERNELS[key] = torch.compile(own_code(composition, coefficients=coefficients), **compile_options)
    return _KERNELS[key]


def kernels() -> int:
    """How many kernels have been made (one per φ, K, dims, dtype, device and options)."""
    return len(_KERNELS)
