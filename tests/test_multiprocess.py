"""launch/local_2proc.sh: two CPU processes (jax.distributed) share a sweep's chunks."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One bucket of 8 models in 4 chunks of 2: process 0 runs chunks 0 and 2, process 1 chunks 1, 3.
ARGS = ["--config=configs/capacity.py", "--config.quiet=True", "--config.data.vocab_size=16",
        "--config.data.seq_len=8", "--config.sweep.d_model=(8,)",
        "--config.sweep.dataset_sizes=(4,8,16,32)", "--config.sweep.seeds=(0,1)",
        "--config.sweep.models_per_chunk=2", "--config.train.steps=40",
        "--config.train.steps_per_call=20", "--config.train.batch_size=16",
        "--config.eval.batch_size=16", "--config.eval.test_size=16"]


def read(path):
  with open(path) as f:
    return [json.loads(l) for l in f]


def test_two_processes_split_the_chunks_and_merge_every_model_once(tmp_path):
  workdir = tmp_path / "w"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_2proc.sh"), *ARGS,
                         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=400, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  per_process = [read(workdir / f"results.{i}.jsonl") for i in (0, 1)]
  assert [len(rows) for rows in per_process] == [4, 4]
  merged = read(workdir / "results.jsonl")
  keys = [r["key"] for r in merged]
  assert len(keys) == 8 and len(set(keys)) == 8
  assert set(keys) == {r["key"] for rows in per_process for r in rows}
  assert sorted((r["dataset_size"], r["seed"]) for r in merged) == sorted(
      (n, s) for n in (4, 8, 16, 32) for s in (0, 1))
  # Chunks went round-robin: process 0 trained N=4 and N=16 (chunks 0, 2), process 1 the others.
  assert {r["dataset_size"] for r in per_process[0]} == {4, 16}
  assert {r["dataset_size"] for r in per_process[1]} == {8, 32}
  assert (workdir / "summary.json").exists()
  assert "4 models trained (by this process), 0 already done" in proc.stdout
  assert not (workdir / "checkpoints").exists()

  # A later run (here one process) trains nothing and merges results.jsonl again.
  os.remove(workdir / "results.jsonl")
  proc = subprocess.run([sys.executable, "-m", "memjax.main", *ARGS, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "0 models trained, 8 already done" in proc.stdout
  again = read(workdir / "results.jsonl")
  assert sorted(r["key"] for r in again) == sorted(keys)
