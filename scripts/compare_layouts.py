"""Which memory layout makes a model's training steps faster on this machine: every objective's step timed in
NCHW ("contiguous") and NHWC ("channels_last") side by side, alternately in one process.

    PYTHONPATH=. python scripts/compare_layouts.py --models deep-ebm,ncsn --out results/cpu/layouts/side_by_side.csv
    PYTHONPATH=. python scripts/compare_layouts.py --device cuda --warmup 5 --repeats 15 \
        --out results/gpu-h200/settings/layouts/side_by_side.csv

For each (model, objective) it writes the median step time in each layout and the median and quartiles of the
per-round ratio contiguous / channels_last (above 1: channels_last is faster). This is the measurement behind
``train_steps.MEMORY_FORMAT`` (NOTE [memory format] in ``fdsm.recipes``). On CUDA the models are the paper's
size and batch, with cuDNN's algorithm search on (as ``train-steps``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd
import torch

from bench.config import Shared, comma_words
from bench.environment import float32_math, prepare_process
from bench.experiments.train_steps import DEFAULT, cases
from bench.step_case import Stepper
from bench.timing import fix_cpu_threads, measure_interleaved, paired_ratio
from fdsm.recipes import RECIPES

LAYOUTS = ("contiguous", "channels_last")


def compare(model: str, *, batch: int | None, warmup: int, repeats: int, seed: int,
            device: str = "cpu") -> list[dict]:
    device = torch.device(device)
    config = dataclasses.replace(DEFAULT, models=(model,), batch=batch)  # train-steps' size, batch and cuDNN
    rows = []
    for case in cases(config, Shared(device=device, seed=seed)):
        recipe = RECIPES.get(f"{model}/{case['objective']}")
        case = {k: v for k, v in case.items() if k not in ("memory_format", "warmup", "repeats")}
        steppers = [Stepper(recipe, {**case, "memory_format": layout}) for layout in LAYOUTS]
        nchw, nhwc = measure_interleaved(steppers, device, warmup=warmup, repeats=repeats)
        ratio = paired_ratio(nchw, nhwc)
        rows.append({**case, "time_ms_contiguous": nchw.median_ms, "time_ms_channels_last": nhwc.median_ms,
                     "contiguous_over_channels_last": ratio.median, "ratio_q1": ratio.q1, "ratio_q3": ratio.q3,
                     "repeats": repeats, "threads": nchw.threads, "float32_math": float32_math()})
        print(f"{model:10s} {recipe.objective:10s} contiguous {nchw.median_ms:8.1f} ms  channels_last "
              f"{nhwc.median_ms:8.1f} ms  ratio {ratio.median:.2f} [{ratio.q1:.2f}, {ratio.q3:.2f}]", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=comma_words, default=("deep-ebm", "ncsn"), help="image models")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch", type=int, help="batch (default: train-steps' own)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/local/side_by_side.csv"))
    args = parser.parse_args()
    fix_cpu_threads()
    prepare_process()  # as every fdsm-bench process (bench.environment)
    rows = [row for model in args.models
            for row in compare(model, batch=args.batch, warmup=args.warmup, repeats=args.repeats, seed=args.seed,
                               device=args.device)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
