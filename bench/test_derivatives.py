"""pytest-benchmark suite: the T-th directional derivative of the deep EBM, per method x order.

    pytest bench/ --benchmark-json=out.json            # timings + extra_info (a full derivatives.csv row each)
    pytest bench/ --benchmark-disable                  # a smoke run: each case once, no statistics

Each benchmark times the same call as ``fdsm-bench derivatives`` (``bench.derivative_case.derivative_call``) with
``benchmark.pedantic``; on CUDA the target synchronizes, so the clock stops when the kernels finish. Peak memory
(probed in this process, above its baseline), relative error against the float64 reference and status go into
``extra_info`` together with the case's configuration and the environment metadata, so that
``bench.csvlog.rows_from_pytest_benchmark("out.json")`` gives rows of the derivatives.csv schema and the same
``CsvLog`` writes them. A case over its error tolerance fails; pytest-benchmark still writes it to the JSON, so its
row says ``error`` and carries no time. A case that raises or is skipped (``fd-fused`` without CUDA) has no row
(``fdsm-bench derivatives`` writes an ``error`` or ``unsupported`` one). The default size is tiny (a 2-channel deep
EBM, one point), so that it runs in seconds on the CPU; the command line is the place for the real sweep.
"""

from __future__ import annotations

import pytest
import torch

import fdsm
from bench.derivative_case import RANDOM_WEIGHTS, derivative_call, error_columns
from bench.environment import metadata, use_ieee_float32
from bench.memory import peak_memory
from bench.steps import default_step

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ORDERS = (1, 2, 3)
ROUNDS = 5
# The error each method must stay under at the default step (float32, random-weight deep EBM at width 2): exact
# methods differ from the float64 reference by float32 rounding only; FD by truncation + roundoff, which grows with
# T (see fdsm-bench eps-sweep). "Check what you time": a fast wrong answer fails here. FD at T <= 2 measures about
# 2e-2 at most (fd-batched, T = 2); at T >= 3 float32 FD is inherently inaccurate (at accuracy 2 even the best step
# of the eps-sweep errs by ~0.1, and the default step here by ~0.2), so the bound there only catches a wrong answer.
EXACT_TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _ieee_float32():
    use_ieee_float32()  # as in every fdsm-bench process: float32 is IEEE float32, not TF32 (bench.environment)


def _tolerance(method: str, order: int) -> float:
    if not method.startswith("fd-"):
        return EXACT_TOLERANCE
    return 0.05 if order <= 2 else 0.5


def _case(method: str, order: int) -> dict:
    return {"model": "deep-ebm", "size": "cpu", "width": 2, "weights": RANDOM_WEIGHTS, "seed": 0, "batch": 1,
            "device": str(DEVICE), "method": method, "order": order, "accuracy": 2,
            "eps": default_step(order, 2, torch.float32), "dtype": "float32"}


def _synchronized(call):
    if DEVICE.type != "cuda":
        return call

    def target():
        out = call()
        torch.cuda.synchronize(DEVICE)
        return out

    return target


@pytest.mark.benchmark(group="derivatives")
@pytest.mark.parametrize("order", ORDERS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("method", fdsm.METHODS.names())
def test_derivative(benchmark, method, order):
    entry = fdsm.METHODS.entry(method)
    if not entry.enabled:
        pytest.skip(f"{method}: {entry.reason}")
    case = _case(method, order)
    call, d_ref = derivative_call(case)
    d = benchmark.pedantic(_synchronized(call), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    memory = peak_memory(call, DEVICE)
    errors = error_columns(case, d, d_ref)
    tolerance = _tolerance(method, order)
    # pytest-benchmark keeps a case's stats in the JSON even when the assert below fails it, so the row itself
    # must say that this time belongs to a wrong answer.
    wrong = not errors["rel_error"] <= tolerance
    outcome = ({"status": "error", "message": f"rel_error {errors['rel_error']:.3g} is above this method's "
                                              f"tolerance {tolerance:g} at T = {order}: a wrong answer"}
               if wrong else {"status": "ok"})
    benchmark.extra_info.update({**case, "peak_mem_mb": memory.peak_mb, "reserved_mb": memory.reserved_mb,
                                 "nvml_used_mb": memory.nvml_used_mb, "repeats": ROUNDS, **errors, **outcome,
                                 **metadata(DEVICE)})
    assert not wrong, outcome.get("message")
