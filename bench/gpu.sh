#!/usr/bin/env bash
# The prepared GPU benchmark of issues 12 and 23: the fast-path checks, then the 1.3B streaming path as a user
# runs it (real Wan VAE and wav2vec2-base architectures, random weights, 480x832, PSB 8,6,4, MCI, URCR) with CUDA
# graphs, compiled, and eager bf16, then two training steps of each stage. One JSON, then the BENCHMARKS.md rows.
#
#   bench/gpu.sh [--dry-run | --plan] [OUT_DIR] [--bench.gpu-option=VALUE ...]
#
# --plan (any machine, no GPU, ~1 min): each section's forward count and estimated H100 time, and their sum
# against the 450 s cap (exit 1 if it does not fit). Sections are bounded by blocks and steps (bench/gpu.py
# SECTIONS); each writes the JSON the moment it finishes.
#
# OUT_DIR defaults to $OUT (the device tool's folder that comes back) or runs/gpu_bench. A fresh GPU machine
# lacks diffusers: `make gpu-wheels` on a machine with network writes .whl/ (git-ignored locally), and the
# device call carries it; this script installs from it without network. --dry-run runs the same code at
# tiny scale on whatever device is here (CI runs it through tests/test_gpu_bench.py).
# Time: the python part is capped at 450 s (--plan estimates ~300 s on an H100); a section cut short by the cap
# keeps what the earlier sections wrote.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
out_dir=${OUT:-runs/gpu_bench}
extra=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    --plan) PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} exec ${PYTHON:-python3} -m bench.gpu --plan ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    --*) extra+=("$arg") ;;  # passed to bench.gpu, e.g. --skip=train or --blocks=40
    *) out_dir=$arg ;;
  esac
done
mkdir -p "$out_dir"
py=${PYTHON:-python3}
if ! $py -c "import diffusers" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lit_avatar_site .whl/*.whl \
      || { echo "bench/gpu.sh: installing .whl/*.whl failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/lit_avatar_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "bench/gpu.sh: diffusers is missing and there is no .whl/ folder (run 'make gpu-wheels' first)" >&2
    exit 2
  fi
fi
# the project runs from its checkout (not installed on the GPU machine)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
json=$out_dir/gpu_bench.json
if [ $dry = 1 ]; then
  exec $py -m bench.gpu --dry-run --out "$json" ${extra[@]+"${extra[@]}"}
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv 2>/dev/null || true
timeout 450 $py -m bench.gpu --out "$json" ${extra[@]+"${extra[@]}"}
status=$?
if [ $status -ne 0 ]; then
  echo "bench/gpu.sh: bench.gpu exited with $status (124: the 450 s cap); rows of what finished:" >&2
  $py -m bench.gpu --rows "$json"
fi
exit $status
