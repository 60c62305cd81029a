#!/usr/bin/env bash
# The GPU checks and benchmarks of this project in one run of at most about 8 minutes, for a lent GPU machine that
# has torch and triton but no package registry: it runs from the checkout with PYTHONPATH=., not an install.
#
#   bash scripts/gpu-h200.sh          # into a new results/gpu-h200/<UTC date and time>/, or OUT=folder
#   FDSM_GIT_COMMIT=$(git rev-parse --short HEAD) ...   # from the machine that has the real .git: a lent machine's
#                                                       # copy of .git can be older than its files (bench.environment)
#
# Each stage has its own time limit and its own log in $OUT; one that fails or runs out of time is reported in
# $OUT/stages.log and the next stage still runs. The sweeps write their CSV row by row, so a stage cut short keeps
# the rows it measured. Compiled Triton kernels are tested on CUDA tensors (TRITON_INTERPRET=0).
set -u
# A fresh folder by default: the sweeps resume from the CSVs in $OUT, so an old folder would keep its old rows.
OUT=${OUT:-results/gpu-h200/$(date -u +%Y-%m-%dT%H%M)}
PY=${PY:-python3}  # on the lent machine, the plain python3 is the one that holds torch
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

stage() {  # stage NAME LIMIT_S COMMAND...: run COMMAND under a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name (limit ${limit} s): $*" | tee -a "$OUT/stages.log"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  echo "=== $name: exit $code after $((SECONDS - start)) s" | tee -a "$OUT/stages.log"
  [ "$code" -eq 0 ] || failed="$failed $name"
}
failed=""

{ nvidia-smi; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  > "$OUT/environment.log" 2>&1
# The open issue's measurement first, so that a slow machine still gets it: IEEE float32, as the paper's 1080 Ti.
stage train-steps 175 "$PY" -m bench train-steps --device cuda --models deep-ebm,ncsn --warmup 5 --repeats 20 \
  --timeout 60 --out "$OUT"
# The FD rows again with TF32 convolutions, PyTorch's default, on the same machine: what the precision does to the
# speed-ups (each FD row times its counterpart beside it, so these three rows give all three ratios).
stage train-steps-tf32 80 "$PY" -m bench train-steps --device cuda --models deep-ebm,ncsn --float32-math tf32 \
  --objectives FD-DSM,FD-SSM,FD-SSMVR --warmup 5 --repeats 15 --timeout 60 --out "$OUT/tf32"
# Where those steps' time goes: kernel time against step time, launches and FLOPs per step; gzipped Chrome traces of
# the deep EBM's rows (NCSN's double backward makes ~44k aten calls a step: its pair only, tables only).
stage profile-deep-ebm 55 "$PY" scripts/profile_step.py --device cuda --models deep-ebm --warmup 5 --trace \
  --out "$OUT/profile-deep-ebm"
stage profile-ncsn 40 "$PY" scripts/profile_step.py --device cuda --models ncsn --objectives SSMVR,FD-SSMVR \
  --warmup 3 --steps 2 --out "$OUT/profile-ncsn"
stage cuda-tests 25 env TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py
stage cuda-marked 15 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
# Figure 2 in IEEE float32 (the committed GPU run was TF32, 54 s; IEEE is slower, and a stage cut short loses the
# figure, which is drawn at the end). The kernel benchmark is not rerun here: the kernels are unchanged since
# results/gpu-h200/script-run; `python3 -m bench kernels --device cuda` when there is time.
stage derivatives 90 "$PY" -m bench derivatives --device cuda --orders 1,2,3,4,5 --timeout 20 --out "$OUT"
if [ -n "$failed" ]; then
  echo "failed or cut short:$failed (see $OUT/stages.log)"
  exit 1
fi
