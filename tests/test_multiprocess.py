"""launch/local_2proc.sh: two CPU processes (jax.distributed) share a sweep's chunks."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

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


# Chunks long enough (1000 steps, a checkpoint every 50) to be killed in the middle of training.
LONG = [a for a in ARGS if not a.startswith(("--config.train.steps", "--config.quiet"))] + [
    "--config.train.steps=1000", "--config.train.steps_per_call=10",
    "--config.train.checkpoint_every=50"]
TIMING_FIELDS = {"wall_s_per_chunk", "curve_wall_s_per_chunk"}


def checkpointed_chunks(workdir):
  """Indices of the chunks that have a committed checkpoint on disk now."""
  found = set()
  for name in os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else ():
    try:
      if any(f.endswith(".npz") and f[0].isdigit() for f in
             os.listdir(workdir / "checkpoints" / name)):
        found.add(int(name[5:10]))
    except FileNotFoundError:  # the chunk finished and removed its checkpoints meanwhile
      pass
  return found


@pytest.mark.slow  # about 2 minutes on 2 cores; the 2-process split and merge runs in CI
def test_both_processes_resume_their_own_chunks_after_a_kill(tmp_path):
  # One CPU device a process, and one for the reference: the same compiled program everywhere.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "MEMJAX_DEVICES_PER_PROCESS": "1"}
  env.pop("XLA_FLAGS", None)
  # The reference: the same sweep in one process, uninterrupted.
  ref_dir = tmp_path / "ref"
  proc = subprocess.run([sys.executable, "-m", "memjax.main", *LONG, "--config.quiet=True",
                         "--cpu_devices=1", f"--workdir={ref_dir}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  reference = {r["key"]: r for r in read(ref_dir / "results.jsonl")}

  # Two processes, killed (SIGKILL, no chance to save) once chunk 0 (process 0) and chunk 1
  # (process 1) both have a checkpoint.
  workdir = tmp_path / "w"
  command = ["bash", os.path.join(ROOT, "launch", "local_2proc.sh"), *LONG,
             "--config.quiet=True", f"--workdir={workdir}"]
  first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
  deadline = time.time() + 240
  while not {0, 1} <= checkpointed_chunks(workdir):
    assert first.poll() is None, "the run ended before it was killed: " + first.stderr.read()[-2000:]
    assert time.time() < deadline
    time.sleep(0.01)
  os.killpg(first.pid, signal.SIGKILL)
  first.wait(timeout=60)
  assert not (workdir / "results.jsonl").exists()

  # The rerun resumes each process's chunk from that process's checkpoint (logged unless quiet).
  proc = subprocess.run(command[:-2] + command[-1:], cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for chunk in (0, 1):
    assert re.search(rf"chunk {chunk} \([^)]*\): resuming from its checkpoint at step [1-9]",
                     proc.stderr), proc.stderr[-3000:]
  assert "orbax" not in proc.stderr and "corrupt" not in proc.stderr
  rows = read(workdir / "results.jsonl")
  assert sorted(r["key"] for r in rows) == sorted(reference)
  for row in rows:
    ref = reference[row["key"]]
    for name, value in row.items():
      if name in TIMING_FIELDS:
        continue
      if isinstance(value, float):
        np.testing.assert_allclose(value, ref[name], rtol=1e-6, atol=1e-9, err_msg=name)
      else:
        assert value == ref[name], name
  assert not (workdir / "checkpoints").exists()


def _two_processes(workdir, args, cpu_devices):
  """Processes 0 and 1 of a 2-process run, process i on cpu_devices[i] CPU devices: their
  (return code, stderr)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "memjax.main", *args, f"--workdir={workdir}",
       f"--cpu_devices={cpu_devices[i]}", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  errors = [p.communicate(timeout=300)[1] for p in procs]
  return [(p.returncode, err) for p, err in zip(procs, errors)]


def test_processes_that_plan_different_chunks_stop_before_training(tmp_path):
  # Process 0 splits the host into 2 CPU devices, process 1 into 1. With models_per_chunk=0 and
  # a per-device memory, their plans cut the bucket into different chunks; chunk c % 2 of each
  # plan would then train some models twice and others never. Both must refuse, before training.
  workdir = tmp_path / "w"
  args = [a for a in ARGS if not a.startswith("--config.sweep.models_per_chunk")] + [
      "--config.sweep.models_per_chunk=0", "--config.sweep.device_memory_gib=0.0002",
      "--config.train.steps=20", "--config.train.warmup_steps=5"]
  for returncode, err in _two_processes(workdir, args, (2, 1)):
    assert returncode == 2, err[-3000:]
    assert "the processes planned different chunks of the sweep" in err
  assert not list(workdir.glob("results*.jsonl")) if workdir.exists() else True


def test_a_process_that_cannot_plan_stops_the_others_too(tmp_path):
  # The CPU's assumed 4 GiB is shared by a process's devices: split 8 ways, a model that needs
  # about 1 GiB (a large scoring batch) fits process 0's one device but not process 1's eight.
  # Process 1 stops planning; process 0 must stop too, not wait for it.
  args = [*ARGS, "--config.eval.batch_size=262144"]
  (rc0, err0), (rc1, err1) = _two_processes(tmp_path / "w", args, (1, 8))
  assert rc1 == 2 and "memjax: error: config." in err1, err1[-3000:]
  assert rc0 == 2 and "memjax: error: process 1 could not plan the sweep: config." in err0, (
      err0[-3000:])
