r"""One derivative measurement: the T-th directional derivative of a model's log-density, timed, probed, checked.

A *case* is a flat dict (it becomes the key columns of a CSV row):

=========== ==========================================================================================
model       registered model name (``fdsm.models``), e.g. ``deep-ebm``, or a user's ``module:factory`` spec
size        its preset, ``paper`` or ``cpu`` (``user`` for a user's model)
n_chan      the deep EBM's ``n_chan`` (channels after the stem), or None for the preset's (older CSVs: ``width``)
weights     ``random`` (seeded initialization) or the content digest of a state_dict checkpoint
seed        seeds the weights (when random), the points x and the directions
batch       B, the number of points
method      a name in ``fdsm.METHODS``; an FD method with ``+richardson`` evaluates the Richardson stencil of its
            own (``fdsm.fd_error.richardson_stencil``, accuracy p -> p + 2); any method with ``+compiled`` runs
            under ``torch.compile`` and ``torch.no_grad`` (``fdsm.compiled``), its first call timed apart
            (``compile_ms``); ``exact-taylor+fused`` is eager Taylor mode, its graph kept, with each elementwise
            rule one compiled kernel (``fdsm.taylor.fused``), its first call (the compiles) timed apart too
order       T
accuracy    p of ``fdsm.central_stencil(T, p)`` (FD methods; exact methods ignore it)
eps         the step \|v\| (every direction has this norm); with ``eps_source`` ``auto``, the batch median of the
            steps the automatic step chose (``auto_step``), the call itself choosing them again, timed
dtype       ``float32`` | ``float64`` | ``bfloat16`` | ``float16``
device      ``cpu`` | ``cuda`` | ``cuda:N``
baseline    not a key: the FD method this row is to be timed against, alternately in its worker
            (``counterpart``), or empty. A measured row that was paired says so in ``versus`` (the same method),
            with ``time_ratio`` (and ``time_ratio_q1``, ``time_ratio_q3``), the median of the per-round ratios of
            this row's time to that method's: above 1, the baseline is faster; where the baseline could not run
            beside it, the message says why and the row is timed alone
=========== ==========================================================================================

The points x are uniform in [0, 1]^(C x H x W) (the range of the images the deep EBM models); the direction of
sample b is :math:`v_b = \varepsilon\, u_b/\lVert u_b\rVert` with :math:`u_b` Gaussian, so every v lies on the
sphere of radius eps (the paper's :math:`p_\varepsilon(v)`). The reference is an exact method in float64 on a
float64 copy (``fdsm.float64_reference``; NOTE [the reference method]: Taylor mode, or nested reverse mode where
Taylor mode has no rule for an op of f; the ``reference`` column names it), computed once per (problem, T) for the
unit directions and scaled, since :math:`(v^\top\nabla)^T f = \varepsilon^T (u^\top\nabla)^T f` exactly.

``measure_derivative(case)`` times the call, probes its peak memory and returns the measured columns (for
``exact-taylor`` also ``trace_ms``, the one-off time of tracing f to its aten graph, which the untimed warm-up call
pays and the timed calls reuse from the cache);
``measure_error(case)`` only computes the error (the eps-sweep). FD rows also carry FD's own estimate of its error
(``fdsm.fd_estimate``): ``err_estimate``, the batch median of the per-sample estimated *relative* error beside
``rel_error``, the median of the measured one, and ``flagged`` where it is above 1%; rows of the automatic step
add its cost, ``probe_forwards`` and ``probe_points`` (f evaluations per sample spent probing), and the spread of
its per-sample steps (``step_min``, ``step_max``). ``derivative_closure(case)``,
``reference_for(case)`` and ``error_columns(case, d, d_ref)`` are the pieces they share with the pytest-benchmark
suite (``derivative_call`` gives the first two at once). The measure
functions are module-level, so that a spawned ``bench.isolation.Worker`` can run them; the worker keeps built
models and references between cases.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import fdsm
from bench.accuracy import RelativeError, relative_error
from bench.config import DTYPES, QUICK_N_CHAN, Shared, UsageError, n_chan_setting, option, positive_int
from bench.isolation import is_out_of_memory
from bench.memory import peak_memory
from bench.results import RANDOM_WEIGHTS, weights_label
from bench.timing import first_call_ms, measure_interleaved, paired_ratio, timing_columns
from bench.user_model import build_user_model, event_shape_option, is_user_model, model_source, refuse_event_shape
from fdsm.compiled import compiled_derivative, why_not
from fdsm.derivatives import EXACT_METHODS, FD_METHODS
from fdsm.fd_error import TOLERANCE, FDEstimate, fd_estimate, richardson_stencil
from fdsm.models import MODELS, build
from fdsm.models.casting import to_dtype
from fdsm.taylor.fused import fused_rules

REFERENCE_CHUNK = 8  # samples per float64 reference call

# Keys of the cases (the CSV's key columns) and the measured columns of each kind of row.
PROBLEM_KEYS = ("model", "size", "n_chan", "weights", "seed", "batch", "device")
BUILD_COLUMNS = (*PROBLEM_KEYS, "checkpoint", "event_shape")  # the keys, and how to build the model
CASE_KEYS = (*PROBLEM_KEYS, "method", "order", "accuracy", "eps", "dtype")
TIME_COLUMNS = ("time_ms", "time_ms_iqr", "time_ms_q1", "time_ms_q3", "repeats", "peak_mem_mb", "reserved_mb",
                "nvml_used_mb", "trace_ms", "compile_ms")
ERROR_COLUMNS = ("rel_error", "rel_error_max", "err_estimate", "flagged", "backend", "reference")
# A paired row: the method it was timed against, alternately, and the per-round ratio of their times (measured);
# the case's ``baseline`` is the method it is to be paired with
PAIRED_COLUMNS = ("baseline", "versus", "time_ratio", "time_ratio_q1", "time_ratio_q3")
AUTO_COLUMNS = ("probe_forwards", "probe_points", "step_min", "step_max")  # rows of the automatic step
RICHARDSON = "+richardson"  # an FD method with this suffix evaluates its stencil's Richardson stencil
COMPILED = "+compiled"  # a method with this suffix runs under torch.compile, as an evaluation (fdsm.compiled)
FUSED = "+fused"  # exact-taylor with this suffix composes each elementwise rule by a compiled kernel


def build_model(case: Mapping[str, Any]) -> nn.Module:
    """The case's model in float32 on its device: seeded random weights, or loaded from its ``checkpoint``."""
    torch.manual_seed(int(case["seed"]))
    if is_user_model(case["model"]):
        event = tuple(int(n) for n in case["event_shape"].split(",")) if case.get("event_shape") else None
        model = to_dtype(build_user_model(case["model"], event), torch.float32)  # each dtype from float32 (_model_in)
    else:
        overrides = {} if case["n_chan"] is None else {"n_chan": int(case["n_chan"])}
        model = build(case["model"], size=case["size"], **overrides)
    if case["weights"] != RANDOM_WEIGHTS:
        state = torch.load(case["checkpoint"], map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as err:
            which = ("" if is_user_model(case["model"]) else
                     f" at size {case['size']!r}, n_chan {case['n_chan']}")  # a user's model has one size
            raise ValueError(f"--checkpoint {case['checkpoint']}: expected a state_dict of {case['model']!r}{which}; "
                             f"loading it failed: {err}") from err
    return model.to(torch.device(case["device"])).eval()


def _problem_key(case: Mapping[str, Any]) -> tuple:
    return tuple(case.get(k, "") for k in BUILD_COLUMNS)


@functools.cache
def _problem(key: tuple) -> tuple[nn.Module, Tensor, Tensor]:
    """(model, x, u): the model in float32, points x in [0, 1] and unit directions u, both float64 (B, *event)."""
    case = dict(zip(BUILD_COLUMNS, key, strict=True))
    model = build_model(case)
    event = tuple(model.event_shape)
    g = torch.Generator().manual_seed(int(case["seed"]))
    batch = int(case["batch"])
    x = torch.rand(batch, *event, generator=g, dtype=torch.float64)  # (B, C, H, W)
    u = torch.randn(batch, *event, generator=g, dtype=torch.float64)
    u = u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(event)))  # unit norm per sample
    device = torch.device(case["device"])
    return model, x.to(device), u.to(device)


