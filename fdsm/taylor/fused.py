r"""Each elementwise Taylor rule as one compiled kernel: within ``fused_rules()``, the composition of every rule
runs as one loop nest made by TorchInductor, while the rest of the pass (convolutions, autograd) stays eager.

Eagerly, the composition :math:`\varphi(z(t)) = \sum_m c_m\, \delta(t)^m` of an elementwise rule
(``fdsm.taylor.compose``) is O(K^2) small ops over slices of the coefficient stack: on a small batch their launches
cost more than their arithmetic, and on a large one each pass over the (K+1)-row stack goes through memory again.
Here the coefficients :math:`c_m(z_0)` and the row form of the composition (``compose.horner_rows``, one
expression per output coefficient) are compiled together, so one kernel reads the K+1 input rows once and writes
the K+1 output rows once: as ``fd-batched``'s activation is one kernel over its stacked points. The result keeps its
autograd graph, as a training step needs: the rule's closed-form backward (``compose.Composed``) is one compiled
kernel too, where no graph of the backward itself is recorded (a double backward runs it eagerly).

A kernel is the rule's composition traced to an aten graph (``make_fx``) for one set of input shapes and strides,
and compiled by ``torch._inductor.compile``: no dynamo frame and no guards on its call, since its key (the shapes,
strides, dtype and device of its inputs) already says where it is valid. A call then costs the kernel and little
more, where through ``torch.compile`` each call went through dynamo's cache lookup and guards, which cost the deep
EBM's Taylor pass at the Figure-2 batch more than the kernels saved (``results/cpu/taylor``). One kernel per (φ, K,
input shapes and strides, dtype, device, backend, options), kept for the process: the first call of each pays its
compile (seconds on a CPU, so a new batch size costs one; inductor keeps its kernels on disk). A φ whose
coefficient function cannot be told apart by value (a closure over an unhashable object) runs eagerly, as outside
``fused_rules()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

Composition = Callable[..., Tensor]  # (z, [grad,] *, coefficients) -> φ(z(t)) or its backward

BACKENDS = ("inductor", "eager")
CUDAGRAPH_OPTION = "triton.cudagraphs"


@dataclass(frozen=True)
class Settings:
    """How the kernels of a ``fused_rules()`` block are made: ``backend`` ``inductor`` (compiled) or ``eager`` (the
    traced graph run as it is: the same kernels' boundaries, without a compiler, for tests) and inductor's
    ``options`` (``torch._inductor.config`` names) as sorted (name, value) pairs."""

    backend: str
    options: tuple[tuple[str, object], ...]

    @property
    def key(self) -> tuple[str, str]:
        """What these settings add to a kernel's key; the options by their repr, as a value may be a dict."""
        return self.backend, repr(self.options)


_SETTINGS: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("fused_rules", default=None)
_KERNELS: dict[tuple, Callable[..., Tensor]] = {}


@contextlib.contextmanager
def fused_rules(*, backend: str = "inductor", options: dict | None = None) -> Iterator[None]:
    """Within it, the elementwise rules of Taylor mode compose by one compiled kernel each: compiled by TorchInductor
    with ``options`` (``torch._inductor.config`` names, e.g. ``{"layout_optimization": False}``), or with
    ``backend="eager"`` run as traced.

    >>> with fused_rules(backend="eager"):
    ...     enabled()
    True
    """
    if backend not in BACKENDS:
        raise ValueError(f"fused_rules(backend={backend!r}): expected one of {', '.join(BACKENDS)}")
    options = dict(options or {})
    if options.get(CUDAGRAPH_OPTION):
        raise ValueError(f"fused_rules(options={{{CUDAGRAPH_OPTION!r}: ...}}): CUDA graphs hand out outputs that their "
                         "next replay overwrites, and one kernel serves every layer of its shape, whose outputs are "
                         "all still read; leave them off")
    token = _SETTINGS.set(Settings(backend, tuple(sorted(options.items()))))
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def enabled() -> bool:
    """Whether the rules run within ``fused_rules()``."""
    return _SETTINGS.get() is not None


def settings() -> Settings | None:
    """The settings of the enclosing ``fused_rules()``; None outside one. A rule's backward runs where
    ``backward()`` is called, perhaps outside the block: its forward keeps these for it."""
    return _SETTINGS.get()


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
        if coefficients.__closure__ is coefficients.__defaults__ is coefficients.__kwdefaults__ is None:
            return (), (coefficients.__module__, coefficients.__code__, ())  # the common case, without the loop
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


def kernel(composition: Composition, coefficients: Callable, *inputs: Tensor, settings: Settings | None = None
           ) -> Callable[..., Tensor] | None:
    """The compiled ``composition(*inputs, coefficients=coefficients)`` for inputs with these shapes and strides,
    made on first use with ``settings`` (default: the enclosing ``fused_rules()``'s); None where ``coefficients``
    has no value key (it then runs eagerly)."""
    value = _value_key(coefficients)
    if value is None:
        return None
    settings = _SETTINGS.get() if settings is None else settings
    key = (composition, value, settings.key, *((t.shape, t.stride(), t.dtype, t.device) for t in inputs))
    if key not in _KERNELS:  # the first function of this key stands for all: equal by value
        _KERNELS[key] = _compile(functools.partial(composition, coefficients=coefficients), inputs, settings)
    return _KERNELS[key]


def _compile(function: Callable[..., Tensor], inputs: tuple[Tensor, ...], settings: Settings
             ) -> Callable[..., Tensor]:
    """``function`` traced on ``inputs`` to an aten graph and compiled by inductor unless the backend is ``eager``,
    both without autograd recording (a rule's forward and backward run without it)."""
    with torch.no_grad():
        graph = make_fx(function)(*inputs)
        if settings.backend == "eager":
            return graph
        from torch._inductor import compile as inductor_compile  # the compiler, loaded only where a kernel is made

        return inductor_compile(graph, list(inputs), options=dict(settings.options))


def kernels() -> int:
    """How many kernels have been made (one per φ, K, input shapes and strides, dtype, device and settings)."""
    return len(_KERNELS)
