r"""The table of Taylor rules: one rule per aten op (or per op packet, for all its overloads), and its lookup.

``register_rule(op, rule)`` is how the built-in families of ``fdsm.taylor.rules`` and a user's own rules enter it,
``rule_for(op)`` how the pass (``fdsm.taylor.propagate``) finds them: an overload's own rule, else its
packet's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fdsm.registry import Registry
from fdsm.taylor.trace import clear_cache

Rule = Callable[..., object]

RULES: Registry[Rule] = Registry("Taylor rule")
COMPLEX_SAFE: dict[str, Rule] = {}  # key -> the rule declared right for complex values too (``takes_complex``)


def rule_key(op: object) -> str:
    """The table's key for an op: ``aten.add.Tensor`` for one overload, ``aten.add`` for all of them."""
    if isinstance(op, str):
        return op
    if isinstance(op, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(op)
    raise TypeError(f"register_rule(op, rule): expected an aten op (e.g. torch.ops.aten.exp.default) or its "
                    f"name, got {type(op).__name__}")


def register_rule(op: object, rule: Rule, *, replace: bool = False, complex_safe: bool = False) -> Rule:
    """Register ``rule`` for ``op``: an ``OpOverload`` (one overload), an ``OpOverloadPacket`` (every overload) or
    the name of either. The rule takes the op's arguments, with a ``Jet`` for each that depends on x. An op that has
    a rule already is a ValueError, unless ``replace=True``: the new rule then serves every later call (the traced
    graphs, whose plans hold the old one, are forgotten). ``complex_safe=True`` declares the rule right for complex
    values too (``takes_complex``); without it, a node of complex dtype that depends on x is refused rather than
    given to it. Returns the rule."""
    key = rule_key(op)
    if (key in RULES or not isinstance(op, str) and rule_for(op) is not None) and not replace:
        raise ValueError(f"register_rule: {key} has a Taylor rule already; pass replace=True to replace it")
    if replace:
        clear_cache()
    if complex_safe:
        COMPLEX_SAFE[key] = rule
    return RULES.register(key, rule, replace=replace)


def _key_for(op: object) -> str | None:
    """The table's key that holds the rule of an op: its overload's, else its packet's; None when neither does."""
    return next((key for key in (str(op), str(getattr(op, "overloadpacket", op))) if key in RULES), None)


def rule_for(op: object) -> Rule | None:
    """The rule of an op: its overload's own, else its packet's; None when there is none."""
    key = _key_for(op)
    return None if key is None else RULES.get(key)


def takes_complex(op: object) -> bool:
    """Whether the rule an op has now was declared right for complex values (``register_rule(...,
    complex_safe=True)``, or ``allow_complex``): a rule written for real values may take a branch, a sign or a
    derivative formula that is wrong for a complex one, silently. The declaration holds for that rule object, so a
    rule that replaces it is not declared until it says so itself."""
    key = _key_for(op)
    return key is not None and COMPLEX_SAFE.get(key) is RULES.get(key)


def allow_complex(ops: Sequence[object]) -> None:
    """Declare the registered rules of ``ops`` right for complex values too (``fdsm.taylor.rules.complex_values``
    lists them, each checked against nested reverse mode in the tests)."""
    for op in ops:
        if (key := _key_for(op)) is None:
            raise ValueError(f"allow_complex: {op} has no Taylor rule")
        COMPLEX_SAFE[key] = RULES.get(key)


def _register_all(ops: Sequence[object], rule: Rule, *, complex_safe: bool = False) -> None:
    for op in ops:
        register_rule(op, rule, complex_safe=complex_safe)