# NOTE [the reference method]
# D_ref comes from exact-taylor, or from exact-reverse where Taylor mode cannot run f (an op with no rule, an f that
# does not trace); an out-of-memory error stays one. Taylor mode is one pass whatever T, where nested reverse mode's
# memory grows exponentially (fewer reference rows lost at high T), and it is right through PyTorch's fused
# normalizations, where nested autograd is not: through F.layer_norm, F.instance_norm or a training-mode batch norm,
# exact-reverse is wrong from T = 3, by 4% to 340% on a small float64 example (fdsm.float64_reference names the
# PyTorch issues). A user's network with a LayerNorm got an exact-reverse reference that made exact-taylor look 1%
# off, and FD's errors meaningless. Taylor mode itself is held to exact-reverse (1e-9, every model family) and to
# closed forms by the tests. Within a sweep, the Taylor reference is checked on the case's own f and batch against
# nested reverse mode at T = 1, 2 (CHECKED_ORDERS), where nested autograd is right through every op and cheap: a
# wrong rule (one a user registered, or ours on an op pattern the tests do not reach) would otherwise make every
# rel_error of the sweep wrong without a sign. Where they disagree, the reference at T <= 2 is exact-reverse, and
# every row of the problem says so in its message. The exact-reverse rows are a second check: an exact row more
# than EXACT_TOLERANCE off the reference says so in its message.
REFERENCE_METHODS = ("exact-taylor", "exact-reverse")  # in order of preference
EXACT_TOLERANCE = 1e-4  # an exact method in float32 differs from the float64 reference by rounding only
CHECKED_ORDERS = (1, 2)  # nested reverse mode is right here through every op (the norms go wrong from T = 3)
CHECK_TOLERANCE = 1e-8  # two exact methods in float64, relative to the batch's largest |D|: rounding is ~1e-13


