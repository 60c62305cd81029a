r"""Figure 2's ratios timed in pairs: exact-taylor against fd-batched, eager and compiled, round by round.

    PYTHONPATH=. python scripts/paired_derivatives.py --checkpoint results/cpu/checkpoints/deep-ebm-DSM.pt \
        --steps-from results/cpu/eps_sweep.csv --batches 2,64 --out results/cpu/taylor/paired/paired.csv

``fdsm-bench derivatives`` times one case after another, so a ratio of two of its rows also holds whatever the
machine did between them; on shared cores that is as large as the effect. Here the calls of one (batch, T) are
timed alternately, round by round, in one process (``bench.timing.measure_interleaved``), and each ratio is taken
per round (``paired_ratio``): a slow phase lands on all of them alike. The eager calls (``exact-taylor``, its fused
rules, ``fd-batched``, ``exact-reverse``) alternate among themselves, and the compiled ones among themselves: at
batch 2 a compiled pass run right after an eager one (which leaves the caches full of its own data) is slower than
after another compiled one, the Taylor pass more than FD's, so mixing the groups skewed compiled against compiled
(results/cpu/taylor/README.md has the numbers). The cases are ``derivatives``' own (its
``cases``, the same steps from ``--steps-from``, the same calls of ``bench.derivative_case``): ``exact-taylor``,
``fd-batched`` and, with ``--compiled`` (on by default), both under ``torch.compile`` (``fdsm.compiled``) and
``exact-taylor+fused`` (eager Taylor mode with each elementwise rule one compiled kernel, ``fdsm.taylor.fused``);
``exact-reverse`` up to ``--reverse-max-order`` (its time and memory grow exponentially: 2.7 s and 15 GiB a call
at batch 64, T = 6). Every call is warmed up (traced, compiled) before the timed rounds and compared with the
float64 reference once. One row per (batch, T): each method's median, the paired ratios taylor / fd (eager and
compiled, fused) and reverse / taylor (eager, fused) with their quartiles, and each method's error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from bench.accuracy import relative_error
from bench.config import Shared, comma_ints
from bench.derivative_case import COMPILED, FUSED, derivative_closure, reference_for
from bench.environment import metadata, prepare_process
from bench.experiments.derivatives import DerivativesConfig, cases
from bench.timing import fix_cpu_threads, measure_interleaved, paired_ratio

RATIOS = {  # column stem -> (numerator, denominator)
    "taylor_over_fd": ("exact-taylor", "fd-batched"),
    "fused_taylor_over_fd": ("exact-taylor" + FUSED, "fd-batched"),
    "compiled_taylor_over_fd": ("exact-taylor" + COMPILED, "fd-batched" + COMPILED),
    "reverse_over_taylor": ("exact-reverse", "exact-taylor"),
    "reverse_over_fused_taylor": ("exact-reverse", "exact-taylor" + FUSED),
}


def paired(batch: int, order: int, args: argparse.Namespace) -> dict:
    methods = ["exact-taylor", "fd-batched"] + (["exact-reverse"] if order <= args.reverse_max_order else [])
    config = DerivativesConfig(checkpoint=args.checkpoint, steps_from=args.steps_from, batch=batch, orders=(order,),
                               methods=tuple(methods), compiled=args.compiled)
    shared = Shared(device=torch.device("cpu"))
    problem = [c for c in cases(config, shared) if c["method"] != "exact-reverse" + COMPILED]  # not compilable
    calls = {c["method"]: derivative_closure(c) for c in problem}
    row = {"model": "deep-ebm", "batch": batch, "order": order, "dtype": "float32", "repeats": args.repeats,
           "eps": problem[0]["eps"]}
    for case in problem:  # the error once, which also warms each call up (trace, compile)
        row[f"rel_error_{case['method']}"] = relative_error(calls[case["method"]](), reference_for(case)).median
    timings = {}
    for group in ([m for m in calls if not m.endswith(COMPILED)], [m for m in calls if m.endswith(COMPILED)]):
        if group:  # eager calls alternate with eager ones, compiled with compiled (see the docstring)
            timings |= dict(zip(group, measure_interleaved([calls[m] for m in group], torch.device("cpu"), warmup=1,
                                                           repeats=args.repeats), strict=True))
    for method, timing in timings.items():
        row[f"time_ms_{method}"] = timing.median_ms
    for stem, (numerator, denominator) in RATIOS.items():
        if numerator in timings and denominator in timings:
            ratio = paired_ratio(timings[numerator], timings[denominator])
            row |= {stem: ratio.median, f"{stem}_q1": ratio.q1, f"{stem}_q3": ratio.q3}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--steps-from", type=Path, required=True)
    parser.add_argument("--batches", type=comma_ints, default=(2, 64))
    parser.add_argument("--orders", type=comma_ints, default=(1, 2, 3, 4, 5, 6))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--reverse-max-order", type=int, default=5)
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/local/paired.csv"))
    args = parser.parse_args(argv)
    prepare_process()
    fix_cpu_threads(args.threads)
    rows = []
    for batch in args.batches:
        for order in args.orders:
            row = {**paired(batch, order, args), **metadata(torch.device("cpu"))}
            ratios = ", ".join(f"{stem} {row[stem]:.2f} [{row[stem + '_q1']:.2f}, {row[stem + '_q3']:.2f}]"
                               for stem in RATIOS if stem in row)
            print(f"B={batch} T={order}: {ratios}", flush=True)
            rows.append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out, index=False)  # every row kept as it comes
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
