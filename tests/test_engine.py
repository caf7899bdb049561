"""The engine under every experiment: a run killed (SIGKILL) in the middle of training and rerun,
and a run split over 2 local processes (launch/local_2proc.sh), give the results of one
uninterrupted 1-process run. Each tiny config has two units of work (stacks or widths), so the two
processes share them, and checkpoints often, so the kill lands mid-stack."""

import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TEXT_DATA = ["--config.data.tokenizer=bytes", "--config.data.max_documents=40",
              "--config.data.vocab_size=256"]
# Each: the config and overrides; the train steps are many (checkpoints every 20) so that a
# kill lands in the middle of a stack.
CONFIGS = {
    "capacity": ["--config=configs/capacity.py", "--config.data.vocab_size=16",
                 "--config.data.seq_len=8", "--config.sweep.d_model=(8,)",
                 "--config.sweep.dataset_sizes=(8,32)", "--config.sweep.seeds=(0,)",
                 "--config.sweep.models_per_chunk=1", "--config.train.schedule=cosine",
                 "--config.train.batch_size=16", "--config.eval.batch_size=16",
                 "--config.eval.test_size=16", "--config.eval.curve_steps=3"],
    "text": ["--config=configs/text.py", "--config.data.tokenizer=bytes",
             "--config.data.seq_len=16", "--config.data.train_pool=48",
             "--config.data.heldout_pool=16", "--config.sweep.d_model=(8,16)",
             "--config.sweep.dataset_sizes=(4,16)", "--config.train.batch_size=8",
             "--config.eval.batch_size=32", "--config.eval.test_size=16",
             "--config.extraction.prefix_lengths=(4,)", "--config.extraction.member_samples=4",
             "--config.extraction.nonmember_samples=8", "--config.extraction.batch_size=8",
             "--config.analysis.top_k=0"],
    "membership": ["--config=configs/membership.py", "--config.sweep.d_model=(8,)",
                   "--config.sweep.dataset_sizes=(8,64)", "--config.eval.eval_size=32",
                   "--config.eval.bootstrap=10", "--config.lira.num_models=6",
                   "--config.lira.candidates=16", "--config.lira.steps=240",
                   "--config.lira.d_model=8"],
    "dynamics": ["--config=configs/dynamics.py", *_TEXT_DATA, "--config.data.num_samples=48",
                 "--config.sweep.d_model=(8,16)", "--config.dynamics.checkpoints=3",
                 "--config.dynamics.context=8", "--config.dynamics.continuation=8",
                 "--config.dynamics.contexts=(8,)", "--config.dynamics.continuations=(8,)",
                 "--config.dynamics.batch_size=48", "--config.predictor.steps=10"],
    "distributional": ["--config=configs/distributional.py", *_TEXT_DATA,
                       "--config.data.num_samples=64", "--config.data.heldout=16",
                       "--config.sweep.d_model=(8,16)", "--config.sweep.dataset_sizes=(8,64)",
                       "--config.distributional.eval_samples=16",
                       "--config.distributional.batch_size=16"],
}
TRAIN = ["--config.quiet=True", "--config.train.steps=240", "--config.train.warmup_steps=5",
         "--config.train.steps_per_call=20", "--config.train.checkpoint_every=20"]
# Fields that time the run or count what it reused: not results.
NOT_RESULTS = re.compile(r"wall|seconds|^device$|reused|already|trained$|rescored")


def args(name):
  return [*CONFIGS[name], *TRAIN]


def env():
  e = {**os.environ, "JAX_PLATFORMS": "cpu"}
  e.pop("XLA_FLAGS", None)
  return e