@functools.cache
def _by(key: tuple, method: str, order: int) -> Tensor:
    """D for the unit directions u by the exact ``method`` in float64: (B,). In chunks of REFERENCE_CHUNK samples
    (they are independent), so that an exact method's memory at high T scales with the chunk, not the batch."""
    model, x, u = _problem(key)
    return fdsm.float64_reference(model, x, u, order, fn=lambda m, inputs: m.log_density(inputs), method=method,
                                  chunk=REFERENCE_CHUNK)


@functools.cache
def _taylor_doubt(key: tuple) -> str:
    """Why the Taylor-mode reference of this problem is in doubt, or "": it is checked against nested reverse mode
    at CHECKED_ORDERS (NOTE [the reference method]). A check that cannot run (nested reverse mode out of memory)
    leaves no doubt: the tests hold the rules to it."""
    for order in CHECKED_ORDERS:
        taylor = _by(key, REFERENCE_METHODS[0], order)
        try:
            reverse = _by(key, REFERENCE_METHODS[1], order)
        except Exception:  # the check is extra: the Taylor reference stands unchecked
            return ""
        off, scale = float((taylor - reverse).abs().max()), float(reverse.abs().max())
        if not off <= CHECK_TOLERANCE * scale:
            return (f"the float64 Taylor-mode reference disagrees with nested reverse mode on this f at T = {order} "
                    f"(by {off / scale if scale else off:.2g} of the largest |D|), where nested reverse mode is right "
                    "through every op this suite knows of, the norms included: a Taylor rule for an op of f is "
                    "wrong (one registered with fdsm.taylor.register_rule?), or f couples its samples (a batch "
                    "norm without running statistics: fdsm.taylor.CoupledSamplesWarning); rel_error is against "
                    f"exact-reverse at T <= {CHECKED_ORDERS[-1]} and against the doubtful Taylor mode above")
    return ""


