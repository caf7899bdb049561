"""Checkpoints: round trip, corrupt files, and a killed CLI run resumed to the same results."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from memjax.engine import checkpoint
from memjax.model import gpt2
from memjax import train as train_lib
from memjax.train import ModelSpec, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two buckets of 4 models; checkpoints every 20 of 120 steps.
ARGS = ["--config=configs/capacity.py", "--config.data.vocab_size=16", "--config.data.seq_len=8",
        "--config.sweep.d_model=(8,16)", "--config.sweep.dataset_sizes=(4,32)",
        "--config.sweep.seeds=(0,1)", "--config.train.steps=120",
        "--config.train.steps_per_call=10", "--config.train.checkpoint_every=20",
        "--config.train.warmup_steps=5", "--config.train.batch_size=16",
        "--config.eval.batch_size=16", "--config.eval.test_size=16"]
TIMING_FIELDS = {"wall_s_per_chunk", "curve_wall_s_per_chunk"}


def leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if checkpoint._is_key(x):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


CFG = gpt2.ModelConfig(16, 8, 1, 8, 2, "bf16")
TCFG = TrainConfig(steps=2, batch_size=4, steps_per_call=2)
SPECS = [ModelSpec(4, i, 1e-2) for i in range(3)]


def test_round_trip_of_a_bf16_stack_with_padding_and_keys(tmp_path):
  state = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  ckpts = checkpoint.ChunkCheckpoints(str(tmp_path / "c"))
  assert ckpts.restore(state, 3) is None  # nothing saved yet
  # Save two real models (the third plays a padding copy) at three steps; the last 2 are kept.
  for step in (10, 20, 30):
    ckpts.save(step, state, 2, {"keys": ["a", "b"]})
  assert ckpts.steps() == [20, 30]
  step, leaves, meta = ckpts.restore(state, 2, expect={"keys": ["a", "b"]})
  assert step == 30 and meta["keys"] == ["a", "b"] and meta["n_models"] == 2
  restored = checkpoint.host_to_state(state, leaves)
  assert restored.params["wte"].dtype == np.dtype("bfloat16")
  assert jax.random.key_impl(restored.data_key_M) == jax.random.key_impl(state.data_key_M)
  leaves_equal(jax.tree.map(lambda x: x[:2], restored), jax.tree.map(lambda x: x[:2], state))
  # Padding rows are copies of the last real model.
  leaves_equal(jax.tree.map(lambda x: x[2], restored), jax.tree.map(lambda x: x[1], state))
  ckpts.delete()
  assert not os.path.exists(tmp_path / "c")


def test_corrupt_or_foreign_checkpoints_are_reported_and_skipped(tmp_path, caplog):
  state = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  ckpts = checkpoint.ChunkCheckpoints(str(tmp_path / "c"), keep=5)
  for step in (10, 20, 30, 40, 50):
    ckpts.save(step, state, 1, {"keys": ["a"]})
  path = lambda step: str(tmp_path / "c" / f"{step}.npz")
  # 50: one flipped byte in the middle of the array data (the archive's or our CRC32 catches it).
  raw = bytearray(open(path(50), "rb").read())
  raw[len(raw) // 2] ^= 0xFF
  open(path(50), "wb").write(bytes(raw))
  # 40: arrays that read back fine but are not what was saved (our CRC32s catch it).
  with np.load(path(40)) as archive:
    arrays = dict(archive)
  meta = json.loads(str(arrays["meta"]))
  meta["crc32"][0] ^= 1
  arrays["meta"] = np.array(json.dumps(meta))
  np.savez(path(40), **arrays)
  # 30: a truncated file; 20: metadata of another state (one array fewer).
  open(path(30), "r+b").truncate(os.path.getsize(path(30)) // 2)
  meta["crc32"], meta["dtypes"] = meta["crc32"][1:], meta["dtypes"][1:]
  arrays["meta"] = np.array(json.dumps({**meta, "step": 20}))
  np.savez(path(20), **arrays)
  # A save killed mid-write leaves a temporary file: never listed, removed on the next open.
  open(tmp_path / "c" / ".tmp-60-123.npz", "wb").write(b"partial")
  caplog.set_level("WARNING")
  ckpts = checkpoint.ChunkCheckpoints(str(tmp_path / "c"), keep=5)
  step, _, _ = ckpts.restore(state, 1, expect={"keys": ["a"]})
  assert step == 10
  text = caplog.text
  for bad in (50, 40, 30, 20):
    assert f"/{bad}.npz is corrupt or incomplete" in text
  assert "does not match its checksum" in text
  assert ckpts.steps() == [10]  # the bad ones are gone: new saves at 20..50 can be made
  assert sorted(os.listdir(tmp_path / "c")) == ["10.npz"]
  # A checkpoint of other models is not used.
  assert ckpts.restore(state, 1, expect={"keys": ["b"]}) is None
  assert "no usable checkpoint" in caplog.text


def test_checkpoints_of_the_earlier_orbax_format_are_reported_not_read(tmp_path, caplog):
  state = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  (tmp_path / "c" / "20" / "meta").mkdir(parents=True)
  (tmp_path / "c" / "20" / "commit_success.txt").write_text("done")
  caplog.set_level("WARNING")
  ckpts = checkpoint.ChunkCheckpoints(str(tmp_path / "c"))
  assert ckpts.restore(state, 1) is None and ckpts.model_keys() is None
  assert "orbax format of an earlier memjax" in caplog.text


def test_stale_chunk_checkpoints_are_removed_only_when_their_models_are_done(tmp_path, caplog):
  from memjax.experiments import capacity
  state = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  root = tmp_path / "checkpoints"
  for name, keys in (("chunk00000-done", ["a", "b"]), ("chunk00001-other", ["c"]),
                     ("chunk00002-live", ["d"]), ("chunk00003-notmine", ["e"]),
                     ("chunk00001-recut", ["d", "f"])):
    checkpoint.ChunkCheckpoints(str(root / name)).save(10, state, len(keys), {"keys": keys})
  assert checkpoint.ChunkCheckpoints(str(root / "chunk00001-other")).model_keys() == ["c"]
  (root / "chunk00004-empty").mkdir()
  (root / "chunk00004-unreadable").mkdir()
  (root / "chunk00004-unreadable" / "10").write_text("not a checkpoint")
  caplog.set_level("WARNING")
  capacity._cleanup_checkpoints(str(root), mine={0, 1, 2, 4}, live_ids={"chunk00002-live"},
                                done_keys={"a", "b", "x"}, sweep_keys={"a", "b", "x", "d", "f"})
  # Done models and an empty directory: removed. Another config's partly trained chunk, an
  # unreadable one, models of this sweep cut into other chunks (another device count), the
  # live one and another process's: kept, the first three with a warning saying which case.
  assert sorted(os.listdir(root)) == ["chunk00001-other", "chunk00001-recut", "chunk00002-live",
                                      "chunk00003-notmine", "chunk00004-unreadable"]
  assert caplog.text.count("this sweep does not train") == 2
  assert caplog.text.count("this plan cuts into other chunks") == 1


# ---------------------------------------------------------------------------------------------
# The CLI, killed and run again.

@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # A persistent compilation cache shared by the runs of this module: the same programs are
  # compiled once (the results are those of the same executables).
  cache = tmp_path_factory.mktemp("jax_cache")
  return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def cli(workdir, env, extra=()):
  return [sys.executable, "-m", "memjax.main", *ARGS, *extra, f"--workdir={workdir}"]


def run(workdir, env, extra=()):
  proc = subprocess.run(cli(workdir, env, extra), cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def read_rows(workdir):
  with open(os.path.join(workdir, "results.jsonl")) as f:
    return [json.loads(l) for l in f]


def assert_same_results(rows, reference, rtol=1e-6):
  assert len(rows) == len(reference) == len({r["key"] for r in rows})
  by_key = {r["key"]: r for r in reference}
  for row in rows:
    ref = by_key[row["key"]]
    assert set(row) == set(ref)
    for name, value in row.items():
      if name in TIMING_FIELDS:
        continue
      if isinstance(value, float):
        np.testing.assert_allclose(value, ref[name], rtol=rtol, atol=1e-9, err_msg=name)
      else:
        assert value == ref[name], name


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
  workdir = tmp_path_factory.mktemp("reference")
  run(workdir, env, ["--config.quiet=True"])
  assert not os.path.exists(workdir / "checkpoints")  # deleted once every chunk is written
  return read_rows(workdir)


def committed_steps(workdir):
  """{chunk dir: sorted committed steps} of the checkpoints on disk now."""
  found = {}
  for path in glob.glob(os.path.join(workdir, "checkpoints", "chunk*", "*.npz")):
    name = os.path.basename(path)
    if name[:-len(".npz")].isdigit():
      found.setdefault(os.path.dirname(path), []).append(int(name[:-len(".npz")]))
  return {k: sorted(v) for k, v in found.items()}


def start_and_stop(workdir, env, sig, enough):
  """Start the CLI, wait until `enough(committed_steps)` holds, then send `sig`."""
  proc = subprocess.Popen(cli(workdir, env), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not enough(committed_steps(workdir)):
    assert proc.poll() is None, "the run ended before it was stopped: " + proc.stderr.read()[-2000:]
    assert time.time() < deadline
    time.sleep(0.01)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, err


def test_sigkill_then_rerun_gives_the_uninterrupted_results(tmp_path, env, reference):
  workdir = tmp_path / "w"
  code, _ = start_and_stop(workdir, env, signal.SIGKILL, lambda found: bool(found))
  assert code == -signal.SIGKILL
  before = read_rows(workdir) if (workdir / "results.jsonl").exists() else []
  assert len(before) < len(reference)  # killed mid-sweep
  proc = run(workdir, env)
  assert "resuming from its checkpoint at step" in proc.stderr
  assert_same_results(read_rows(workdir), reference)
  assert not (workdir / "checkpoints").exists()


def test_sigterm_saves_and_a_corrupt_latest_checkpoint_falls_back(tmp_path, env, reference):
  workdir = tmp_path / "w"
  code, err = start_and_stop(workdir, env, signal.SIGTERM,
                             lambda found: any(len(s) >= 2 for s in found.values()))
  # SIGTERM: the run stops at the next step boundary, saves, and exits with 128 + 15.
  assert code == 128 + signal.SIGTERM, err[-3000:]
  assert "interrupted at step" in err and "run the same command again" in err
  found = committed_steps(workdir)
  chunk_dir, steps = next((d, s) for d, s in found.items() if len(s) >= 2)
  latest, previous = steps[-1], steps[-2]
  # Corrupt the latest checkpoint.
  with open(os.path.join(chunk_dir, f"{latest}.npz"), "r+b") as fh:
    fh.write(b"\x00garbage\x00")
  proc = run(workdir, env)
  assert f"{latest}.npz is corrupt or incomplete" in proc.stderr, proc.stderr[-3000:]
  assert f"resuming from its checkpoint at step {previous}" in proc.stderr
  assert_same_results(read_rows(workdir), reference)
  assert not (workdir / "checkpoints").exists()
