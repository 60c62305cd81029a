r"""The forward pass of the jets: f's traced graph, run with one Taylor rule per aten op.

.. math::
    x(t) = x + t v \;\longmapsto\; y(t) = f(x(t)) = \sum_{k=0}^{T} y_k t^k + O(t^{T+1}), \qquad
    D^k_v f(x) = \frac{d^k}{dt^k} f(x + t v)\Big|_{t=0} = k!\, y_k \quad\text{(paper eq. 4)}.

The input series is :math:`x_0 = x, x_1 = v, x_k = 0` for k >= 2. Each node whose arguments include a Jet goes
through its rule (``fdsm.taylor.rules``); a node that does not depend on x runs as it is. The pass is the graph itself
as Python code (``_program``), each value freed after its last use, so the jets of the whole graph are never held at
once.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor, fx
from torch.fx.experimental.proxy_tensor import make_fx

from fdsm.registry import NotSupported
from fdsm.stencils import check_order
from fdsm.taylor import compose, series
from fdsm.taylor.jet import Jet, jets_in
from fdsm.taylor.rules import Elementwise, rule_for, takes_complex
from fdsm.taylor.trace import INSTEAD, TRACING, traced

aten = torch.ops.aten


def _no_rule(node: fx.Node, *, complex_value: bool = False) -> NotSupported:
    """The refusal of a node that depends on x: its op has no rule, or (``complex_value``) a rule written for real
    values only, where the node takes or returns a complex value."""
    op = node.target
    if complex_value:
        what = (f"the Taylor rule of the aten op {op} (node {node.name!r}) is written for real values, and here it "
                f"meets a complex value that depends on x; where the rule is right for complex values too, register "
                f"it with fdsm.taylor.register_rule(torch.ops.{op}, rule, replace=True, complex_safe=True)")
    else:
        what = (f"no Taylor rule for the aten op {op} (node {node.name!r}, applied to a value that depends on x); "
                f"register one with fdsm.taylor.register_rule(torch.ops.{op}, rule), where rule takes the op's "
                f"arguments with a fdsm.taylor.Jet for each that depends on x")
    return NotSupported(f"exact-taylor: {what}, {INSTEAD}")


# Ops that the trace records for an in-place write under torch.no_grad, which reads its target through a detach:
# for a target that depends on x, autograd differentiates the value as if unwritten, the trace as a constant (every
# derivative zero), and neither is the derivative of f. Refused by name where x reaches their target (their first
# argument; indices computed from x are constants).
WRITTEN_UNDER_NO_GRAD = {
    aten.embedding_renorm.default: "F.embedding's max_norm renormalizes the rows of its table in place under "
                                   "torch.no_grad",
}


def _written_under_no_grad(node: fx.Node) -> NotSupported:
    return NotSupported(f"exact-taylor: {WRITTEN_UNDER_NO_GRAD[node.target]} (aten op {node.target}, node "
                        f"{node.name!r}), here a value that depends on x, which the trace would take for a constant "
                        f"(every derivative zero); pass a table that does not depend on x, or renormalize it out of "
                        f"place, {INSTEAD}")


def _write_back(destination: Tensor, source: Tensor, non_blocking: bool = False) -> Tensor:
    """functionalize's write-back of a value that does not depend on x into a tensor f closes over, which the graph's
    result reads after the write (a buffer f updates and uses, a value computed from a parameter), as f's own write.
    Into a leaf that requires grad (a parameter) f can only have written under torch.no_grad, since autograd refuses
    it otherwise, and autograd then takes the written tensor for the parameter itself, with its gradient; the
    graph's later ops read the written value, which has another gradient or none: refused."""
    if destination.requires_grad and destination.is_leaf:
        raise NotSupported("exact-taylor: f writes in place, under torch.no_grad, into a tensor that requires grad (a "
                           "parameter), and reads it after: autograd takes the written tensor for the parameter "
                           "itself, while the trace's later ops read the written value, with another gradient or none; "
                           f"write it outside f, or compute it out of place, {INSTEAD}")
    return destination.copy_(source, non_blocking=non_blocking)


def _write_back_no_grad(destination: Tensor, source: Tensor, non_blocking: bool = False) -> Tensor:
    """The write-back under torch.no_grad, as f's write into a parameter ran, where the graph's result does not read
    the written value (a batch norm's ``num_batches_tracked``, a teacher's weights that f moves towards a student's),
    or reads it as autograd does (``F.embedding(max_norm=)``'s renormalized table:
    ``fdsm.taylor.trace._renormalized_tables_as_autograd_reads_them``)."""
    with torch.no_grad():
        return destination.copy_(source, non_blocking=non_blocking)


