#!/usr/bin/env bash
# One GPU (GPU=<index>, default 0): the whole sweep on it, chunk after chunk.
#
#   GPU=0 launch/single_gpu.sh --config=configs/capacity_gpu_check.py --workdir=runs/gpu_check
#
# Kill it at any time and run the same command again: it resumes from the chunks' checkpoints.
set -euo pipefail
export CUDA_VISIBLE_DEVICES="${GPU:-0}"
# JAX preallocates this fraction of the GPU; memjax sizes chunks from what the allocator offers.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
exec python -m memjax.main "$@"
