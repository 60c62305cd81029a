"""A function with a code object of its own, for ``torch.compile``."""

from __future__ import annotations

import types
from collections.abc import Callable


def own_code(function: Callable, **keywords) -> Callable:
    """A copy of ``function`` with a code object of its own and ``keywords`` as its keyword defaults.

    Dynamo keeps its compiled entries on the code object and stops compiling one after ``recompile_limit`` (8)
    entries, running the rest eagerly with only a warning: every compiled instance of one shared function (a
    lambda, or a ``functools.partial``, which ``torch.compile`` calls through one wrapper) would share those 8,
    the orders, models and shapes of one sweep.

    >>> def scaled(x, *, factor): return factor * x
    >>> double = own_code(scaled, factor=2)
    >>> double(3), double.__code__ is scaled.__code__
    (6, False)
    """
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__)
    copy.__kwdefaults__ = keywords
    return copy