def _ancestors(node: fx.Node, *, users: bool = False) -> set[fx.Node]:
    """The nodes that ``node``'s value is computed from (with ``users``: those computed from it), itself included."""
    seen, todo = {node}, [node]
    while todo:
        current = todo.pop()
        for other in current.users if users else current.all_input_nodes:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def _write_back_of(node: fx.Node, read: set[fx.Node]) -> Callable[..., Tensor] | None:
    """The call of functionalize's write-back into an input of the graph (a ``copy_`` into a placeholder), None for
    any other node. ``read``: the nodes the graph's result is computed from. The written versions of the input are
    the nodes computed from it that the written value is computed from: where the result reads none of them, or they
    pass a renormalization by ``max_norm``, the write runs under torch.no_grad (``_write_back_no_grad``)."""
    if not (node.target is aten.copy_.default and node.args[0].op == "placeholder"):
        return None
    destination, source = node.args[:2]
    versions = _ancestors(source) & _ancestors(destination, users=True) - {destination}
    renormalized = any(n.target is aten.embedding_renorm.default for n in versions)
    return _write_back_no_grad if renormalized or not versions & read else _write_back


def _rule(node: fx.Node) -> Callable[..., object] | None:
    return rule_for(node.target) if node.op == "call_function" else None


_SIGNS = {aten.add.Tensor: 1, aten.add.Scalar: 1, aten.sub.Tensor: -1, aten.sub.Scalar: -1}


def _constant_shift(node: fx.Node, rules: dict[fx.Node, Callable[..., object] | None]) -> float | None:
    """The constant c that ``node`` adds to (or subtracts from) its first argument, where that argument is an
    elementwise rule's value (``Elementwise``) and this node its only reader: the rule can then compose φ + c
    itself. None otherwise."""
    sign = _SIGNS.get(node.target)
    if sign is None or len(node.args) != 2:
        return None
    first, c = node.args
    if not (isinstance(first, fx.Node) and len(first.users) == 1 and isinstance(rules.get(first), Elementwise)
            and isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)):
        return None
    return sign * node.kwargs.get("alpha", 1) * c


def _pass_through(value: object, *args, **kwargs) -> object:
    """The rule of a constant add folded into the rule before it (``_constant_shift``): its value, as it is."""
    return value


def _is_complex(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_is_complex(item) for item in value)
    return isinstance(value, Tensor) and value.is_complex()


def _complex_node(node: fx.Node) -> bool:
    """Whether a node takes or returns a complex tensor: from the values make_fx recorded in each node's meta."""
    return any(_is_complex(n.meta.get("val")) for n in (node, *node.all_input_nodes))


def _has_jet(value: object) -> bool:
    return isinstance(value, Jet) or isinstance(value, (list, tuple)) and any(jets_in(value))


def _dispatch(node: fx.Node, rule: Callable[..., object] | None,
              plain: Callable[..., object] | None = None) -> Callable[..., object]:
    """The call of a node that depends on x: its rule when a Jet reaches it (looked up again where the plan found
    none, so that a rule registered since counts), ``plain`` otherwise (default the op itself: a rule before it may
    have returned a constant, a comparison, a cast to an integer dtype). A node that takes or returns a complex value
    goes only to a rule declared right for complex values (``fdsm.taylor.rules.complex_values``), and is refused
    otherwise."""
    op, complex_values = node.target, _complex_node(node)
    plain = plain or op

    def call(*args, **kwargs):
        if any(_has_jet(a) for a in args) or kwargs and any(_has_jet(a) for a in kwargs.values()):
            if (chosen := rule or rule_for(op)) is None:
                raise _no_rule(node)
            if complex_values and not takes_complex(op):
                raise _no_rule(node, complex_value=True)
            return chosen(*args, **kwargs)
        return plain(*args, **kwargs)

    call.__name__ = f"taylor_{node.name}"
    return call


def _program(graph: fx.GraphModule) -> fx.GraphModule:
    """The pass as Python code, made on the graph's first run and kept in its ``meta``: a copy of the graph in which
    every node that depends on x (a path from x reaches it) calls ``_dispatch`` of its rule, and every other node
    its op as it is, compiled by fx's code generator into straight-line code that frees each value after its last
    use (so the jets of the whole graph are never held at once), with no per-node lookup when it runs. Each
    constant shift of an elementwise rule's value is folded into that rule (the deep EBM's softplus(z) - log 2 is
    one rule)."""
    if "taylor_program" not in graph.meta:
        rules = {node: _rule(node) for node in graph.graph.nodes}
        for node in graph.graph.nodes:
            if (shift := _constant_shift(node, rules)) is not None:
                first = node.args[0]
                rules[first], rules[node] = rules[first].shifted(shift), _pass_through
        code, copies = fx.Graph(), {}
        code.output(code.graph_copy(graph.graph, copies))
        x = next(node for node in graph.graph.nodes if node.op == "placeholder")  # the first: x
        read = _ancestors(next(node for node in graph.graph.nodes if node.op == "output"))
        reached = {x}
        for node in graph.graph.nodes:
            write_back = _write_back_of(node, read)
            if node is not x and any(used in reached for used in node.all_input_nodes):
                reached.add(node)
                if node.target in WRITTEN_UNDER_NO_GRAD and node.args[0] in reached:
                    raise _written_under_no_grad(node)
                if node.op == "call_function" and node.target is not operator.getitem:
                    copies[node].target = _dispatch(node, rules[node], write_back)
            elif write_back:
                copies[node].target = write_back
        graph.meta["taylor_program"] = fx.GraphModule(graph, code)
    return graph.meta["taylor_program"]


