"""The measurement harness measures what it claims: timer, memory probe, error, isolation, CSV log and resume.

These are correctness tests of the harness, not timings: tolerances are loose enough for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest
import torch

import bench.timing
from bench.accuracy import relative_error
from bench.csvlog import CsvLog, ResultsFileError, rows_from_pytest_benchmark
from bench.environment import METADATA_COLUMNS, float32_math, metadata, set_float32_math, use_ieee_float32
from bench.isolation import CaseOutcome, Worker, failure
from bench.memory import cpu_peak_supported, peak_memory
from bench.sweep import outcome_row, run_sweep
from bench.timing import PhaseClock, measure_interleaved, measure_time, paired_ratio

CPU = torch.device("cpu")


# Case functions run in a spawned worker, so they live at module level.
def _allocate(mb: int) -> float:
    return peak_memory(lambda: torch.ones(mb * 2**20 // 4), CPU).peak_mb  # float32: 4 bytes per element


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _fail(message: str) -> None:
    raise ValueError(message)


def _oom(_: object) -> None:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")


def _measure_case(case: dict) -> dict:
    if case["order"] == 2:
        raise ValueError("order 2 is broken on purpose")
    return {"time_ms": float(case["order"]), "peak_mem_mb": 0.0}


def test_timer_median_and_iqr_of_a_known_sleep():
    timing = measure_time(lambda: time.sleep(0.01), CPU, warmup=1, repeats=5)
    assert timing.repeats == len(timing.samples_ms) == 5
    assert 9.5 <= timing.median_ms <= 60  # a 10 ms sleep; the upper bound allows a loaded machine
    assert 0 <= timing.iqr_ms <= max(timing.samples_ms) - min(timing.samples_ms)
    assert timing.threads == torch.get_num_threads()


def test_timer_reports_the_median_and_quartiles_not_the_mean(monkeypatch):
    samples = iter([1.0, 2.0, 3.0, 4.0, 100.0])  # one slow outlier: the mean would be 22
    monkeypatch.setattr(bench.timing, "_time_cpu", lambda fn: next(samples))
    timing = measure_time(lambda: None, CPU, warmup=0, repeats=5)
    assert (timing.median_ms, timing.q1_ms, timing.q3_ms, timing.iqr_ms) == (3.0, 2.0, 4.0, 2.0)


def test_interleaved_timer_alternates_and_pairs_the_rounds():
    calls = []
    fast, slow = (lambda: (calls.append("a"), time.sleep(0.01))), (lambda: (calls.append("b"), time.sleep(0.02)))
    a, b = measure_interleaved([fast, slow], CPU, warmup=1, repeats=4)
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"  # warm-up, then alternating order per round
    assert a.repeats == b.repeats == 4
    ratio = paired_ratio(b, a)
    assert 1.3 <= ratio.median <= 2.5  # 20 ms over 10 ms; loose for a loaded machine
    assert ratio.q1 <= ratio.median <= ratio.q3
    with pytest.raises(ValueError, match="same rounds"):
        paired_ratio(a, measure_time(fast, CPU, warmup=0, repeats=2))


def test_phase_clock_splits_each_call_and_keeps_the_last_ones():
    clock = PhaseClock(CPU)

    def step(first_s):
        clock.start()
        time.sleep(first_s)
        clock.mark("first")
        time.sleep(0.02)
        clock.mark("second")

    step(0.2)  # a slow warm-up call, left out below
    for _ in range(3):
        step(0.01)
    medians = clock.median_ms(last=3)
    assert list(medians) == ["first", "second"]  # in call order
    assert 9.5 <= medians["first"] <= 60 and 19.5 <= medians["second"] <= 80  # loose for a loaded machine


def test_timer_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_time(lambda: None, CPU, repeats=0)


@pytest.mark.skipif(not cpu_peak_supported(), reason="CPU peak memory needs Linux /proc/self/clear_refs")
def test_isolated_memory_probe_sees_a_known_allocation():
    with Worker(threads=1) as worker:
        worker.run(_allocate, 8, timeout_s=60)  # a first call also pays the worker's own one-off allocations
        big = worker.run(_allocate, 200, timeout_s=60)
        small = worker.run(_allocate, 8, timeout_s=60)  # after the big one: the probe is reset per call
    assert big.status == "ok", big.message
    assert 199 <= big.result <= 205, big.result  # MiB: about 200.0 here; in MB (10^6 bytes) it would read 209.7
    assert small.result < 40, small.result


def test_worker_gives_timeout_error_and_oom_rows_and_recovers():
    with Worker(threads=1) as worker:
        slow = worker.run(_sleep, 30.0, timeout_s=1.0)
        failed = worker.run(_fail, "boom", timeout_s=30)
        oom = worker.run(_oom, None, timeout_s=30)
        fine = worker.run(_sleep, 0.0, timeout_s=30)  # a fresh worker after the killed one
    assert slow.status == "timeout" and "1 s" in slow.message
    assert failed.status == "error" and failed.message == "ValueError: boom"
    assert oom.status == "oom"
    assert fine.status == "ok" and fine.result == 0.0


def test_workers_and_the_cli_compute_float32_in_ieee_not_tf32():
    with Worker(threads=1) as worker:  # a fresh process, where PyTorch's default for convolutions is TF32
        assert worker.run(float32_math, timeout_s=60).result == "ieee"
    if not hasattr(torch.backends.cudnn, "conv"):
        pytest.skip("torch < 2.9 has only the legacy allow_tf32 flags")
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default, as in a fresh process
    assert float32_math() == metadata(CPU)["float32_math"] == "tf32"
    use_ieee_float32()  # what the CLI does at start
    assert float32_math() == metadata(CPU)["float32_math"] == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    set_float32_math("tf32")  # train-steps --float32-math tf32: PyTorch's default, TF32 convolutions only
    assert float32_math() == "tf32" and torch.backends.cuda.matmul.fp32_precision == "ieee"
    use_ieee_float32()
    with pytest.raises(ValueError, match="expected one of"):
        set_float32_math("bf16")


def test_relative_error_median_and_max():
    err = relative_error(torch.tensor([1.01, 2.0, -3.3]), torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64))
    assert err.median == pytest.approx(0.01, rel=1e-4)
    assert err.max == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(ValueError, match="same shapes"):
        relative_error(torch.zeros(3), torch.zeros(4))


def test_an_exact_row_that_is_not_zero_where_the_reference_is_says_one_of_them_is_wrong(monkeypatch):
    import bench.derivative_case as derivative_case

    monkeypatch.setattr(derivative_case, "reference_method", lambda case: ("exact-reverse", ""))
    case = {"method": "exact-taylor", "order": 3, "batch": 4, "dtype": "float32", "device": "cpu"}
    zero = torch.zeros(4, dtype=torch.float64)  # a Gaussian at T = 3: D_ref = 0 at every sample
    wrong = derivative_case.error_columns(case, torch.full((4,), 5.0), zero)
    assert math.isnan(wrong["rel_error"]) and "exactly 0 at every sample" in wrong["message"]
    assert "is off the float64 exact-reverse reference by 5 (absolute) where it is exactly 0" in wrong["message"]
    right = derivative_case.error_columns(case, torch.zeros(4), zero)
    assert "off the float64" not in right["message"] and "exactly 0 there too" in right["message"]
    part = derivative_case.error_columns(case, torch.tensor([2.0, 1e-3, 3.0, 0.0]),
                                         torch.tensor([2.0, 0.0, 3.0, 0.0], dtype=torch.float64))
    assert "by 0.001 (absolute)" in part["message"] and part["rel_error"] == 0.0  # 1e-3 against |D_ref| up to 3


def test_a_reference_of_exactly_zero_has_no_relative_error_and_is_counted_apart():
    ref = torch.tensor([0.0, 2.0, 0.0, 4.0], dtype=torch.float64)  # f polynomial of degree < T at samples 0, 2
    err = relative_error(torch.tensor([1e-3, 2.2, -5e-3, 4.0]), ref)
    assert err.median == pytest.approx(0.05, rel=1e-5) and err.max == pytest.approx(0.1, rel=1e-5)
    assert (err.zero_reference, err.undefined) == (2, False) and err.zero_reference_abs == pytest.approx(5e-3)
    err = relative_error(torch.tensor([0.0, 3e-7]), torch.zeros(2, dtype=torch.float64))  # nothing to divide by
    assert err.undefined and math.isnan(err.median) and math.isnan(err.max) and err.zero_reference == 2
    assert math.isnan(relative_error(torch.tensor([math.nan, 1.0]), torch.ones(2, dtype=torch.float64)).max)


def test_git_commit_can_be_given_for_a_copied_tree(monkeypatch):
    from bench import environment

    monkeypatch.setenv("FDSM_GIT_COMMIT", "abc1234")
    assert environment._git_commit() == "abc1234"
    monkeypatch.delenv("FDSM_GIT_COMMIT")
    assert environment._git_commit() != "abc1234"


def test_a_rows_own_metadata_values_win_over_this_processs():
    row = outcome_row({"model": "m", "float32_math": "tf32"}, CaseOutcome("ok", {"threads": 7}), CPU)
    assert row["float32_math"] == "tf32" and row["threads"] == 7  # set by the case / measured by the worker
    assert set(METADATA_COLUMNS) <= set(row) and row["status"] == "ok"


def test_metadata_columns():
    meta = metadata(CPU)
    assert tuple(meta) == METADATA_COLUMNS
    assert meta["torch"] == torch.__version__ and meta["threads"] == torch.get_num_threads()


def test_csv_log_appends_atomically_and_resumes(tmp_path):
    path = tmp_path / "rows.csv"
    log = CsvLog(path, key_columns=("method", "order"), columns=("time_ms", "status"))
    log.append({"method": "a", "order": 1, "status": "ok", "time_ms": 1.5})
    log.append({"method": "a", "order": 2, "status": "timeout"})  # no time_ms: an empty cell
    again = CsvLog(path, key_columns=("method", "order"))
    assert again.done({"method": "a", "order": 1.0}) and again.done({"method": "a", "order": "2"})
    assert not again.done({"method": "b", "order": 1})
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["method", "order", "time_ms", "status"]
    assert len(frame) == 2 and math.isnan(frame.time_ms[1])
    assert not list(tmp_path.glob("*.tmp"))


def test_csv_log_refuses_a_file_of_another_schema(tmp_path):
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "rows.csv", index=False)
    with pytest.raises(ResultsFileError, match="lacks the key column"):  # a UsageError: one line, exit status 2
        CsvLog(tmp_path / "rows.csv", key_columns=("method",))


def test_sweep_turns_failures_into_rows_and_resumes(tmp_path):
    cases = [{"method": "m", "order": t} for t in (1, 2, 3)]
    log = CsvLog(tmp_path / "sweep.csv", key_columns=("method", "order"), columns=("time_ms", "status"))
    run_sweep(cases[:2], _measure_case, log, device=CPU, timeout_s=30, isolate=False)
    frame = run_sweep(cases, _measure_case, CsvLog(log.path, log.key_columns), device=CPU, timeout_s=30,
                      isolate=False)
    assert list(frame.order) == [1, 2, 3]  # the first two were kept, not redone
    assert list(frame.status) == ["ok", "error", "ok"]
    assert "broken on purpose" in frame.message[1]
    assert set(METADATA_COLUMNS) <= set(frame.columns)


def test_a_derivative_that_pytorch_does_not_implement_is_an_unsupported_row_not_an_error():
    """Nested autograd through attention's CPU kernel has no second derivative: exact-reverse cannot run there, which
    is not a bug of the case (an error row made the command exit 1), and the row says why."""
    q = torch.rand(1, 1, 2, 4, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(q, q, q).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="is not implemented") as raised:
        torch.autograd.grad(grad.sum(), q)
    status, message = failure(raised.value)
    assert status == "unsupported" and "PyTorch implements no derivative" in message and "aten::" in message
    assert failure(RuntimeError("something else broke"))[0] == "error"


def test_a_rerun_measures_again_the_rows_of_the_statuses_to_retry_and_replaces_them(tmp_path, capsys):
    cases = [{"method": "m", "order": t} for t in (1, 2)]
    path = tmp_path / "sweep.csv"
    run_sweep(cases, _measure_case, CsvLog(path, ("method", "order")), device=CPU, timeout_s=30, isolate=False)
    pd.read_csv(path).assign(status=["timeout", "error"]).to_csv(path, index=False)  # as if order 1 timed out
    log = CsvLog(path, ("method", "order"), retry=("error",))  # the default of --retry
    assert log.done(cases[0]) and not log.done(cases[1]) and log.retried(cases) == ["error"]
    frame = run_sweep(cases, _measure_case, log, device=CPU, timeout_s=30, isolate=False)
    assert "1 rows kept in" in capsys.readouterr().out  # and says so
    assert list(frame.status) == ["timeout", "error"] and "broken on purpose" in frame.message[1]  # measured again
    frame = run_sweep(cases, _measure_case, CsvLog(path, ("method", "order"), retry=("timeout",)), device=CPU,
                      timeout_s=30, isolate=False)
    assert list(frame.status) == ["ok", "error"] and list(frame.time_ms[:1]) == [1.0]
    assert len(pd.read_csv(path)) == 2  # each key once: a row measured again replaces the kept one
    pd.DataFrame({"method": ["m", "m"], "order": [1, 1], "status": ["ok", "error"], "time_ms": [5.0, None]}).to_csv(
        path, index=False)  # an older file with a key twice: the newest row is the one done() reads, and replaced
    log = CsvLog(path, ("method", "order"), retry=("error",))
    log.append({"method": "m", "order": 1, "status": "ok", "time_ms": 1.0})
    assert pd.read_csv(path).time_ms.tolist() == [5.0, 1.0]


def test_a_kept_row_without_a_known_status_or_an_ok_row_without_its_numbers_is_measured_again(tmp_path, capsys):
    """Resuming trusted any row with the sweep's key: a file without a status column crashed the plot after "0 to
    run", and an ok row whose numbers were blanked, or a status none of the suite writes, was kept as measured."""
    cases = [{"method": "m", "order": 1}, {"method": "m", "order": 3}]
    path = tmp_path / "sweep.csv"
    pd.DataFrame({"method": ["m", "m"], "order": [1, 3], "time_ms": [4.0, 4.0]}).to_csv(path, index=False)
    log = CsvLog(path, ("method", "order"), columns=("status",), numbers=("time_ms",))
    assert not log.done(cases[0]) and log.retried(cases) == ["no status"] * 2
    frame = run_sweep(cases, _measure_case, log, device=CPU, timeout_s=30, isolate=False, numbers=("time_ms",))
    assert list(frame.status) == ["ok", "ok"] and list(frame.time_ms) == [1.0, 3.0]
    assert "2 rows kept in" in capsys.readouterr().out
    pd.DataFrame({"method": ["m", "m"], "order": [1, 3], "status": ["ok", "banana"], "time_ms": [None, 4.0]}).to_csv(
        path, index=False)
    log = CsvLog(path, ("method", "order"), columns=("status",), numbers=("time_ms",))
    assert log.retried(cases) == ["time_ms is nan", "status 'banana' is none of ok, oom, timeout, unsupported, error"]
    assert CsvLog(path, ("method", "order"), columns=("status",)).done(cases[0])  # no numbers to check: whole
    assert CsvLog(path, ("method", "order")).done(cases[1])  # a log without a status column checks no status


