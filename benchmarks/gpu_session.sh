#!/usr/bin/env bash
# The issue-8 GPU measurements in one command that fits a 10-minute device call (H100/H200):
# the throughput preset (stacks against one-after-another and PyTorch, MFU, memory, scoring)
# and the kernel variants that choose the attention default and the GPU logits block.
#
#   bash benchmarks/gpu_session.sh [OUTPUT_DIR]     # default: $OUT, else ./gpu_out
#
# Writes gpu.json, variants.json and the printed logs to OUTPUT_DIR (each JSON after every
# measurement, so a part cut off keeps what it measured). Neither benchmark needs ml_collections
# or tensorflow-datasets. Budgets: throughput scores first (about a minute), then starts no new
# stack size after 3 more minutes; variants starts no new variant after 120 s; each part is cut
# off at 5 and 3.5 minutes.
set -uo pipefail
out="$(realpath -m "${1:-${OUT:-gpu_out}}")"
mkdir -p "$out"
cd "$(dirname "$0")/.."  # the repository root, for python -m
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python -c 'import jax; print("jax", jax.__version__, jax.devices())'
  git rev-parse --short HEAD 2>/dev/null || true; } 2>&1 | tee "$out/device.txt"
timeout 300 python -m benchmarks.throughput --gpu --max_minutes 3 --out "$out/gpu.json" \
  2>&1 | tee "$out/throughput.log"
echo "throughput exit ${PIPESTATUS[0]}"
timeout 210 python -m benchmarks.variants --gpu --budget_s 120 --out "$out/variants.json" \
  2>&1 | tee "$out/variants.log"
echo "variants exit ${PIPESTATUS[0]}"
