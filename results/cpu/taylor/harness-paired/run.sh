#!/usr/bin/env bash
# Figure 2 against Taylor mode with the harness's own pairing: every row timed alternately with fd-batched (compiled
# rows with compiled fd-batched) in its worker, 15 rounds, its time_ratio the median of the per-round ratios.
# Run from the repository root: bash results/cpu/taylor/harness-paired/run.sh
set -uo pipefail
out=results/cpu/taylor/harness-paired
ckpt=results/cpu/checkpoints/deep-ebm-DSM.pt
export OMP_NUM_THREADS=2 PYTHONPATH=.
for batch in 2 64; do
  rm -f $out/batch$batch/derivatives.csv  # one run: nothing resumed
  python -m bench derivatives --device cpu --checkpoint $ckpt --batch $batch \
      --methods exact-reverse,exact-taylor,fd-batched --compiled --steps-from results/cpu/eps_sweep.csv \
      --repeats 15 --timeout 200 --out $out/batch$batch > $out/batch$batch.log 2>&1
  # the rows that ran out of their budget (a slow day; a cold compile cache), measured again with 600 s: dropped from
  # the CSV, the same command resumes and runs only them
  python - "$out/batch$batch/derivatives.csv" <<'PY'
import sys
import pandas as pd
path = sys.argv[1]
frame = pd.read_csv(path)
print(path, "dropping", frame[frame.status == "timeout"][["method", "order"]].to_dict("records"))
frame[frame.status != "timeout"].to_csv(path, index=False)
PY
  python -m bench derivatives --device cpu --checkpoint $ckpt --batch $batch \
      --methods exact-reverse,exact-taylor,fd-batched --compiled --steps-from results/cpu/eps_sweep.csv \
      --repeats 15 --timeout 600 --out $out/batch$batch > $out/batch$batch-timeouts.log 2>&1
  python - "$out/batch$batch" <<'PY'
import sys
from pathlib import Path
import pandas as pd
from bench.experiments import experiment
folder = Path(sys.argv[1])
(folder / "summary.md").write_text(experiment("derivatives").report(pd.read_csv(folder / "derivatives.csv"), folder))
PY
done