def test_a_resumed_sweep_says_when_the_rows_it_keeps_were_measured_with_other_settings(tmp_path, capsys):
    log = CsvLog(tmp_path / "sweep.csv", key_columns=("method", "order"), columns=("time_ms", "status"))
    run_sweep([{"method": "m", "order": 1, "repeats": 2}], _measure_case, log, device=CPU, timeout_s=30,
              isolate=False)
    capsys.readouterr()
    run_sweep([{"method": "m", "order": 1, "repeats": 2}], _measure_case, CsvLog(log.path, log.key_columns),
              device=CPU, timeout_s=30, isolate=False)
    assert "other settings" not in capsys.readouterr().out  # the same settings: kept silently
    frame = run_sweep([{"method": "m", "order": 1, "repeats": 7}], _measure_case, CsvLog(log.path, log.key_columns),
                      device=CPU, timeout_s=30, isolate=False)
    out = capsys.readouterr().out  # tqdm.write prints to stdout
    assert "measured with other settings (repeats 2 (asked: 7))" in out and "move" in out
    assert list(frame.repeats) == [2]  # kept, not re-measured: the message is what tells the user


def test_pytest_benchmark_json_converts_to_rows(tmp_path):
    report = {"benchmarks": [{"extra_info": {"method": "fd-batched", "order": 1, "status": "ok"},
                              "stats": {"median": 0.002, "iqr": 0.0005}}]}
    (tmp_path / "out.json").write_text(json.dumps(report))
    (row,) = rows_from_pytest_benchmark(tmp_path / "out.json")
    assert row == {"method": "fd-batched", "order": 1, "status": "ok", "time_ms": 2.0, "time_ms_iqr": 0.5}