@functools.cache
def _unit_reference(key: tuple, order: int) -> tuple[Tensor, str, str]:
    """D_ref for the unit directions u, in float64: (B,), the exact method that gave it, and why it is in doubt
    or "" (NOTE [the reference method])."""
    try:
        taylor = _by(key, REFERENCE_METHODS[0], order)
    except Exception as err:  # no Taylor rule for an op, or f does not trace (data-dependent control flow)
        if is_out_of_memory(err):  # nested reverse mode would need more: the row says the reference failed
            raise
        return _by(key, REFERENCE_METHODS[1], order), REFERENCE_METHODS[1], ""
    doubt = _taylor_doubt(key)
    if doubt and order in CHECKED_ORDERS:
        return _by(key, REFERENCE_METHODS[1], order), REFERENCE_METHODS[1], doubt
    return taylor, REFERENCE_METHODS[0], doubt


@functools.cache
def _model_in(key: tuple, dtype: torch.dtype) -> nn.Module:
    model, _, _ = _problem(key)
    return model if dtype == torch.float32 else to_dtype(copy.deepcopy(model), dtype)


def fd_variant(method: str) -> tuple[str, bool]:
    """``"fd-batched+richardson"`` -> ("fd-batched", True); a plain name -> (name, False); a ``+compiled`` or
    ``+fused`` suffix is dropped first."""
    plain = method.removesuffix(COMPILED).removesuffix(FUSED)
    base = plain.removesuffix(RICHARDSON)
    return base, base != plain


def is_compiled(case: Mapping[str, Any]) -> bool:
    return case["method"].endswith(COMPILED)


def compiles(case: Mapping[str, Any]) -> bool:
    """Whether the case's first call compiles (``+compiled``, ``+fused``): timed apart, as ``compile_ms``."""
    return case["method"].endswith((COMPILED, FUSED))


def case_stencil(case: Mapping[str, Any]) -> fdsm.Stencil | None:
    """The stencil an FD case evaluates (its Richardson stencil for a ``+richardson`` method); None for exact."""
    base, richardson = fd_variant(case["method"])
    if base not in FD_METHODS:
        return None
    s = fdsm.central_stencil(int(case["order"]), int(case["accuracy"]))
    return richardson_stencil(s) if richardson else s


def is_auto(case: Mapping[str, Any]) -> bool:
    return case.get("eps_source") == "auto"


def _inputs(case: Mapping[str, Any]) -> tuple[nn.Module, Tensor, Tensor]:
    """(model, x, v) in the case's dtype: v = eps u, or u itself for the automatic step (which picks its own step
    along u; the result is along the v given either way, eq. S1 of fdsm.fd_error)."""
    key, dtype = _problem_key(case), DTYPES[case["dtype"]]
    _, x, u = _problem(key)
    scale = 1.0 if is_auto(case) else float(case["eps"])
    return _model_in(key, dtype), x.to(dtype), (scale * u).to(dtype)


def estimate_call(case: Mapping[str, Any]) -> Callable[[], FDEstimate]:
    """An FD case's call through ``fdsm.fd_estimate``: its automatic step, or its fixed step with the error
    estimated (one probe forward more than the plain call)."""
    model, x_d, v_d = _inputs(case)
    base, _ = fd_variant(case["method"])
    s, step = case_stencil(case), "auto" if is_auto(case) else None

    def call() -> FDEstimate:
        return fd_estimate(model.log_density, x_d, v_d, int(case["order"]), method=base, stencil=s, step=step,
                           warn=False)

    return call


def derivative_closure(case: Mapping[str, Any]) -> Callable[[], Tensor]:
    """The call to measure: ``directional_derivative`` on inputs already in the case's dtype, v = eps u; for the
    automatic step, ``fd_estimate``'s whole call (probes and result), which is what using it costs."""
    if is_auto(case):
        estimate = estimate_call(case)
        return lambda: estimate().derivative
    order, (method, _) = int(case["order"]), fd_variant(case["method"])
    model, x_d, v_d = _inputs(case)
    stencil = case_stencil(case)
    if is_compiled(case):
        compiled = compiled_derivative(model.log_density, order, method=method, stencil=stencil)
        return lambda: compiled(x_d, v_d)
    rules = fused_rules if case["method"].endswith(FUSED) else contextlib.nullcontext

    def call() -> Tensor:
        with rules():
            return fdsm.directional_derivative(model.log_density, x_d, v_d, order, method=method, stencil=stencil)

    return call


