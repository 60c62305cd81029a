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


def rule_key(op: object) -> str:
    """The table's key for an op: ``aten.add.Tensor`` for one overload, ``aten.add`` for all of them."""
    if isinstance(op, str):
        return op
    if isinstance(op, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(op)
    raise TypeError(f"register_rule(op, rule): expected an aten op (e.g. torch.ops.aten.exp.default) or its "
                    f"name, got {type(op).__name__}")


def register_rule(op: object, rule: Rule, *, replace: bool = False) -> Rule:
    """Register ``rule`` for ``op``: an ``OpOverload`` (one overload), an ``OpOverloadPacket`` (every overload) or
    the name of either. The rule takes the op's arguments, with a ``Jet`` for each that depends on x. An op that has
    a rule already is a ValueError, unless ``replace=True``: the new rule then serves every later call (the traced
    graphs, whose plans hold the old one, are forgotten). Returns the rule."""
    key = rule_key(op)
    if (key in RULES or not isinstance(op, str) and rule_for(op) is not None) and not replace:
        raise ValueError(f"register_rule: {key} has a Taylor rule already; pass replace=True to replace it")
    if replace:
        clear_cache()
    return RULES.register(key, rule, replace=replace)


def rule_for(op: object) -> Rule | None:
    """The rule of an op: its overload's own, else its packet's; None when there is none."""
    for key in (str(op), str(getattr(op, "overloadpacket", op))):
        if key in RULES:
            return RULES.get(key)
    return None


def _register_all(ops: Sequence[object], rule: Rule) -> None:
    for op in ops:
        register_rule(op, rule)
