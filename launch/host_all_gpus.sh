#!/usr/bin/env bash
# All GPUs of this host in one process: every stack's model axis is sharded over them
# (NamedSharding over a jax.make_mesh of the local devices; no communication between models).
#
#   launch/host_all_gpus.sh --config=configs/capacity_paper.py --workdir=runs/paper
#
# CUDA_VISIBLE_DEVICES restricts the set. Kill it at any time and rerun to resume.
set -euo pipefail
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
exec python -m memjax.main "$@"