def reference_for(case: Mapping[str, Any]) -> Tensor:
    """D_ref for v = eps u: (u . grad)^T log p in float64, times eps^T (exact, since D^T is homogeneous in v); for
    the automatic step, whose v is u, the unit reference."""
    scale = 1.0 if is_auto(case) else float(case["eps"])
    return _unit_reference(_problem_key(case), int(case["order"]))[0] * scale ** int(case["order"])


def reference_method(case: Mapping[str, Any]) -> tuple[str, str]:
    """The exact method of the case's D_ref and why it is in doubt, or "" (NOTE [the reference method]), once
    ``reference_for`` has run."""
    return _unit_reference(_problem_key(case), int(case["order"]))[1:]


def derivative_call(case: Mapping[str, Any]) -> tuple[Callable[[], Tensor], Tensor]:
    """The call to measure and its reference D_ref."""
    return derivative_closure(case), reference_for(case)


@functools.cache
def _auto_step(key: tuple, method: str, order: int, accuracy: int, dtype: str) -> float:
    case = dict(zip(BUILD_COLUMNS, key, strict=True)) | {"method": method, "order": order, "accuracy": accuracy,
                                                         "dtype": dtype, "eps_source": "auto", "eps": "auto"}
    with torch.no_grad():
        return float(estimate_call(case)().step.median())


def auto_step(problem: Mapping[str, Any], method: str, order: int, accuracy: int, dtype: str) -> float:
    """The batch median of the steps the automatic step picks for this problem: a case's ``eps`` (its key) for
    ``eps_source`` ``auto``. Computed before the sweep, in the calling process, by the same deterministic probes
    as the measured call, which picks them again (``measure_derivative`` reports a mismatch)."""
    return _auto_step(_problem_key(problem), method, order, accuracy, dtype)


def unsupported(method: str) -> dict[str, Any] | None:
    """The ``unsupported`` row of a method this machine cannot run (its status and the reason); None where it runs."""
    base = fd_variant(method)[0]
    entry = fdsm.METHODS.entry(base)
    if not entry.enabled:
        return {"status": "unsupported", "message": entry.reason}
    if method.endswith(COMPILED) and (reason := why_not(base)) is not None:
        return {"status": "unsupported", "message": f"{base} has no compiled form: {reason}"}
    if method.endswith(FUSED) and base != "exact-taylor":
        return {"status": "unsupported", "message": f"{base} has no fused rules: only exact-taylor has them "
                                                    "(fdsm.taylor.fused)"}
    return None


NARROW = ("bfloat16", "float16")  # FD's roundoff u / eps^T there: a few percent at T = 1, worse with T


def _exact_gap(err: RelativeError, d_ref: Tensor) -> str:
    """How far an exact row is off the reference past rounding ("" where it is not): its relative error, or its
    |D| where the reference is exactly 0, against the batch's largest reference (1 where all of it is 0)."""
    if not err.undefined and not err.median <= EXACT_TOLERANCE:
        return f"by {err.median:.2g}"
    scale = float(d_ref.detach().double().reshape(d_ref.shape[0], -1).norm(dim=1).max()) or 1.0
    if err.zero_reference and err.zero_reference_abs > EXACT_TOLERANCE * scale:
        return f"by {err.zero_reference_abs:.2g} (absolute) where it is exactly 0"
    return ""


def _zero_reference_note(case: Mapping[str, Any], err: RelativeError) -> str | None:
    """What a row says where some samples' reference is exactly 0 (``bench.accuracy``): how many, left out of
    rel_error, and their absolute error; where every sample's is, why rel_error is NaN."""
    if not err.zero_reference:
        return None
    which = "every sample" if err.undefined else f"{err.zero_reference} of {case['batch']} samples"
    left = "no rel_error" if err.undefined else "left out of rel_error"
    this = ("this row's D is exactly 0 there too" if err.zero_reference_abs == 0 else
            f"this row's |D| there is up to {err.zero_reference_abs:.3g}, absolute")
    return (f"{left}: the reference D^{case['order']} is exactly 0 at {which} (f is a polynomial of degree under "
            f"{case['order']} along v there); {this}")


