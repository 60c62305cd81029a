#!/usr/bin/env bash
# Taylor mode against FD and nested autograd on this CPU: the commands behind results/cpu/taylor/ (see README.md).
# Run from the repository root: bash results/cpu/taylor/run.sh
set -uo pipefail
out=results/cpu/taylor
ckpt=results/cpu/checkpoints/deep-ebm-DSM.pt
export OMP_NUM_THREADS=2 PYTHONPATH=.
rm -f $out/batch2/derivatives.csv $out/batch64/derivatives.csv $out/train_steps.csv  # one run: nothing resumed
# --compiled: each method again under torch.compile, compiled Taylor mode against compiled FD (fdsm/compiled.py),
# and exact-taylor+fused: eager Taylor mode with each elementwise rule one compiled kernel (fdsm/taylor/fused.py)
for batch in 2 64; do
  python -m bench derivatives --device cpu --checkpoint $ckpt --batch $batch \
      --methods exact-reverse,exact-taylor,fd-batched --compiled --steps-from results/cpu/eps_sweep.csv --timeout 150 \
      --out $out/batch$batch \
      > $out/batch$batch.log 2>&1
done
python results/cpu/taylor/compiled/inductor_grad.py > results/cpu/taylor/compiled/inductor_grad.log 2>&1
python -m bench train-steps --device cpu --models deep-ebm,nice,dkef \
    --objectives SSM,SSM-Taylor,FD-SSM --out $out > $out/train_steps.log 2>&1
# The ratio tables of README.md, by report.md's own sections (time and memory over fd-batched, errors, times).
python - <<'PY'
from pathlib import Path
import pandas as pd
from bench.experiments import experiment
out = Path("results/cpu/taylor")
derivatives, train_steps = experiment("derivatives"), experiment("train-steps")
for batch in (2, 64):
    folder = out / f"batch{batch}"
    (folder / "summary.md").write_text(derivatives.report(pd.read_csv(folder / "derivatives.csv"), folder))
(out / "train_steps_summary.md").write_text(train_steps.report(pd.read_csv(out / "train_steps.csv"), out))
PY
