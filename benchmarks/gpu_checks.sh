#!/usr/bin/env bash
# Every GPU check of the kit in one go, for a machine with a CUDA device (the CPU suite skips them):
#   bash benchmarks/gpu_checks.sh OUTDIR [SECONDS]
# the CUDA tests, the paper-shape numerics, then the speed and memory benchmarks at the paper's widths
# (pooling, the 32-frame prefill of every mode, long videos streamed and one-shot), then the tiny
# recipe trained from scratch on the GPU for whatever is left of SECONDS (default 3600), so that its
# stage times can be compared with a CPU's. Each step's output goes to OUTDIR/log.txt; a failing
# step is reported and the next one runs.
# On a machine whose Python lacks the kit's own dependencies (the lent H200's image has torch, lightning
# and transformers 5.17, but not decord, av, open_clip_torch or transformers >= 5.24), install their wheels
# first, e.g. transformers==5.24.0 open_clip_torch==3.3.0 ftfy wcwidth av decord, into a --target folder
# on PYTHONPATH: without decord the training-stage test fails on its import, without 5.24 FastV's.
set -u
out=${1:?usage: gpu_checks.sh OUTDIR [SECONDS]}
budget=${2:-3600}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s, at ${SECONDS} s)" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc $rc in $((SECONDS - start)) s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)"
} 2>&1 | tee -a "$log"
step "CUDA tests" 180 $py -m pytest tests/test_cuda.py -q -p no:cacheprovider
step "paper-shape numerics" 120 $py benchmarks/paper_shape_check.py --device cuda
step "pooling, bf16" 120 $py benchmarks/pooling_bench.py --device cuda --dtype bfloat16 --json "$out/pooling_bf16.json"
step "prefill of every mode, paper widths" 240 $py benchmarks/throughput_bench.py --paper --json "$out/throughput_paper.json"
step "long video, paper widths" 240 $py benchmarks/long_video_bench.py --paper --frames 32 256 2048 --repeats 2 \
  --json "$out/long_video_paper.json"
left=$((budget - SECONDS))
if [ "$left" -gt 30 ]; then
  recipe=$(mktemp -d)
  step "tiny recipe from scratch" "$left" $py -m ppllava.train.recipe --out "$recipe"
  # Each finished stage's metrics (wall seconds among them) and the recipe's results, without the weights.
  (cd "$recipe" && find . \( -name '*.json' -o -name '*.md' -o -name '*.yaml' \) -size -2M -print0 \
    | tar --null -czf "$out/recipe.tar.gz" -T -)
fi
echo "=== done at ${SECONDS} s" | tee -a "$log"
