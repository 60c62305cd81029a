"""report.md summarizes one run per CSV, and its environment is that of the rows it summarizes."""

import pandas as pd
import torch

from bench.experiments import experiment
from bench.report import environment, newest_run

DERIVATIVES, TRAIN_STEPS = experiment("derivatives"), experiment("train-steps")


def _derivative_rows(dtype: str, methods: list[str], times: list[float], timestamp: str) -> pd.DataFrame:
    return pd.DataFrame({"model": "deep-ebm", "size": "cpu", "n_chan": float("nan"),  # NaN: the preset's
                         "weights": "random", "seed": 0, "batch": 1, "device": "cpu", "method": methods,
                         "order": 1, "accuracy": 2, "eps": 0.1, "dtype": dtype,
                         "time_ms": times, "status": "ok", "timestamp": timestamp})


def test_a_later_run_in_another_dtype_is_summarized_alone_not_mixed_with_the_earlier_one():
    older = _derivative_rows("float64", ["exact-reverse", "fd-batched"], [30.0, 10.0], "2026-01-01T00:00:00")
    newer = _derivative_rows("float32", ["fd-batched"], [3.0], "2026-01-02T00:00:00")
    frame = pd.concat([older, newer], ignore_index=True)
    run, left_out = newest_run(frame, DERIVATIVES.keys, DERIVATIVES.axes)
    assert list(zip(run.method, run.dtype, strict=True)) == [("fd-batched", "float32")] and left_out == 2


def test_a_rerun_of_the_same_configuration_keeps_the_newest_row_of_each_case():
    first = _derivative_rows("float32", ["exact-reverse", "fd-batched"], [30.0, 10.0], "2026-01-01T00:00:00")
    again = _derivative_rows("float32", ["fd-batched"], [9.0], "2026-01-02T00:00:00")
    run, left_out = newest_run(pd.concat([first, again], ignore_index=True), DERIVATIVES.keys,
                               DERIVATIVES.axes)
    assert dict(zip(run.method, run.time_ms, strict=True)) == {"exact-reverse": 30.0, "fd-batched": 9.0}
    assert left_out == 1


def test_train_steps_runs_differing_in_float32_math_are_not_mixed_and_the_environment_says_which_ran():
    rows = pd.DataFrame({"model": "deep-ebm", "objective": ["SSM", "FD-SSM", "SSM"], "size": "paper", "batch": 64,
                         "dtype": "float32", "device": "cuda", "memory_format": "channels_last",
                         "cudnn_benchmark": True, "float32_math": ["ieee", "ieee", "tf32"], "seed": 0,
                         "status": "ok", "timestamp": ["2026-01-01", "2026-01-01", "2026-01-02"]})
    run, left_out = newest_run(rows, TRAIN_STEPS.keys, TRAIN_STEPS.axes)
    assert list(run.objective) == ["SSM"] and left_out == 2
    env = environment({"train_steps.csv": run}, torch.device("cpu"))
    assert env["float32_math"] == "tf32" and env["timestamp"] == "2026-01-02"
    env = environment({"train_steps.csv": rows}, torch.device("cpu"))
    assert env["float32_math"] == "ieee, tf32" and env["timestamp"] == "2026-01-01 to 2026-01-02"
