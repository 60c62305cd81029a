"""The compiled evaluations of ``fdsm.compiled``: the flat graph of a Taylor pass, the refusals, and the bench's
``--compiled`` rows.

CI keeps ``torch.compile`` out (its compiles take seconds to a minute each on 2 cores): what it runs here is the
flat graph that ``torch.compile`` is given, without compiling it, and every refusal. The compiled numbers
themselves are checked where they are measured, against the float64 reference, in every ``+compiled`` row of a
``fdsm-bench derivatives --compiled`` run; ``FDSM_COMPILE_TESTS=1`` also runs them here.
"""

from __future__ import annotations

import functools
import math
import os
import types

import pytest
import torch
import torch.nn.functional as F

from bench.config import Shared
from bench.derivative_case import measure_derivative
from bench.experiments import derivatives
from bench.plots import METHOD_STYLE, style
from fdsm import central_stencil, directional_derivative
from fdsm.compiled import COMPILABLE, compiled_derivative, why_not
from fdsm.taylor import fused, series
from fdsm.taylor.compose import Composed, _rows, compose, fusable, horner, horner_rows
from fdsm.taylor.propagate import taylor_graph
from fdsm.taylor.rules.elementwise import _softplus_coefficients
from tests.test_taylor import family, rand, uniform

F64 = torch.float64
compiles = pytest.mark.skipif(os.environ.get("FDSM_COMPILE_TESTS") != "1",
                              reason="torch.compile is kept out of CI; FDSM_COMPILE_TESTS=1 runs it")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def deep_ebm():
    model = family("deep-ebm", n_chan=2)
    return model, uniform(2, 1, 32, 32, seed=1), rand(2, 1, 32, 32, seed=2, scale=0.1)


@pytest.mark.parametrize("order", [1, 3])
def test_the_flat_graph_of_a_taylor_pass_is_the_pass(order):
    model, x, v = deep_ebm()
    graph, leaves = taylor_graph(model.log_density, x, v, order)
    expected = directional_derivative(model.log_density, x, v, order, method="exact-taylor")
    torch.testing.assert_close(graph(x, v, *leaves)[order], expected, rtol=1e-12, atol=0)
    ops = {node.target for node in graph.graph.nodes if node.op == "call_function"}
    assert all(isinstance(op, torch._ops.OpOverload) for op in ops), ops  # aten ops only: the rules are inlined
    assert taylor_graph(model.log_density, x, v, order)[0] is graph  # made once per trace and order


def test_the_flat_graph_takes_the_current_parameters():
    model, x, v = deep_ebm()
    graph, leaves = taylor_graph(model.log_density, x, v, 2)
    before = graph(x, v, *leaves)[2]
    with torch.no_grad():
        model.stem.weight.mul_(1.5)
    graph_again, leaves = taylor_graph(model.log_density, x, v, 2)
    after = graph_again(x, v, *leaves)[2]
    assert graph_again is graph and not torch.allclose(before, after)
    torch.testing.assert_close(after, directional_derivative(model.log_density, x, v, 2, method="exact-taylor"),
                               rtol=1e-12, atol=0)


def test_an_elementwise_rule_composes_without_its_autograd_node_only_where_no_gradient_is_recorded():
    z = rand(4, 3, seed=3, dtype=F64).requires_grad_()
    coefficients = lambda z0, k: [torch.tanh(z0), *[z0 * 0 + 1.0 / (m + 1) for m in range(k)]]  # noqa: E731
    recorded = compose(z, coefficients)
    with torch.no_grad():
        plain = compose(z, coefficients)
    assert type(recorded.grad_fn).__name__ == Composed.__name__ + "Backward" and plain.grad_fn is None
    torch.testing.assert_close(plain, recorded.detach(), rtol=0, atol=0)
    assert series.degree(plain) == 3


