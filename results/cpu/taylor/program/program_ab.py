"""Taylor mode's pass as fx-generated Python code (``fdsm.taylor.propagate._program``) against the node-by-node
interpreter it replaced, timed on the same pass: the trained deep EBM (``cpu`` preset), float32, the eager and the
fused Taylor pass of ``fdsm-bench derivatives --compiled`` and ``fd-batched``, at batch 2 and 64, T = 5 and 6, the
variants of one case alternated round by round in one process (``bench.timing.measure_interleaved``). The
interpreter is ``fdsm/taylor/propagate.py`` as of commit b072752, read from git and imported beside the current one
(its ``run_jets`` swapped in for the old variants).

    PYTHONPATH=. python results/cpu/taylor/program/program_ab.py > results/cpu/taylor/program/program_ab.log

Prints, per case, each variant's median time and its ratio to fd-batched per round, and new / old per round
(median [quartiles], ``bench.timing.paired_ratio``); every variant's D^T is checked equal to the others' first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import Shared
from bench.derivative_case import FUSED, derivative_closure
from bench.environment import metadata, module_at, prepare_process
from bench.experiments.derivatives import DerivativesConfig, cases
from bench.timing import measure_interleaved, paired_ratio
from fdsm.taylor import propagate

OLD_COMMIT = "b072752"
ROUNDS = {2: 60, 64: 20}
CPU = torch.device("cpu")


def with_pass(call, run_jets):
    def timed_call():
        propagate.run_jets = run_jets
        try:
            return call()
        finally:
            propagate.run_jets = NEW
    return timed_call


def quartiles(ratio) -> str:
    return f"{ratio.median:.3f} [{ratio.q1:.3f}, {ratio.q3:.3f}]"


prepare_process()
torch.set_num_threads(2)
NEW, OLD = propagate.run_jets, module_at(OLD_COMMIT, "fdsm/taylor/propagate.py", "propagate_old").run_jets
print(metadata(CPU))
for batch, rounds in ROUNDS.items():
    for order in (5, 6):
        config = DerivativesConfig(checkpoint=Path("results/cpu/checkpoints/deep-ebm-DSM.pt"),
                                   steps_from=Path("results/cpu/eps_sweep.csv"), batch=batch, orders=(order,),
                                   methods=("exact-taylor", "fd-batched"), compiled=True)
        calls = {c["method"]: derivative_closure(c) for c in cases(config, Shared(device=CPU))
                 if not c["method"].endswith("+compiled")}
        variants = {"fd-batched": calls["fd-batched"]}
        for name, method in (("fused", "exact-taylor" + FUSED), ("eager", "exact-taylor")):
            variants[f"{name}-old"] = with_pass(calls[method], OLD)
            variants[f"{name}-new"] = with_pass(calls[method], NEW)
        for call in variants.values():  # traces and compiles, before the timed rounds
            call()
        for name in ("fused", "eager"):  # the same numbers either way
            assert torch.equal(variants[f"{name}-old"](), variants[f"{name}-new"]()), name
        timings = dict(zip(variants, measure_interleaved(list(variants.values()), CPU, warmup=2, repeats=rounds),
                           strict=True))
        print(f"batch {batch}, T = {order}, {rounds} rounds")
        for name, timing in timings.items():
            print(f"  {name:11s} {timing.median_ms:8.2f} ms   / fd-batched "
                  f"{quartiles(paired_ratio(timing, timings['fd-batched']))}")
        for name in ("fused", "eager"):
            print(f"  {name} new / old pass: {quartiles(paired_ratio(timings[f'{name}-new'], timings[f'{name}-old']))}")