def error_columns(case: Mapping[str, Any], d: Tensor, d_ref: Tensor,
                  estimate: FDEstimate | None = None) -> dict[str, Any]:
    """rel_error (median and max over the batch) of d against d_ref and the ``reference`` method (NOTE [the
    reference method]: a reference in doubt, and an exact row more than EXACT_TOLERANCE off it, say so in the
    message); for FD, ``estimate``'s
    ``err_estimate`` and ``flagged`` beside it, and for the automatic step its cost and steps (``AUTO_COLUMNS``)."""
    err = relative_error(d, d_ref)
    backend = "n/a"
    if case["method"] == "fd-streams":  # one stream or worker thread per stencil point: say how many ran at once
        points = len(fdsm.central_stencil(int(case["order"]), int(case["accuracy"])))
        backend = f"{fdsm.streams_backend(case['device'])} x{points}"
    interpreted = case["method"] == "fd-fused" and torch.device(case["device"]).type != "cuda"
    if interpreted:  # enabled off CUDA only under TRITON_INTERPRET=1 (NOTE [the Triton interpreter])
        backend = "triton-interpreter"
    reference, doubt = reference_method(case)
    columns = {"rel_error": err.median, "rel_error_max": err.max, "backend": backend, "reference": reference}
    notes = [doubt, _zero_reference_note(case, err)]  # the row's message: every note that applies, in this order
    if interpreted:
        notes.append("the Triton kernels ran under the interpreter (TRITON_INTERPRET=1, in Python on the CPU): "
                     "its values are checked, its time is the interpreter's, not the kernels'")
    method = case["method"]  # exact-taylor+fused and +compiled are other implementations: checked too
    exact = method.removesuffix(COMPILED).removesuffix(FUSED) in EXACT_METHODS
    if exact and method != reference and case["dtype"] not in NARROW and (off := _exact_gap(err, d_ref)):
        notes.append(f"{method} is off the float64 {reference} reference {off}, where two exact methods "
                     f"differ by rounding only (under {EXACT_TOLERANCE:g}): one of them is wrong on this f. "
                     "PyTorch's nested autograd is, through its fused normalizations (layer, instance, training-mode "
                     "batch norm) at high order: see fdsm.float64_reference")
    if estimate is not None:
        median = float(estimate.rel_error.median())
        columns |= {"err_estimate": median, "flagged": not median <= TOLERANCE}
        if is_auto(case):
            steps = estimate.step
            columns |= {"probe_forwards": estimate.probe_forwards, "probe_points": estimate.probe_points,
                        "step_min": float(steps.min()), "step_max": float(steps.max())}
            if not math.isclose(float(steps.median()), float(case["eps"]), rel_tol=1e-6):
                notes.append(f"the timed call's automatic step, median {float(steps.median()):.6g}, differs from the "
                             f"case's eps {float(case['eps']):.6g} chosen before the sweep")
    if (fd_variant(case["method"])[0] in FD_METHODS and case["dtype"] in NARROW and not err.undefined
            and not err.median <= 0.01):
        unit = torch.finfo(DTYPES[case["dtype"]]).eps
        notes.append(f"FD in {case['dtype']} is numerically out of range here: its roundoff, about u / eps^T with "
                     f"u = {unit:.1e}, swamps the T = {case['order']} derivative (rel_error {err.median:.2g})")
    if message := "; ".join(filter(None, notes)):
        columns["message"] = message
    return columns


def counterpart(case: Mapping[str, Any]) -> dict[str, Any] | None:
    """The case that ``case`` is timed against: the same problem, order, step and dtype with the method
    ``case["baseline"]``; None where the row is not paired (no baseline, or one this machine cannot run)."""
    baseline = case.get("baseline") or ""
    if not isinstance(baseline, str) or not baseline or unsupported(baseline) is not None:
        return None
    return {**case, "method": baseline, "baseline": ""}