def test_default_step_is_l_times_the_unit_roundoff_to_the_1_over_t_plus_p():
    from bench.steps import STEP_SCALE, default_step

    assert default_step(1, 2, torch.float64) == pytest.approx(STEP_SCALE * (2.0**-53) ** (1 / 3))
    assert default_step(4, 2, torch.float32) == pytest.approx(STEP_SCALE * (2.0**-24) ** (1 / 6))
    assert default_step(3, 4, torch.float32) == pytest.approx(STEP_SCALE * (2.0**-24) ** (1 / 7))


def test_best_steps_come_from_sweep_rows_of_the_same_function_only(tmp_path):
    from bench.steps import best_steps

    def rows(size, eps_errors, width=float("nan")):
        return [{"model": "deep-ebm", "size": size, "width": width, "weights": "random", "seed": 0, "device": "cpu",
                 "dtype": "float32",
                 "accuracy": 2, "order": 1, "eps": eps, "rel_error": err, "status": "ok"} for eps, err in eps_errors]

    pd.DataFrame([*rows("cpu", [(1.0, 0.1), (10.0, 0.01)]), *rows("paper", [(1.0, 0.001), (10.0, 0.1)]),
                  *rows("cpu", [(100.0, 1e-6)], width=2)]).to_csv(tmp_path / "eps_sweep.csv", index=False)
    # the sweep is an older one, with the width column that is n_chan now
    problem = {"model": "deep-ebm", "size": "cpu", "n_chan": None, "weights": "random", "seed": 0, "device": "cpu"}
    assert best_steps(tmp_path / "eps_sweep.csv", problem, dtype="float32", accuracy=2) == {1: 10.0}
    paper = {**problem, "size": "paper"}
    assert best_steps(tmp_path / "eps_sweep.csv", paper, dtype="float32", accuracy=2) == {1: 1.0}
    assert best_steps(tmp_path / "eps_sweep.csv", {**problem, "n_chan": 2}, dtype="float32", accuracy=2) == {1: 100.0}
    assert best_steps(tmp_path / "eps_sweep.csv", problem, dtype="float64", accuracy=2) == {}
    assert best_steps(tmp_path / "eps_sweep.csv", {**problem, "seed": 1}, dtype="float32", accuracy=2) == {}