def run_jets(graph: fx.GraphModule, inputs: list[object]) -> object:
    """Run ``graph`` on ``inputs`` (a Jet for x, then plain tensors), each node through its rule when a Jet reaches
    it; returns the output value (a Jet, or a plain tensor when the output does not depend on x)."""
    return _program(graph).forward(*inputs)  # not as a module call: no module hook may see a Jet


def _derivatives(graph: fx.GraphModule, x: Tensor, v: Tensor, order: int, leaves: list[Tensor]) -> Tensor:
    """D^0..D^T of the traced f at x along v: (T+1, B) or (T+1, B, k)."""
    x_series = torch.cat([x.unsqueeze(0), v.unsqueeze(0), x.new_zeros((order - 1, *x.shape))])  # (T+1, B, *event)
    out = run_jets(graph, [Jet(x_series), *leaves])
    if not isinstance(out, Jet):  # f does not depend on x: its derivatives are zero
        return series.constant(out, order)
    scale = series.factorials(order, out.dtype, out.series.device)
    return out.series * scale.view(-1, *([1] * out.ndim))  # D^k = k! y_k


def taylor_graph(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, order: int
                 ) -> tuple[fx.GraphModule, list[Tensor]]:
    """The whole Taylor pass as one flat aten graph, ``(x, v, *leaves) -> D^0..D^T``, and f's current leaves:
    ``taylor_coefficients``' computation with every rule inlined, for ``torch.compile`` (``fdsm.compiled``).

    It is ``make_fx`` over the pass, under ``torch.no_grad`` (an evaluation: the elementwise rules compose
    directly, without their autograd node, in the row form a compiler fuses, ``compose.horner_rows``), made once
    per traced f and order and kept in the trace's ``meta``; the leaves stay graph inputs, so new parameter values
    are never stale.
    """
    graph, leaves = traced(f, x)
    key = ("taylor_graph", order)
    if key not in graph.meta:
        with TRACING, torch.no_grad(), compose.fusable():
            graph.meta[key] = make_fx(functools.partial(_flat_pass, graph, order))(x, v, *leaves)
    return graph.meta[key], leaves


def _flat_pass(graph: fx.GraphModule, order: int, x: Tensor, v: Tensor, *leaves: Tensor) -> Tensor:
    return _derivatives(graph, x, v, order, list(leaves))


def taylor_coefficients(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, order: int) -> Tensor:
    r"""Every directional derivative :math:`D^0 f(x), D^1_v f(x), \dots, D^T_v f(x)` from one Taylor-mode pass.

    These are the derivatives themselves, :math:`D^k = \frac{d^k}{dt^k} f(x + t v)|_{t=0}`, *not* the Taylor
    coefficients divided by k!. f is traced once per (code, shapes) to an aten graph (``fdsm.taylor.trace``; the
    tensors it closes over are graph inputs, so new values are never stale) and the T+1 coefficients of x + t v are
    pushed through it, one rule per op.

    Args:
        f: maps (B, *event) to (B,) or (B, k), each sample independently.
        x, v: (B, *event).
        order: T >= 1.

    Returns:
        (T+1, B) or (T+1, B, k): row k is D^k; differentiable in the parameters of f and in x and v, by autograd
        or forward AD, and within ``torch.func``'s transforms (``grad``, ``jacrev``, ``jvp``, ``hessian``, ``vmap``:
        an ensemble's derivatives under ``vmap`` over ``functional_call``'s parameters).

    >>> x = torch.tensor([[1.0, 2.0]], dtype=torch.float64); v = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    >>> taylor_coefficients(lambda x: (x[:, 0] + 3 * x[:, 1]) ** 4, x, v, 4)[:, 0].tolist()  # D^k of s^4, s = 7
    [2401.0, -3430.0, 3675.0, -2625.0, 937.5]
    """
    from fdsm import derivatives  # here: fdsm.derivatives imports this package for its method exact-taylor

    who = "taylor_coefficients(f, x, v, order)"
    order = check_order(order, who)
    derivatives._check_inputs(f, x, v, who)
    return coefficients(derivatives._checked(f, len(x), who), x, v, order)  # f's output checked in the trace


def coefficients(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, order: int) -> Tensor:
    """``taylor_coefficients`` without its checks, for a caller that made its own (the method ``exact-taylor``,
    the objectives' ``method="taylor"``, whose score networks map (B, *event) to (B, *event)): no per-call cost
    beyond the pass."""
    graph, leaves = traced(f, x)
    return _derivatives(graph, x, v, order, leaves)


def exact_taylor(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, order: int, *, stencil=None) -> Tensor:
    """D^T by Taylor mode: the last row of ``taylor_coefficients`` (whose checks ``directional_derivative`` has
    made). The derivative method ``exact-taylor``."""
    return coefficients(f, x, v, order)[order]
