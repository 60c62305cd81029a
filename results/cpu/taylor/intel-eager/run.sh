#!/usr/bin/env bash
# Issue 14's missed eager lines (T = 5, 6 at batch 2 and 64), measured again on another CPU (an Intel Xeon; the
# numbers of record, harness-paired/, ran on an AMD EPYC): the same command as harness-paired/run.sh, eager methods
# only, every row timed alternately with fd-batched, 15 rounds. Run from the repository root, with nothing else on
# the machine: bash results/cpu/taylor/intel-eager/run.sh
set -uo pipefail
out=results/cpu/taylor/intel-eager
ckpt=results/cpu/checkpoints/deep-ebm-DSM.pt
export OMP_NUM_THREADS=2 PYTHONPATH=.
lscpu | grep "Model name" > $out/machine.txt
for batch in 2 64; do
  rm -f $out/batch$batch/derivatives.csv  # one run: nothing resumed
  python -m bench derivatives --device cpu --checkpoint $ckpt --batch $batch --orders 1,5,6 \
      --methods exact-reverse,exact-taylor,fd-batched --steps-from results/cpu/eps_sweep.csv \
      --repeats 15 --timeout 600 --out $out/batch$batch > $out/batch$batch.log 2>&1
done
