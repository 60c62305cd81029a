"""``fdsm-bench derivatives`` times each row against FD in pairs: which rows are paired with which counterpart
(``baseline``), that ``time_ratio`` is the row's own time over its counterpart's, not the other way round, and that a
counterpart which cannot run costs the row its ratio only."""

from __future__ import annotations

import dataclasses
import time

import pytest

import bench.derivative_case as derivative_case
from bench.config import Shared
from bench.derivative_case import COMPILED, FUSED, counterpart, measure_derivative
from bench.experiments import derivatives


def _versus(**options) -> dict[str, str]:
    config = dataclasses.replace(derivatives.QUICK, orders=(2,), **options)
    return {case["method"]: case["baseline"] for case in derivatives.cases(config, Shared(device="cpu", quick=True))}


def test_every_row_but_the_baseline_is_paired_with_fd_batched_compiled_rows_with_compiled_fd():
    versus = _versus(methods=("exact-reverse", "exact-taylor", "fd-serial", "fd-batched"), compiled=True)
    assert versus["exact-reverse"] == versus["exact-taylor"] == versus["fd-serial"] == "fd-batched"
    assert versus["exact-taylor" + FUSED] == "fd-batched"  # fused rules in an eager net: against eager FD
    assert versus["exact-taylor" + COMPILED] == versus["fd-serial" + COMPILED] == "fd-batched" + COMPILED
    assert versus["fd-batched"] == versus["fd-batched" + COMPILED] == ""  # the baselines themselves


def test_rows_are_paired_only_with_a_baseline_of_the_same_sweep():
    assert _versus(methods=("exact-reverse", "exact-taylor")) == {"exact-reverse": "", "exact-taylor": ""}
    assert _versus(methods=("exact-taylor", "fd-batched"), richardson=True) == {
        "exact-taylor": "fd-batched+richardson", "fd-batched+richardson": ""}  # FD rows are all Richardson's


def test_exact_rows_of_the_automatic_step_are_not_paired_its_fd_rows_are():
    versus = _versus(methods=("exact-taylor", "fd-serial", "fd-batched"), eps="auto")
    assert versus == {"exact-taylor": "", "fd-serial": "fd-batched", "fd-batched": ""}


def test_the_baseline_rows_come_first_within_each_order():
    # every paired compiled row compiles fd-batched+compiled for its rounds: the baseline's own row, timing its
    # compile, must come before them (else inductor's cache holds it)
    config = dataclasses.replace(derivatives.QUICK, orders=(2, 1), methods=("exact-taylor", "fd-batched"),
                                 compiled=True)
    rows = [(case["order"], case["method"]) for case in derivatives.cases(config, Shared(device="cpu", quick=True))]
    assert rows == [(2, "fd-batched"), (2, "fd-batched" + COMPILED), (2, "exact-taylor"), (2, "exact-taylor" + FUSED),
                    (2, "exact-taylor" + COMPILED), (1, "fd-batched"), (1, "fd-batched" + COMPILED),
                    (1, "exact-taylor"), (1, "exact-taylor" + FUSED), (1, "exact-taylor" + COMPILED)]


def test_the_counterpart_is_the_same_case_with_the_baseline_method_and_none_where_it_cannot_run():
    case = {"method": "exact-taylor", "order": 3, "eps": 2.0, "baseline": "fd-batched"}
    assert counterpart(case) == {"method": "fd-batched", "order": 3, "eps": 2.0, "baseline": ""}
    assert counterpart({**case, "baseline": ""}) is None
    assert counterpart({**case, "baseline": float("nan")}) is None  # read back from a CSV: an empty cell
    assert counterpart({**case, "baseline": "fd-distributed"}) is None  # no process group here: unsupported


def _taylor_case(**options) -> dict:
    config = dataclasses.replace(derivatives.QUICK, orders=(2,), methods=("exact-taylor", "fd-batched"), **options)
    (case,) = [c for c in derivatives.cases(config, Shared(device="cpu", quick=True)) if c["method"] == "exact-taylor"]
    assert case["baseline"] == "fd-batched"
    return case


def test_time_ratio_is_the_rows_own_time_over_its_counterparts(monkeypatch):
    # The orientation, with calls whose times differ 20-fold by construction: each timed call is a sleep (40 ms for
    # the row, 2 ms for its counterpart) that returns the method's result, computed once beforehand. The ratio is
    # then about 20 whatever the methods cost on this machine (a sleep that oversleeps by a few ms keeps it far
    # above 3), and far from the 1/20 of the wrong orientation.
    real = derivative_case.derivative_closure
    sleeps = {"exact-taylor": 40e-3, "fd-batched": 2e-3}

    def slept(case):
        result = real(case)()
        return lambda: (time.sleep(sleeps[case["method"]]), result)[1]

    monkeypatch.setattr(derivative_case, "derivative_closure", slept)
    row = measure_derivative(_taylor_case(repeats=5))
    assert row["versus"] == "fd-batched" and row["time_ratio_q1"] <= row["time_ratio"] <= row["time_ratio_q3"]
    assert row["time_ratio"] > 3, row
    assert row["time_ms"] >= 40 and row["rel_error"] < 1e-4  # its own timing and its own result, as unpaired


def test_a_counterpart_that_cannot_run_leaves_the_row_timed_alone_and_says_why(monkeypatch):
    real = derivative_case.derivative_closure

    def failing(case):
        if case["method"] != "fd-batched":
            return real(case)

        def call():
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")  # FD's stacked forward, too big
        return call

    monkeypatch.setattr(derivative_case, "derivative_closure", failing)
    row = measure_derivative(_taylor_case())
    assert "versus" not in row and "time_ratio" not in row
    assert row["time_ms"] > 0 and row["rel_error"] < 1e-4  # the row itself is measured, and ok
    assert row["message"].startswith("fd-batched could not run beside it (RuntimeError: DefaultCPUAllocator")


@pytest.mark.parametrize("baseline", ["", "fd-distributed"])
def test_an_unpaired_row_has_no_time_ratio(baseline):
    row = measure_derivative({**_taylor_case(), "baseline": baseline})
    assert "versus" not in row and "time_ratio" not in row and row["time_ms"] > 0 and "message" not in row