def run_main(name, workdir, *extra, timeout=600):
  proc = subprocess.run([sys.executable, "-m", "memjax.main", *args(name), *extra,
                         f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def results(name, workdir):
  """What the run measured, without timings: results.jsonl's rows (by key or name) or
  results.json's models/rows."""
  if name in ("dynamics", "distributional"):
    with open(os.path.join(workdir, "results.json")) as f:
      found = json.load(f)[{"dynamics": "models", "distributional": "rows"}[name]]
  else:
    with open(os.path.join(workdir, "results.jsonl")) as f:
      found = [json.loads(line) for line in f]
  return sorted((_strip(r) for r in found), key=lambda r: json.dumps(r, sort_keys=True))


def _strip(x):
  if isinstance(x, dict):
    return {k: _strip(v) for k, v in x.items() if not NOT_RESULTS.search(k)}
  if isinstance(x, list):
    return [_strip(v) for v in x]
  return x


def assert_close(a, b, where="results"):
  """Equal structure and values, floats to 1e-6 relative (NaN equals NaN)."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and sorted(a) == sorted(b), where
    for k in a:
      assert_close(a[k], b[k], f"{where}.{k}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      assert_close(x, y, f"{where}[{i}]")
  elif isinstance(a, float) and not isinstance(b, bool):
    assert isinstance(b, (int, float)), where
    assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (
        where, a, b)
  else:
    assert a == b, (where, a, b)


def checkpoint_steps(workdir):
  """Steps of the checkpoints on disk now (a stack's <step>.npz files)."""
  paths = glob.glob(os.path.join(workdir, "**", "*.npz"), recursive=True)
  return [int(os.path.basename(p)[:-4]) for p in paths
          if "checkpoint" in os.path.dirname(p) and os.path.basename(p)[:-4].isdigit()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """Each experiment's results of one uninterrupted 1-process run (made on first use)."""
  made = {}

  def get(name):
    if name not in made:
      workdir = tmp_path_factory.mktemp(f"{name}-reference")
      run_main(name, workdir)
      assert not checkpoint_steps(workdir)  # deleted once each unit is stored
      made[name] = results(name, workdir)
    return made[name]
  return get


def _slow_unless(*kept):
  """Parameters of every experiment; those not `kept` are left to -m slow (CI time: capacity's
  kill and 2-process runs are in tests/test_checkpoint.py and tests/test_multiprocess.py, which
  CI runs)."""
  return [pytest.param(n, marks=() if n in kept else pytest.mark.slow) for n in CONFIGS]


@pytest.mark.parametrize("name", _slow_unless("distributional"))
def test_sigkill_mid_training_then_rerun_gives_the_uninterrupted_results(name, tmp_path,
                                                                         uninterrupted):
  workdir = tmp_path / "w"
  proc = subprocess.Popen([sys.executable, "-m", "memjax.main", *args(name),
                           f"--workdir={workdir}"], cwd=ROOT, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not checkpoint_steps(workdir):
    assert proc.poll() is None, "the run ended before it was killed: " + proc.stderr.read()[-2000:]
    assert time.time() < deadline
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  steps = checkpoint_steps(workdir)
  assert steps and min(steps) < 240, steps  # killed in the middle of a stack
  rerun = run_main(name, workdir, "--config.quiet=False")  # quiet leaves out the log's info
  assert "resuming from its checkpoint at step" in rerun.stderr, rerun.stderr[-3000:]
  assert not checkpoint_steps(workdir)
  assert_close(results(name, workdir), uninterrupted(name))


@pytest.mark.parametrize("name", _slow_unless())
def test_two_local_processes_give_the_results_of_one(name, tmp_path, uninterrupted):
  workdir = tmp_path / "w"
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_2proc.sh"), *args(name),
                         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env={**env(), "MEMJAX_DEVICES_PER_PROCESS": "1"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "process 0 writes the report" in proc.stdout, proc.stdout[-2000:]
  assert_close(results(name, workdir), uninterrupted(name))


@pytest.mark.parametrize(
    "name", [n for n in _slow_unless("membership") if n.values[0] != "capacity"])
def test_dry_run_lists_each_unit_and_its_process_without_writing(name, tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.run([sys.executable, "-m", "memjax.main", *args(name), "--dry_run",
                         "--coordinator_address=127.0.0.1:1", "--num_processes=2",
                         "--process_id=1", f"--workdir={workdir}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  units = [l for l in proc.stdout.splitlines() if "steps of" in l and "tokens at most" in l]
  # membership: one target stack, then the 6 LiRA shadows split evenly over the 2 processes
  assert len(units) == 2 + (name == "membership"), proc.stdout
  for i, line in enumerate(units):
    assert line.endswith("process 1 (this one)" if i % 2 else "process 0"), units
  assert not workdir.exists()
