"""Taylor mode's pass as fx-generated Python code (``fdsm.taylor.propagate._program``) against the node-by-node
interpreter it replaced, timed on the same pass: the trained deep EBM (``cpu`` preset), float32, the eager and the
fused Taylor pass of ``fdsm-bench derivatives --compiled`` and ``fd-batched``, at batch 2 and 64, T = 5 and 6, the
variants of one case alternated round by round in one process. The interpreter is ``fdsm/taylor/propagate.py`` as
of commit b072752, read from git and imported beside the current one (its ``run_jets`` swapped in for the old
variants).

    PYTHONPATH=. python results/cpu/taylor/program/program_ab.py > results/cpu/taylor/program/program_ab.log

Prints, per case, each variant's median time and its ratio to fd-batched per round, and new / old per round
(median [quartiles]); every variant's D^T is checked equal to the others' first.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.config import Shared
from bench.derivative_case import FUSED, derivative_closure
from bench.environment import metadata, prepare_process
from bench.experiments.derivatives import DerivativesConfig, cases
from fdsm.taylor import propagate

OLD_COMMIT = "b072752"
ROUNDS = {2: 60, 64: 20}


def old_propagate_module():
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:fdsm/taylor/propagate.py"], capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "propagate_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("propagate_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["propagate_old"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def with_pass(call, run_jets):
    def timed_call():
        propagate.run_jets = run_jets
        try:
            return call()
        finally:
            propagate.run_jets = NEW
    return timed_call


def quartiles(values: list[float]) -> str:
    v, n = sorted(values), len(values)
    return f"{v[n // 2]:.3f} [{v[n // 4]:.3f}, {v[3 * n // 4]:.3f}]"


prepare_process()
torch.set_num_threads(2)
NEW, OLD = propagate.run_jets, old_propagate_module().run_jets
print(metadata(torch.device("cpu")))
for batch, rounds in ROUNDS.items():
    for order in (5, 6):
        config = DerivativesConfig(checkpoint=Path("results/cpu/checkpoints/deep-ebm-DSM.pt"),
                                   steps_from=Path("results/cpu/eps_sweep.csv"), batch=batch, orders=(order,),
                                   methods=("exact-taylor", "fd-batched"), compiled=True)
        calls = {c["method"]: derivative_closure(c) for c in cases(config, Shared(device=torch.device("cpu")))
                 if not c["method"].endswith("+compiled")}
        variants = {"fd-batched": calls["fd-batched"]}
        for name, method in (("fused", "exact-taylor" + FUSED), ("eager", "exact-taylor")):
            variants[f"{name}-old"] = with_pass(calls[method], OLD)
            variants[f"{name}-new"] = with_pass(calls[method], NEW)
        for call in variants.values():  # warm-up: traces and compiles
            for _ in range(3):
                call()
        for name in ("fused", "eager"):  # the same numbers either way
            assert torch.equal(variants[f"{name}-old"](), variants[f"{name}-new"]()), name
        times = {name: [] for name in variants}
        for _ in range(rounds):
            for name, call in variants.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        print(f"batch {batch}, T = {order}, {rounds} rounds")
        for name, t in times.items():
            print(f"  {name:11s} {statistics.median(t) * 1e3:8.2f} ms   / fd-batched "
                  f"{quartiles([a / b for a, b in zip(t, times['fd-batched'], strict=True)])}")
        for name in ("fused", "eager"):
            ratios = [a / b for a, b in zip(times[f"{name}-new"], times[f"{name}-old"], strict=True)]
            print(f"  {name} new / old pass: {quartiles(ratios)}")
