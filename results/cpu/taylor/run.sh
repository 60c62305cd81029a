#!/usr/bin/env bash
# Taylor mode against FD and nested autograd on this CPU: the commands behind results/cpu/taylor/ (see README.md).
# Run from the repository root: bash results/cpu/taylor/run.sh
set -uo pipefail
out=results/cpu/taylor
ckpt=results/cpu/checkpoints/deep-ebm-DSM.pt
export OMP_NUM_THREADS=2 PYTHONPATH=.
for batch in 2 64; do
  python -m bench derivatives --device cpu --checkpoint $ckpt --batch $batch \
      --methods exact-reverse,exact-taylor,fd-batched --steps-from results/cpu/eps_sweep.csv --timeout 150 \
      --out $out/batch$batch \
      > $out/batch$batch.log 2>&1
done
python -m bench train-steps --device cpu --models deep-ebm,nice,dkef \
    --objectives SSM,SSM-Taylor,FD-SSM --out $out > $out/train_steps.log 2>&1
