#!/usr/bin/env bash
# The automatic FD step and FD's error estimate on the trained deep EBM (issue 18): the commands behind
# results/cpu/auto-step/ (see README.md). Run from the repository root: bash results/cpu/auto-step/run.sh
# float32, 64 points per row, T = 1..6; the eps-sweep grid is 1..100 at 4 steps per decade (where every float32
# optimum of this model lies; results/cpu/eps_sweep.csv); timed calls: 1 warm-up and 5 repeats.
set -uo pipefail
out=results/cpu/auto-step
ckpt=results/cpu/checkpoints/deep-ebm-DSM.pt
export OMP_NUM_THREADS=2 PYTHONPATH=.
common=(--device cpu --checkpoint $ckpt --batch 64 --threads 2)
sweep=(--dtypes float32 --orders 1,2,3,4,5,6 --eps-min 1 --eps-max 100 --per-decade 4)
{
  date -u +"start %FT%TZ"
  # 1. The error against the step, for the stencils the automatic step uses: p = 2 and 4, and Richardson on p = 2.
  python -m bench eps-sweep "${common[@]}" "${sweep[@]}" --accuracies 2,4 --out $out/eps-sweep
  python -m bench eps-sweep "${common[@]}" "${sweep[@]}" --accuracies 2 --richardson --out $out/eps-sweep-richardson
  # 2. The automatic step (its default stencils in float32: p = 4 at T <= 5, p = 2 at T = 6), timed with its
  #    probes, beside exact-taylor; then Richardson on p = 2 (accuracy 4 from two steps).
  python -m bench derivatives "${common[@]}" --eps auto --methods fd-batched,exact-taylor --repeats 5 --out $out/auto
  python -m bench derivatives "${common[@]}" --eps auto --richardson --accuracy 2 --methods fd-batched --repeats 5 \
      --out $out/auto-richardson
  # 3. The same stencils at the sweep's best grid step: a fixed step's time and error, with its estimate.
  python -m bench derivatives "${common[@]}" --orders 1,2,3,4,5 --accuracy 4 \
      --steps-from $out/eps-sweep/eps_sweep.csv --methods fd-batched --repeats 5 --out $out/fixed
  python -m bench derivatives "${common[@]}" --orders 6 --accuracy 2 \
      --steps-from $out/eps-sweep/eps_sweep.csv --methods fd-batched --repeats 5 --out $out/fixed
  python -m bench derivatives "${common[@]}" --richardson --accuracy 2 \
      --steps-from $out/eps-sweep-richardson/eps_sweep.csv --methods fd-batched --repeats 5 --out $out/fixed
  # 4. The done-when table, from the CSVs alone.
  python results/cpu/auto-step/summarize.py
  date -u +"end %FT%TZ"
} > $out/run.log 2>&1
