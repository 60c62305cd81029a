#!/usr/bin/env bash
# The automatic FD step and FD's error estimate on the trained deep EBM (issue 18): the commands behind
# results/cpu/auto-step/ (see README.md). Run from the repository root: bash results/cpu/auto-step/run.sh
# T = 1..6 in float32 and bfloat16 at 64 points per row, float64 at 16 (its forward is ~6x slower on this CPU).
# The eps-sweeps cover the automatic step's default stencil per order and dtype (fdsm.fd_error.default_accuracy:
# float32 p = 4 at T = 1, 3, 4, 5, p = 6 at T = 2, p = 2 at T = 6; float64 p = 4; bfloat16 p = 2), on grids around
# each dtype's optima (results/cpu/eps_sweep.csv). Timed calls: 1 warm-up and 3 repeats for the float32 rows a
# cost is read from, 1 call for the stencil comparison and the other dtypes.
set -uo pipefail
out=results/cpu/auto-step
ckpt=results/cpu/checkpoints/deep-ebm-DSM.pt
export OMP_NUM_THREADS=2 PYTHONPATH=.
rm -rf $out/eps-sweep $out/auto $out/auto-richardson $out/auto-float64 $out/auto-bfloat16 $out/fixed  # no resuming
base=(--device cpu --checkpoint $ckpt --threads 2)
f32=("${base[@]}" --batch 64)
timed=(--repeats 3 --warmup 1)
once=(--repeats 1 --warmup 0)
{
  date -u +"start %FT%TZ"
  # 1. The error against the step for the default stencils: float32 at 8 steps per decade over 3.2..32, where its
  #    optima lie (past 32 this model's derivatives blow up); float64 over 0.032..3.2 and bfloat16 over 3.2..100.
  grid32=(--dtypes float32 --eps-min 3.1622776601683795 --eps-max 31.622776601683793 --per-decade 8)
  python -m bench eps-sweep "${f32[@]}" "${grid32[@]}" --orders 1,3,4,5 --accuracies 4 --out $out/eps-sweep
  python -m bench eps-sweep "${f32[@]}" "${grid32[@]}" --orders 2 --accuracies 6 --out $out/eps-sweep
  python -m bench eps-sweep "${f32[@]}" "${grid32[@]}" --orders 6 --accuracies 2 --out $out/eps-sweep
  python -m bench eps-sweep "${base[@]}" --batch 16 --dtypes float64 --eps-min 0.03162277660168379 \
      --eps-max 3.1622776601683795 --per-decade 4 --accuracies 4 --out $out/eps-sweep
  python -m bench eps-sweep "${f32[@]}" --dtypes bfloat16 --eps-min 3.1622776601683795 --eps-max 100 \
      --per-decade 4 --accuracies 2 --out $out/eps-sweep
  # 2. The automatic step in float32 for each stencil accuracy (the default per order is one of these rows), beside
  #    exact-taylor; then the Richardson stencils of the defaults (accuracy p + 2 from h and h/2).
  python -m bench derivatives "${f32[@]}" --eps auto --accuracy 4 --methods fd-batched,exact-taylor "${timed[@]}" \
      --out $out/auto
  python -m bench derivatives "${f32[@]}" --eps auto --accuracy 6 --methods fd-batched "${timed[@]}" --out $out/auto
  python -m bench derivatives "${f32[@]}" --eps auto --accuracy 2 --orders 6 --methods fd-batched "${timed[@]}" \
      --out $out/auto
  python -m bench derivatives "${f32[@]}" --eps auto --accuracy 8 --methods fd-batched "${once[@]}" --out $out/auto
  python -m bench derivatives "${f32[@]}" --eps auto --richardson --methods fd-batched "${once[@]}" \
      --out $out/auto-richardson
  # 3. The automatic step with its default stencils in float64 and bfloat16, beside exact-taylor.
  python -m bench derivatives "${base[@]}" --batch 16 --dtype float64 --eps auto --methods fd-batched,exact-taylor \
      --repeats 1 --warmup 1 --out $out/auto-float64
  python -m bench derivatives "${f32[@]}" --dtype bfloat16 --eps auto --methods fd-batched,exact-taylor \
      --repeats 1 --warmup 1 --out $out/auto-bfloat16
  # 4. The float32 default stencils at the sweep's best grid step: a fixed step's time and error, with its estimate.
  for group in "1,3,4,5 4" "2 6" "6 2"; do
    set -- $group
    python -m bench derivatives "${f32[@]}" --orders "$1" --accuracy "$2" --steps-from $out/eps-sweep/eps_sweep.csv \
        --methods fd-batched "${timed[@]}" --out $out/fixed
  done
  # 5. The done-when tables, from the CSVs alone.
  python results/cpu/auto-step/summarize.py
  date -u +"end %FT%TZ"
} > $out/run.log 2>&1
