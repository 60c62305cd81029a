"""``fdsm-bench derivatives`` times each row against FD in pairs: which rows are paired with which counterpart
(``versus``), and that ``time_ratio`` is the row's own time over its counterpart's, not the other way round."""

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
    return {case["method"]: case["versus"] for case in derivatives.cases(config, Shared(device="cpu", quick=True))}


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


def test_the_counterpart_is_the_same_case_with_the_baseline_method_and_none_where_it_cannot_run():
    case = {"method": "exact-taylor", "order": 3, "eps": 2.0, "versus": "fd-batched"}
    assert counterpart(case) == {"method": "fd-batched", "order": 3, "eps": 2.0, "versus": ""}
    assert counterpart({**case, "versus": ""}) is None
    assert counterpart({**case, "versus": float("nan")}) is None  # read back from a CSV: an empty cell
    assert counterpart({**case, "versus": "fd-distributed"}) is None  # no process group here: unsupported


def test_time_ratio_is_the_rows_own_time_over_its_counterparts(monkeypatch):
    # The orientation, with calls whose times differ 8-fold by construction: the row's own call sleeps 8 ms and
    # its counterpart's 1 ms, so its time_ratio is about 8 (far from 1/8 whatever the machine does meanwhile).
    real = derivative_case.derivative_closure
    sleeps = {"exact-taylor": 8e-3, "fd-batched": 1e-3}

    def slowed(case):
        call = real(case)
        return lambda: (time.sleep(sleeps[case["method"]]), call())[1]

    monkeypatch.setattr(derivative_case, "derivative_closure", slowed)
    config = dataclasses.replace(derivatives.QUICK, orders=(2,), methods=("exact-taylor", "fd-batched"), repeats=5)
    taylor = derivatives.cases(config, Shared(device="cpu", quick=True))[0]
    assert taylor["method"] == "exact-taylor" and taylor["versus"] == "fd-batched"
    row = measure_derivative(taylor)
    assert row["time_ratio_q1"] <= row["time_ratio"] <= row["time_ratio_q3"]
    assert row["time_ratio"] > 3, row
    assert row["time_ms"] >= 8 and row["rel_error"] < 1e-4  # its own timing and its own result, as unpaired


@pytest.mark.parametrize("versus", ["", "fd-distributed"])
def test_an_unpaired_row_has_no_time_ratio(versus):
    config = dataclasses.replace(derivatives.QUICK, orders=(1,), methods=("exact-taylor",))
    case = {**derivatives.cases(config, Shared(device="cpu", quick=True))[0], "versus": versus}
    row = measure_derivative(case)
    assert "time_ratio" not in row and row["time_ms"] > 0
