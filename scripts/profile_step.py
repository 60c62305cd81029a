"""Where a training step's time goes: torch.profiler over a few steps of chosen (model, objective) rows, set up
exactly as ``fdsm-bench train-steps`` sets them up (size, batch, layout, cuDNN search, IEEE float32).

    PYTHONPATH=. python scripts/profile_step.py --models deep-ebm --objectives SSM,FD-SSM --out results/cpu/profile
    PYTHONPATH=. python scripts/profile_step.py --device cuda --models deep-ebm,ncsn --trace --out DIR

Per row it warms up, times ``--steps`` steps without the profiler (``time_ms``, as train-steps does), then profiles
as many (after one more, profiled and discarded, that takes the profiler's start-up) and writes:

- ``<model>_<objective>.txt``: the ops by self time, totals over the profiled steps, device (kernel) time on CUDA,
  CPU time on the CPU;
- ``<model>_<objective>.json.gz`` with ``--trace``: the Chrome trace (Perfetto), the step's phases marked as ranges
  (``loss``, ``backward``, ``update``: ``fdsm.training.PHASES``);
- a row of ``profile.csv``:
  - ``time_ms``, the median step time without the profiler;
  - ``gflop``, the step's model FLOPs (``bench.flops.step_gflop``: convolutions and matmuls by torch's formulas,
    elementwise ops count zero), and ``tflops`` = gflop / time_ms, the rate the step ran them at;
  - ``aten_ops``, the aten operator calls per step (nested calls included): the host's dispatch work;
  - on CUDA, ``kernels`` (device activities per step: kernels, copies, memsets), ``kernel_ms`` (their summed
    device time per step) and ``device_busy`` = kernel_ms / time_ms, a rough ratio (profiled kernel time over an
    unprofiled median). Near 1, the step is arithmetic on the device; well below 1, the device waits on the host
    (launch overhead, syncs).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from bench.config import Shared, UsageError, comma_words
from bench.environment import float32_math, prepare_process
from bench.experiments.train_steps import DEFAULT, cases
from bench.flops import step_gflop
from bench.step_case import Stepper
from bench.timing import fix_cpu_threads, measure_time
from fdsm.recipes import RECIPES
from fdsm.training import PHASES


class PhaseRanges:
    """A stand-in for a Stepper's clock that opens a profiler range per phase of ``fdsm.training.PHASES``, so that
    the trace shows where each phase begins and ends."""

    def __init__(self):
        self.current: record_function | None = None

    def _open(self, phase: str) -> None:
        self.current = record_function(phase)
        self.current.__enter__()

    def start(self) -> None:
        self._open(PHASES[0])

    def mark(self, phase: str) -> None:
        self.current.__exit__(None, None, None)
        following = PHASES.index(phase) + 1
        if following < len(PHASES):
            self._open(PHASES[following])


def profile_row(case: dict, *, steps: int, out: Path, trace: bool) -> dict:
    """Time, then profile, ``steps`` steps of one train-steps case; write its table (and trace); its CSV row."""
    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    step = Stepper(RECIPES.get(f"{case['model']}/{case['objective']}"), case)
    timing = measure_time(step, device, warmup=int(case["warmup"]), repeats=steps)
    step.clock = PhaseRanges()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    name = f"{case['model']}_{case['objective'].replace('*', '-serial')}"
    profiled = []

    def keep(prof: profile) -> None:  # at the end of the active steps
        profiled.append(prof.key_averages())
        if trace:
            prof.export_chrome_trace(str(out / f"{name}.json.gz"))  # gzip: a second-order step has ~10^4 events

    # One profiled but discarded step first, so that the profiler's own start-up is not counted.
    with warnings.catch_warnings():  # "events are cleared at the end of each cycle": ``keep`` has them by then
        warnings.filterwarnings("ignore", message=".*Profiler clears events", category=UserWarning)
        with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps),
                     on_trace_ready=keep) as prof:
            for _ in range(1 + steps):
                step()
                if cuda:  # each step complete before the next, as the step timer has it
                    torch.cuda.synchronize(device)
                prof.step()
    (events,) = profiled
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    (out / f"{name}.txt").write_text(f"{case['model']} {case['objective']}: {steps} profiled steps, totals over "
                                     f"all of them\n\n{events.table(sort_by=sort, row_limit=25)}\n")
    gflop = step_gflop(case, RECIPES.get(f"{case['model']}/{case['objective']}"))
    row = {**{k: v for k, v in case.items() if k != "repeats"}, "steps": steps, "time_ms": timing.median_ms,
           "time_ms_iqr": timing.iqr_ms, "gflop": gflop, "tflops": gflop / timing.median_ms,
           "aten_ops": sum(e.count for e in events if e.key.startswith("aten::")) / steps,
           "threads": timing.threads, "float32_math": float32_math()}
    if cuda:  # device activities, not the device-side copies of the phase ranges, which span them
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        row["kernels"] = sum(e.count for e in kernels) / steps
        row["kernel_ms"] = sum(e.self_device_time_total for e in kernels) / steps / 1e3  # us -> ms
        row["device_busy"] = row["kernel_ms"] / timing.median_ms
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=comma_words, default=("deep-ebm",), help="models (default: deep-ebm)")
    parser.add_argument("--objectives", type=comma_words, default=(), help="row labels (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch", type=int, help="batch (default: train-steps' own)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps timed, then profiled (default: 3)")
    parser.add_argument("--trace", action="store_true", help="also write each row's Chrome trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/local/profile"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    fix_cpu_threads()
    prepare_process()  # as every fdsm-bench process (bench.environment)
    config = dataclasses.replace(DEFAULT, models=args.models, objectives=args.objectives, batch=args.batch,
                                 warmup=args.warmup)
    try:
        todo = cases(config, Shared(device=torch.device(args.device), seed=args.seed))
    except UsageError as err:  # an unknown model or row label: one line, exit 2
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in todo:
        rows.append(profile_row(case, steps=args.steps, out=args.out, trace=args.trace))
        shown = {k: rows[-1][k] for k in ("time_ms", "gflop", "tflops", "aten_ops", "kernels", "kernel_ms",
                                          "device_busy")
                 if k in rows[-1]}
        print(f"{case['model']:10s} {case['objective']:10s} "
              + "  ".join(f"{k} {v:.2f}" for k, v in shown.items()), flush=True)
        pd.DataFrame(rows).to_csv(args.out / "profile.csv", index=False)  # row by row: a cut-short run keeps them
    print(f"wrote {args.out / 'profile.csv'} and a table per row")


if __name__ == "__main__":
    main()