def _beside(case: Mapping[str, Any]) -> tuple[Callable[[], Tensor] | None, str]:
    """The counterpart's call after one untimed call (its trace or compile), or None and why it cannot run: FD's
    stacked forward may run out of memory where the row's own method fits; the row is then timed alone."""
    other = counterpart(case)
    if other is None:
        return None, ""
    try:
        call = derivative_closure(other)
        call()
    except Exception as err:
        return None, f"{other['method']} could not run beside it ({type(err).__name__}: {err}), so no time_ratio"
    return call, ""


def measure_derivative(case: Mapping[str, Any]) -> dict[str, Any]:
    """Time (median, IQR of ``case["repeats"]`` calls after ``case["warmup"]``), peak memory above baseline, and
    error of one case; the measured columns of its row.

    The same call is timed and probed: ``directional_derivative`` with the graph kept (its result is
    differentiable in the parameters, as a training step needs), or for the automatic step ``fd_estimate``'s whole
    call, probes included. A paired row (``counterpart``) is timed alternately with its counterpart's call, round
    by round (``bench.timing.measure_interleaved``), and ``time_ratio`` is the median and quartiles of the per-round
    ratios: a slow phase of the machine lands on both calls of a round alike, where a ratio of two rows' medians
    also holds whatever the machine did between them. The memory probe is a separate call after the timed ones,
    whose output is the one compared with the reference. FD's error estimate comes from one more call, untimed: at
    a fixed step, ``fd_estimate`` at that step (the result is the same; the estimate costs one probe forward); for
    the automatic step, the same call again, whose result is the one compared.
    """
    if (skip := unsupported(case["method"])) is not None:
        return skip
    call = derivative_closure(case)
    device = torch.device(case["device"])
    compile_ms = first_call_ms(call, device) if compiles(case) else math.nan  # the compile, timed apart
    versus, note = _beside(case)
    calls = [call] if versus is None else [call, versus]
    # exact-taylor traces f in the untimed warm-up
    timings = measure_interleaved(calls, device, warmup=int(case["warmup"]), repeats=int(case["repeats"]))
    eager_taylor = case["method"] in ("exact-taylor", "exact-taylor" + FUSED)
    trace_ms = fdsm.taylor.STATS.last_trace_ms if eager_taylor else math.nan
    del calls, versus  # the counterpart's model and graphs leave before the memory probe
    outputs: list[Tensor] = []
    memory = peak_memory(lambda: outputs.append(call()), device)
    measured = {**timing_columns(timings[0]), "peak_mem_mb": memory.peak_mb, "reserved_mb": memory.reserved_mb,
                "nvml_used_mb": memory.nvml_used_mb, "trace_ms": trace_ms, "compile_ms": compile_ms}
    if len(timings) == 2:
        ratio = paired_ratio(timings[0], timings[1])
        measured |= {"versus": case["baseline"], "time_ratio": ratio.median, "time_ratio_q1": ratio.q1,
                     "time_ratio_q3": ratio.q3}
    estimate = None
    if case_stencil(case) is not None:
        with torch.no_grad():
            estimate = estimate_call(case)()
    d = estimate.derivative if estimate is not None and is_auto(case) else outputs[0]
    # The reference comes last: the float64 exact method at high T can itself run out of memory (paper size on a
    # GPU), and that must cost this row its error column, not its time and memory.
    try:
        d_ref = reference_for(case)
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        errors = {"rel_error": math.nan, "rel_error_max": math.nan,
                  "message": f"no rel_error: the float64 reference failed ({type(err).__name__}: {err})"}
    else:
        errors = error_columns(case, d, d_ref, estimate)
    message = "; ".join(filter(None, (note, errors.pop("message", ""))))
    return {**measured, **errors, **({"message": message} if message else {})}


