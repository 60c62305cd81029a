"""pytest-benchmark suites generated from the experiments' declarations: one benchmark per case of each experiment
that declares a ``benchmark`` (``bench.experiments.EXPERIMENTS``; today derivatives and train-steps).

    pytest bench/ --benchmark-json=out.json            # timings + extra_info (a full CSV row each)
    pytest bench/ --benchmark-disable                  # a smoke run: each case once, no statistics
    FDSM_BENCH_FULL=1 pytest bench/                    # the experiments' default sizes, not their --quick presets

Each benchmark times the same call as the experiment's command (``Experiment.benchmark(case).call``) with
``benchmark.pedantic``; on CUDA the target synchronizes, so the clock stops when the kernels finish. The row's other
columns (peak memory probed in this process, error against the float64 reference, loss) and its status go into
``extra_info`` with the case's configuration and the environment metadata, so that
``bench.csvlog.rows_from_pytest_benchmark("out.json")`` gives rows of the experiment's CSV schema (``extra_info``'s
``experiment`` names the CSV) and the same ``CsvLog`` writes them. A case whose check fails (a wrong answer) fails
the test; pytest-benchmark still writes it to the JSON, so its row says ``error`` and carries no time. A case that
cannot run here (``fd-fused`` without CUDA) is skipped, with the reason.
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.config import Shared
from bench.environment import metadata, prepare_process
from bench.experiments import EXPERIMENTS

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FULL = os.environ.get("FDSM_BENCH_FULL") == "1"
ROUNDS = 5
SHARED = Shared(device=DEVICE, quick=not FULL)


def _cases() -> list:
    params = []
    for experiment in EXPERIMENTS:
        if experiment.benchmark is None:
            continue
        config = experiment.default if FULL else experiment.quick
        for case in experiment.cases(config, SHARED):
            label = "-".join(f"T{case[k]}" if k == "order" else str(case[k]) for k in experiment.keys
                             if k in ("model", "objective", "method", "order"))
            params.append(pytest.param(experiment, case, id=f"{experiment.name}-{label}"))
    return params


@pytest.fixture(autouse=True, scope="module")
def _ieee_float32():
    prepare_process()  # as in every fdsm-bench process: IEEE float32, steady malloc (bench.environment)


def _synchronized(call):
    if DEVICE.type != "cuda":
        return call

    def target():
        out = call()
        torch.cuda.synchronize(DEVICE)
        return out

    return target


@pytest.mark.parametrize(("experiment", "case"), _cases())
def test_experiment(benchmark, experiment, case):
    benchmark.group = experiment.name
    try:
        target = experiment.benchmark(case)
    except NotImplementedError as err:  # a method or model this machine cannot run
        pytest.skip(str(err))
    result = benchmark.pedantic(_synchronized(target.call), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    row = target.finish(result)
    # pytest-benchmark keeps a case's stats in the JSON even when the assert below fails it, so the row itself
    # must say that this time belongs to a wrong answer.
    benchmark.extra_info.update({"experiment": experiment.stem, **case, "repeats": ROUNDS, **row,
                                 **metadata(DEVICE)})
    assert row["status"] == "ok", row.get("message")