def test_a_rule_s_autograd_node_takes_torch_func_transforms_and_a_double_backward():
    """``Composed.apply`` skips ``Function.apply``'s argument binding outside a torch.func transform only."""
    z = rand(4, 3, seed=3, dtype=F64)
    coefficients = functools.partial(_softplus_coefficients, beta=1.0, threshold=20.0)
    by_func = torch.func.grad(lambda z: compose(z, coefficients).pow(2).sum())(z)
    leaf = z.clone().requires_grad_()
    (by_autograd,) = torch.autograd.grad(compose(leaf, coefficients).pow(2).sum(), leaf, create_graph=True)
    torch.testing.assert_close(by_func, by_autograd.detach(), rtol=1e-14, atol=0)
    reference = z.clone().requires_grad_()
    (expected,) = torch.autograd.grad(horner(coefficients(reference[0], 3), reference).pow(2).sum(), reference,
                                      create_graph=True)
    torch.testing.assert_close(by_autograd, expected, rtol=1e-12, atol=1e-14)
    second, second_expected = (torch.autograd.grad(g.sum(), x)[0] for g, x in ((by_autograd, leaf),
                                                                               (expected, reference)))
    torch.testing.assert_close(second, second_expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("order", range(1, 8))
def test_the_row_form_a_compiler_fuses_is_horner_s_sum(order):
    z, c = rand(order + 1, 5, seed=order), rand(order + 1, 5, seed=order + 10)
    torch.testing.assert_close(horner_rows(list(c), z), horner(list(c), z), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("order", [1, 4, 7])
def test_every_elementwise_rule_s_coefficients_in_row_form_are_its_eager_ones(order):
    """Within ``fusable()`` (the flat graph, the fused kernels) the coefficient functions make one expression per
    coefficient instead of a stacked table product: the same numbers."""
    from fdsm.taylor.rules import RULES, Elementwise
    from fdsm.taylor.rules.elementwise import _shifted

    z0 = uniform(2, 5, seed=order, dtype=F64) + 0.5  # inside the domain of log, sqrt and the powers
    rules = {name: RULES.get(name) for name in RULES.names() if isinstance(RULES.get(name), Elementwise)}
    assert {"aten.softplus", "aten.elu", "aten.tanh", "aten.exp", "aten.log2", "aten.sin"} <= set(rules)
    keywords = {"aten.softplus": (2.0, 20.0), "aten.elu": (0.5, 1.5, 0.7)}  # beyond the defaults
    shifts = {"aten.asin": -1.0, "aten.acos": -1.0, "aten.atanh": -1.0, "aten.erfinv": -1.0, "aten.acosh": 0.6,
              "aten.special_ndtri": -0.5}
    for name, rule in rules.items():
        coefficients = rule.coefficients if rule.keywords is None else functools.partial(
            rule.coefficients, **rule.keywords(*keywords.get(name, ())))
        if name == "aten.sigmoid":  # and a shift folded into a rule
            coefficients = functools.partial(_shifted, coefficients=coefficients, shift=-0.75)
        at = z0 + shifts.get(name, 0.0)  # inside asin's, acosh's, ... domain
        eager = list(coefficients(at, order))
        with fusable():
            rows = coefficients(at, order)
        assert isinstance(rows, list) and len(rows) == len(eager) == order + 1, name
        for m, (row, expected) in enumerate(zip(rows, eager, strict=True)):
            torch.testing.assert_close(row, expected, rtol=1e-14, atol=1e-14, msg=f"{name}: c_{m}")


@pytest.mark.parametrize("method, reason", [
    ("exact-reverse", "does not take the double backward"),
    ("fd-streams", "threads or CUDA streams"),
    ("fd-fused", "already fused"),
])
def test_a_method_with_no_compiled_form_is_refused_with_its_reason(method, reason):
    assert reason in why_not(method)
    with pytest.raises(ValueError, match=f"method '{method}' is not compiled here: .*{reason}"):
        compiled_derivative(lambda x: x.sum(1), 2, method=method)


def test_compiled_derivative_checks_its_arguments_before_compiling():
    with pytest.raises(ValueError, match="expected one of"):
        why_not("fd-magic")
    with pytest.raises(ValueError, match="order"):
        compiled_derivative(lambda x: x.sum(1), 0, method="fd-batched")
    with pytest.raises(ValueError, match="a stencil of order 2"):
        compiled_derivative(lambda x: x.sum(1), 2, method="fd-batched", stencil=central_stencil(3))
    call = compiled_derivative(lambda x: x.sum(1), 2, method="exact-taylor")  # nothing compiles until a call
    with pytest.raises(ValueError, match="expected v of the same shape"):
        call(torch.zeros(2, 3), torch.zeros(2, 4))
    assert set(COMPILABLE) == {"exact-taylor", "fd-serial", "fd-batched"}
    with pytest.raises(TypeError, match="expected f to be callable, got str"):
        compiled_derivative("f", 2)


@pytest.mark.parametrize("method", ["exact-taylor", "fd-batched"])
@pytest.mark.parametrize("f, error, match", [
    (lambda x: x.sum(), ValueError, r"expected f to map a batch of \d+ to shape .*, got \(\)"),
    (lambda x: x.sum(1).repeat(2), ValueError, r"expected f to map a batch of \d+ to shape"),
    (lambda x: x.sum(1).long(), TypeError, "expected f to return a floating-point tensor, got torch.int64"),
])
def test_a_compiled_derivative_checks_what_f_returns(f, error, match, method):
    x = torch.ones(4, 3, dtype=torch.float64)
    with pytest.raises(error, match=r"compiled_derivative\(f, order\): " + match):
        compiled_derivative(f, 2, method=method, backend="eager")(x, x)


@compiles
@pytest.mark.parametrize("method", COMPILABLE)
def test_a_compiled_derivative_equals_the_eager_one_in_float64(method):
    model, x, v = deep_ebm()
    got = compiled_derivative(model.log_density, 3, method=method)(x, v)
    expected = directional_derivative(model.log_density, x, v, 3, method=method)
    assert not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-6 if method.startswith("fd-") else 1e-10, atol=0)


@compiles
def test_compile_options_that_hold_a_dict_are_taken():
    f = lambda x: torch.nn.functional.softplus(x).sum(1)  # noqa: E731
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    got = compiled_derivative(f, 2, method="exact-taylor", options={"layout_optimization": False})(x, v)
    torch.testing.assert_close(got, directional_derivative(f, x, v, 2, method="exact-taylor").detach(), rtol=1e-12,
                               atol=0)


def test_compiled_rows_are_twins_of_the_eager_ones_and_a_method_with_no_compiled_form_says_why():
    config = derivatives.DerivativesConfig(methods=("exact-taylor", "exact-reverse"), orders=(2,), compiled=True,
                                           n_chan=2, batch=1)
    rows = derivatives.cases(config, Shared(device=torch.device("cpu")))
    assert [r["method"] for r in rows] == ["exact-taylor", "exact-taylor+fused", "exact-taylor+compiled",
                                           "exact-reverse", "exact-reverse+compiled"]
    for twin in rows[1:3]:
        assert {k: v for k, v in twin.items() if k != "method"} == {k: v for k, v in rows[0].items() if k != "method"}
    skipped = measure_derivative(rows[4])
    assert skipped["status"] == "unsupported" and "does not take the double backward" in skipped["message"]


def test_a_compiled_line_is_drawn_in_its_method_s_colour_dotted_and_hollow_and_a_fused_one_dashed():
    line = style("fd-batched+compiled", METHOD_STYLE)
    assert line["color"] == METHOD_STYLE["fd-batched"]["color"] and line["linestyle"] == ":"
    assert line["markerfacecolor"] == "none" and style("fd-batched", METHOD_STYLE) == METHOD_STYLE["fd-batched"]
    fused = style("exact-taylor+fused", METHOD_STYLE)
    assert fused["color"] == METHOD_STYLE["exact-taylor"]["color"] and fused["linestyle"] == "--"


def test_a_fused_row_of_a_method_other_than_taylor_mode_says_why_not():
    case = {"method": "fd-batched+fused"}
    skipped = measure_derivative(case)
    assert skipped["status"] == "unsupported" and "only exact-taylor" in skipped["message"]


# ---- fused rules (fdsm.taylor.fused): dynamo's eager backend in CI, inductor with FDSM_COMPILE_TESTS=1 ----------

def parameter_gradient(model, x, v, order):
    d = directional_derivative(model.log_density, x, v, order, method="exact-taylor")
    return d, torch.cat([g.flatten() for g in torch.autograd.grad(d.sum(), list(model.parameters()))])


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=compiles)])
def test_fused_rules_give_taylor_mode_s_values_and_parameter_gradients(backend, monkeypatch):
    monkeypatch.setattr(fused, "_KERNELS", {})  # count this test's kernels only
    model = family("mlp-ebm", hidden=(6, 6))
    x, v = rand(3, 2, seed=1), rand(3, 2, seed=2)
    d, grad = parameter_gradient(model, x, v, 3)
    with fused.fused_rules(backend=backend):
        d_fused, grad_fused = parameter_gradient(model, x, v, 3)
        assert fused.kernels() == 2  # one activation kind, order and shape (both layers): its forward and backward
        parameter_gradient(model, rand(3, 2, seed=3), rand(3, 2, seed=4), 3)  # new values, same shapes: no new one
        assert fused.kernels() == 2
        parameter_gradient(model, rand(5, 2, seed=3), rand(5, 2, seed=4), 3)  # a new batch size: its own kernels
        assert fused.kernels() == 4
    torch.testing.assert_close(d_fused, d, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_fused, grad, rtol=1e-12, atol=0)


