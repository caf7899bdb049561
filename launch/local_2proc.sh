#!/usr/bin/env bash
# Two CPU processes on this machine: a multi-host run in miniature (jax.distributed over localhost).
#
#   launch/local_2proc.sh --config=configs/capacity.py --workdir=runs/two [--config.X=...]
#
# Unit i of the run (a capacity chunk, a text or membership stack, a dynamics or distributional
# width) runs on process i % 2; process 0 writes the results and the report once every unit is
# done (capacity: each process appends to results.<process>.jsonl, merged into results.jsonl). MEMJAX_PORT picks the coordinator's port
# (default: a free one); MEMJAX_DEVICES_PER_PROCESS is the number of CPU devices a process (default:
# half the cores each, so that the two processes do not oversubscribe the machine).
set -uo pipefail

PORT="${MEMJAX_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export JAX_PLATFORMS=cpu
half=$(( $(nproc) / 2 ))
per_process="${MEMJAX_DEVICES_PER_PROCESS:-$(( half > 8 ? 8 : (half < 1 ? 1 : half) ))}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${per_process}"

pids=()
for i in 0 1; do
  python -m memjax.main "$@" --coordinator_address="127.0.0.1:${PORT}" --num_processes=2 \
    --process_id="$i" &
  pids+=("$!")
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM

# If one process fails, stop the other (it would wait for its peer at the final barrier).
status=0
for _ in "${pids[@]}"; do
  wait -n
  code=$?
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
    kill "${pids[@]}" 2>/dev/null
  fi
done
exit "$status"