def measure_error(case: Mapping[str, Any]) -> dict[str, Any]:
    """The error columns of one case, without timing (no graph is kept): for FD, through ``fd_estimate`` at the
    case's step, which also gives ``err_estimate``."""
    if (skip := unsupported(case["method"])) is not None:
        return skip
    with torch.no_grad():
        if case_stencil(case) is None:
            return error_columns(case, derivative_closure(case)(), reference_for(case))
        estimate = estimate_call(case)()
    return error_columns(case, estimate.derivative, reference_for(case), estimate)


@dataclass(frozen=True)
class ProblemConfig:
    """What is differentiated: the options every derivative sweep shares (see the case table above)."""

    model: str = option("deep-ebm", "a registered model (fdsm-bench models lists them) or a user's factory, "
                        "package.module:factory or path/file.py:factory (the contract: fdsm/models/user.py)")
    event_shape: tuple[int, ...] | None = event_shape_option()
    size: str | None = option(None, "model preset", choices=("paper", "cpu"), default_text="paper on CUDA, else cpu")
    n_chan: int | None = option(None, "the deep EBM's n_chan, channels after the stem (models without one refuse "
                                "it)", aliases=("--width",), type=positive_int,
                                default_text=f"the preset's; --quick: {QUICK_N_CHAN} where the model has an n_chan")
    batch: int | None = option(None, "points per call", type=positive_int, default_text="64 on CUDA, else 2")
    checkpoint: Path | None = option(None, "a state_dict of the model", default_text="seeded random weights")
    threads: int | None = option(None, "torch CPU threads", type=positive_int,
                                 default_text="OMP_NUM_THREADS or torch's")


def problem_columns(config: ProblemConfig, shared: Shared) -> dict[str, Any]:
    """The PROBLEM_KEYS values of a sweep's cases, and the non-key columns that say how to build the model
    (``checkpoint``, ``event_shape``). A user's model is built and checked here, in the parent, before any case."""
    if config.checkpoint is not None and not config.checkpoint.is_file():
        raise UsageError(f"--checkpoint {config.checkpoint}: no such file")
    on_gpu = shared.device.type == "cuda"
    batch = config.batch if config.batch is not None else (64 if on_gpu else 2)
    size = config.size or ("paper" if on_gpu else "cpu")
    if is_user_model(config.model):
        for flag, value in (("--size", config.size), ("--n-chan", config.n_chan)):
            if value is not None:
                raise UsageError(f"{flag} {value}: a setting of the registered models' presets; a user's model "
                                 f"({config.model}) has one size, its factory's")
        model = build_user_model(config.model, config.event_shape)
        if model.interface == "score":
            raise UsageError(f"--model {config.model}: a score model has no log-density to differentiate; the "
                             "derivative sweeps need interface 'log-density' or 'energy' (train-steps takes score "
                             "models)")
        size, n_chan = "user", None
    elif config.model not in MODELS:
        raise UsageError(f"--model {config.model}: not a registered model; expected one of "
                         f"{', '.join(MODELS.names())}, or a user's package.module:factory or file.py:factory")
    else:
        refuse_event_shape(config.event_shape, (config.model,))
        settings = (f.name for f in dataclasses.fields(MODELS.get(config.model).presets[size]))
        n_chan = n_chan_setting(config.n_chan, config.model, settings, shared.quick)
    try:
        weights = weights_label(config.checkpoint)
    except Exception as err:  # not a file torch.load reads as weights: a pickle of something else, text, a .py
        raise UsageError(f"--checkpoint {config.checkpoint}: not a state_dict that torch.load(weights_only=True) "
                         f"reads ({type(err).__name__}); pass the file fdsm-bench fit wrote, or torch.save(model."
                         "state_dict(), path)") from err
    columns = {"model": config.model, "size": size, "n_chan": n_chan, "weights": weights,
               "seed": shared.seed, "batch": batch, "device": str(shared.device),
               "checkpoint": "" if config.checkpoint is None else str(config.checkpoint),
               "event_shape": ",".join(map(str, config.event_shape or ())),
               **({"model_source": model_source(config.model)} if size == "user" else {})}
    if config.checkpoint is not None:  # the state_dict must fit the model: said here, not in every row
        try:
            build_model(columns)
        except ValueError as err:
            raise UsageError(" ".join(str(err).split())[:400]) from err
    return columns