def test_a_coefficient_function_is_told_apart_by_value():
    from fdsm.taylor.rules.elementwise import _power_coefficients

    def power(p):
        return lambda z0, k: _power_coefficients(z0, k, p)

    assert fused._value_key(power(1.5)) == fused._value_key(power(1.5)) != fused._value_key(power(2.5))
    assert fused._value_key(functools.partial(max, 1)) is None  # a builtin: no code to key it by
    unhashable = [1.0]
    assert fused._value_key(lambda z0, k: z0 * unhashable[0]) is None  # runs eagerly
    scale = torch.tensor(2.0)
    assert fused._value_key(lambda z0, k: z0 * scale) is None  # a tensor: a new one per call would compile anew
    assert fused._value_key(lambda z0, k, s=(scale,): z0) is None  # inside a tuple too

    def keyword(z0, k, *, rate=1.0):
        return z0 * rate

    other = types.FunctionType(keyword.__code__, keyword.__globals__)
    other.__kwdefaults__ = {"rate": 2.0}
    assert fused._value_key(keyword) != fused._value_key(other)  # same code, other keyword default


def test_fused_rules_key_kernels_by_their_options_and_refuse_cuda_graphs_and_unknown_backends(monkeypatch):
    monkeypatch.setattr(fused, "_KERNELS", {})
    z = rand(3, 4, seed=1)
    coefficients = lambda z0, k: [z0] * (k + 1)  # noqa: E731
    for options in ({"layout_optimization": False}, {"layout_optimization": True}, {"layout_optimization": False},
                    {"post_grad_fusion_options": {}}):  # a value that is a dict: keyed by its repr
        with fused.fused_rules(backend="eager", options=options):
            torch.testing.assert_close(fused.kernel(_rows, coefficients, z)(z), _rows(z, coefficients=coefficients))
    assert fused.kernels() == 3  # one per set of options
    with pytest.raises(ValueError, match="triton.cudagraphs.*CUDA graphs"):
        with fused.fused_rules(options={"triton.cudagraphs": True}):
            pass
    with pytest.raises(ValueError, match="backend='aot_eager'.*inductor, eager"):
        with fused.fused_rules(backend="aot_eager"):
            pass


