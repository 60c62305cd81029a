#!/usr/bin/env bash
# The scale-out run of issue 17 on this 2-core CPU: 1 against 2 ranks (torchrun, gloo, one torch thread per rank).
#   scaling:         data-parallel training steps (DDP) of every FD pair of the deep EBM (FD-SSM/SSM, FD-DSM/DSM,
#                    SSM-Taylor/SSM; global batch 16) and NCSN (FD-SSMVR/SSMVR; global batch 8), size cpu,
#                    strong and weak scaling, 11 synchronized rounds per launch; first, as a control, one rank alone
#                    on the per-rank batch of strong scaling at N = 2 (8 and 4);
#   stencil-scaling: fd-distributed against fd-batched, T = 1..6, the deep EBM at size cpu, batch 8, 21 rounds.
# Writes scaling.csv/.png, stencil_scaling.csv/.png and run.log here; resumable (re-running skips finished rows).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/cpu/scaling
export TQDM_DISABLE=1  # no progress bars in the log
load() { echo "# $(date -u +%FT%TZ) load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
{
  echo "# $(hostname): $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), torch $(python -c 'import torch; print(torch.__version__)')"
  load
  python -m bench scaling --device cpu --out "$OUT" --repeats 11 --world-sizes 1 --models deep-ebm --batch 8
  python -m bench scaling --device cpu --out "$OUT" --repeats 11 --world-sizes 1 --models ncsn --batch 4
  load
  time python -m bench scaling --device cpu --out "$OUT" --repeats 11
  load
  time python -m bench stencil-scaling --device cpu --out "$OUT" --repeats 21
  load
} 2>&1 | tee "$OUT/run.log"
