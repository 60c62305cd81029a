r"""Directional derivatives under ``torch.compile``: Taylor mode and the FD stencils as fused graphs, for evaluation.

Eager Taylor mode on a small batch is bound by kernel launches, not arithmetic: each elementwise rule is O(T^2)
small ops on the coefficient stack (``fdsm.taylor.compose``), where FD's is one op on the stacked points. A
compiler fuses those ops into a few kernels, and FD's too. So the fair question, "compiled Taylor mode against
compiled FD", needs both compiled the same way:

- ``exact-taylor``: the whole pass as one flat aten graph (``fdsm.taylor.propagate.taylor_graph``: every rule
  inlined, in the row form a compiler fuses; f's parameters and closed-over tensors graph inputs), given to
  ``torch.compile``;
- ``fd-serial`` and ``fd-batched``: the method itself under ``torch.compile`` (dynamo traces the stencil's
  inputs, the forwards and the weighted sum).

Both run under ``torch.no_grad``: the result carries no autograd graph. It is an evaluation (Figure 2's question),
not a training step.

Not compiled here, each for its reason (``why_not(method)``): nested reverse mode needs a double backward, which
``torch.compile`` does not take (``create_graph=True`` through AOTAutograd; pytorch#181581); nested
``torch.func.jvp`` (``exact-forward``) has not been tried; ``fd-streams`` runs its points on threads or CUDA
streams; ``fd-fused`` is already fused by its own Triton kernels; ``fd-distributed`` all-reduces across processes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from fdsm import derivatives
from fdsm.derivatives import METHODS
from fdsm.own_code import own_code
from fdsm.stencils import Stencil, check_order
from fdsm.taylor.propagate import taylor_graph

COMPILABLE = ("exact-taylor", "fd-serial", "fd-batched")

# Dynamo traces through the functools.lru_cache of kernels.constants.constant (the stencil weights as a tensor) and
# warns that it does. That function is pure, a tensor made from its arguments alone, so nothing can go stale:
# this one warning, from this call site, is not shown.
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`-wrapped function at "
                        "'fd.py", category=UserWarning)
_WHY_NOT = {
    "exact-reverse": "torch.compile does not take the double backward of nested reverse mode (create_graph=True "
                     "through AOTAutograd, pytorch#181581)",
    "exact-forward": "T nested torch.func.jvp transforms under torch.compile have not been tried here",
    "fd-streams": "its stencil points run on threads or CUDA streams, which one compiled graph does not express",
    "fd-fused": "it is already fused, by its own Triton kernels",
    "fd-distributed": "it all-reduces its partial sums across processes",
}


def why_not(method: str) -> str | None:
    """Why ``method`` has no compiled form here, or None when it has one (``COMPILABLE``)."""
    if method in COMPILABLE:
        return None
    METHODS.entry(method)  # an unknown name: the registry's ValueError, listing the names
    return _WHY_NOT[method]


def compiled_derivative(f: Callable[[Tensor], Tensor], order: int, *, method: str = "fd-batched",
                        stencil: Stencil | None = None, **compile_options) -> Callable[[Tensor, Tensor], Tensor]:
    r"""A function ``(x, v) -> D^T_v f(x)`` that computes ``directional_derivative(f, x, v, order, method=method,
    stencil=stencil)`` under ``torch.compile`` and ``torch.no_grad``.

    The first call with new shapes compiles (seconds to a minute on a CPU); later calls reuse it. For
    ``exact-taylor`` each call looks up f's trace (``fdsm.taylor.trace``, so the values of its parameters are the
    current ones) and runs the compiled flat graph of the pass. ``compile_options`` go to ``torch.compile``
    (``mode``, ``backend``, ...).

    >>> why_not("exact-reverse").startswith("torch.compile does not take the double backward")
    True
    """
    who = "compiled_derivative(f, order)"
    if (reason := why_not(method)) is not None:
        raise ValueError(f"{who}: method {method!r} is not compiled here: {reason}; compiled methods: "
                         f"{', '.join(COMPILABLE)}")
    order = check_order(order, who)
    if not callable(f):
        raise TypeError(f"{who}: expected f to be callable, got {type(f).__name__}")
    f = derivatives._checked(f, None, who)  # its output's shape and dtype, checked in the trace
    points = derivatives._check_stencil(stencil, order, method, who)  # the central stencil by default (FD)
    run = _compiled_taylor(f, order, compile_options) if method == "exact-taylor" else torch.compile(
        own_code(_fd_pass, f=f, method=method, order=order, stencil=points), **compile_options)

    def call(x: Tensor, v: Tensor) -> Tensor:
        derivatives._check_inputs(f, x, v, who)
        with torch.no_grad():
            return run(x, v)

    return call


def _fd_pass(x: Tensor, v: Tensor, *, f: Callable[[Tensor], Tensor], method: str, order: int,
             stencil: Stencil) -> Tensor:
    return METHODS.get(method)(f, x, v, order, stencil=stencil)


def _compiled_taylor(f: Callable[[Tensor], Tensor], order: int, compile_options: dict
                     ) -> Callable[[Tensor, Tensor], Tensor]:
    """D^T from the compiled flat graph of the pass, compiled once per traced f and order."""
    key = ("compiled", order, repr(sorted(compile_options.items())))  # repr: an options dict is unhashable

    def run(x: Tensor, v: Tensor) -> Tensor:
        graph, leaves = taylor_graph(f, x, v, order)
        if key not in graph.meta:
            graph.meta[key] = torch.compile(graph, **compile_options)
        return graph.meta[key](x, v, *leaves)[order]

    return run