def test_a_shift_after_a_rule_that_passes_its_jet_through_leaves_the_activation_for_its_other_reader():
    """t() of a 1-d value is the value itself: the shift is the only user of t's node, not of the softplus node
    that its jet came from, which the product still reads."""
    f = lambda x: ((F.softplus(x.sum(-1)).t() - math.log(2.0)) * F.softplus(x.sum(-1)))  # noqa: E731
    g = lambda x: (lambda h: (h.t() - math.log(2.0)) * h)(F.softplus(x.sum(-1)))  # noqa: E731
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    for fn in (f, g):
        with torch.no_grad():
            got = directional_derivative(fn, x, v, 2, method="exact-taylor")
        torch.testing.assert_close(got, directional_derivative(fn, x, v, 2, method="exact-reverse").detach(),
                                   rtol=1e-12, atol=1e-12)


def test_a_shift_after_a_user_rule_that_returns_its_jet_unchanged_is_not_folded_into_the_activation(monkeypatch):
    """The plan folds a constant shift only into an elementwise rule's own value: after a user's rule that returns
    its jet as it is, the shift leaves the activation, which the product reads again, as it was."""
    from fdsm.taylor import RULES, clear_cache, register_rule

    monkeypatch.setattr(RULES, "_entries", dict(RULES._entries))  # registration is global: undone after the test
    del RULES._entries[str(torch.ops.aten.abs)]
    register_rule(torch.ops.aten.abs.default, lambda z: z)  # right where the values stay positive, as here
    clear_cache()
    f = lambda x: (lambda h: (h.abs() - math.log(2.0)) * h)(F.softplus(x.sum(-1)))  # noqa: E731
    x, v = rand(3, 4, seed=1), rand(3, 4, seed=2)
    with torch.no_grad():
        got = directional_derivative(f, x, v, 2, method="exact-taylor")
    torch.testing.assert_close(got, directional_derivative(f, x, v, 2, method="exact-reverse").detach(),
                               rtol=1e-12, atol=1e-12)
    clear_cache()


def test_every_compiled_fd_function_has_a_code_object_of_its_own():
    """Dynamo stops compiling a code object after 8 entries and runs the rest eagerly: a sweep of orders and
    shapes through one shared function would time eager FD under a compiled name."""
    from fdsm.compiled import _fd_pass
    from fdsm.own_code import own_code

    first, second = own_code(_fd_pass, order=1), own_code(_fd_pass, order=2)
    assert first.__code__ is not second.__code__ and first.__code__ is not _fd_pass.__code__
    assert first.__kwdefaults__ == {"order": 1} and second.__kwdefaults__ == {"order": 2}


@compiles
def test_more_compiled_fd_functions_than_dynamo_s_recompile_limit_all_compile():
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    f = lambda x: torch.nn.functional.softplus(x).sum(1)  # noqa: E731
    for order in range(1, 7):
        for batch in (3, 5):
            compiled_derivative(f, order, method="fd-batched", backend="eager")(
                torch.randn(batch, 4, dtype=F64), 0.1 * torch.randn(batch, 4, dtype=F64))
    assert counters["stats"]["unique_graphs"] - before == 12
