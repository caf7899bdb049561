"""Sweep plan, chunking by memory, --dry_run, saturation and the multi-process results files."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from memjax import config as config_lib
from memjax.model import gpt2
from memjax.engine import sweep
from memjax import train as train_lib
from memjax.train import ModelSpec, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name="capacity"):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_settings(**sweep_fields):
  config = load_config()
  config.data.vocab_size = 16
  config.data.seq_len = 8
  config.sweep.d_model = (8, 16)
  config.sweep.dataset_sizes = (4, 8, 16, 32)
  config.sweep.seeds = (0, 1)
  config.train.batch_size = 16
  config.eval.batch_size = 16
  for name, value in sweep_fields.items():
    section, field = name.split("__")
    config[section][field] = value
  return config_lib.validate(config)


class FakeDevice:
  platform = "fake"

  def __init__(self, limit=None):
    self.limit = limit

  def memory_stats(self):
    return None if self.limit is None else {"bytes_limit": self.limit}


def test_forced_chunk_size_splits_buckets_evenly_and_pads_to_the_device_count():
  settings = tiny_settings(sweep__models_per_chunk=3)
  plan = sweep.plan_chunks(settings, [FakeDevice()] * 2)
  assert len(plan.buckets) == 2 and all(len(b.specs) == 8 for b in plan.buckets)
  # 8 models in chunks of at most 3: 3 chunks of 3, 3, 2, all padded to 4 (2 devices).
  sizes = [(c.bucket, len(c.specs), c.padded_size) for c in plan.chunks]
  assert sizes == [(0, 3, 4), (0, 3, 4), (0, 2, 4), (1, 3, 4), (1, 3, 4), (1, 2, 4)]
  assert [c.index for c in plan.chunks] == list(range(6))
  # Every model of the sweep is in exactly one chunk, in plan order.
  flat = [(c.shape, s) for c in plan.chunks for s in c.specs]
  assert flat == [(b.shape, s) for b in plan.buckets for s in b.specs]


def test_auto_chunk_size_comes_from_the_device_memory():
  settings = tiny_settings()
  mem = sweep.model_memory(plan_shape(settings, 0), settings.train, settings.eval_batch_size)
  assert mem.total == mem.state + max(mem.activations + mem.likelihood, mem.eval)
  # A device limit that holds exactly 3 models of the first bucket (after the headroom).
  limit = int(3.5 * mem.total / sweep.MEMORY_HEADROOM)
  plan = sweep.plan_chunks(settings, [FakeDevice(limit)])
  first = [c for c in plan.chunks if c.bucket == 0]
  assert [len(c.specs) for c in first] == [3, 3, 2] and plan.memory_source == "fake bytes_limit"
  # Two devices hold twice as many a chunk.
  plan = sweep.plan_chunks(settings, [FakeDevice(limit)] * 2)
  assert [len(c.specs) for c in plan.chunks if c.bucket == 0] == [4, 4]
  # sweep.device_memory_gib overrides what the device says; the CPU default is shared.
  big = dataclasses.replace(settings, device_memory_gib=1.0)
  plan = sweep.plan_chunks(big, [FakeDevice(limit)])
  assert plan.memory_source == "sweep.device_memory_gib" and len(plan.chunks) == 2
  plan = sweep.plan_chunks(settings, [FakeDevice()] * 4)
  assert plan.device_memory == int(sweep.DEFAULT_CPU_MEMORY_GIB / 4 * 2**30)


def plan_shape(settings, i):
  return config_lib.model_shapes(settings)[i]


def test_memory_estimate_terms():
  shape = gpt2.ModelConfig(2048, 64, 2, 128, 4, "bf16")
  tcfg = TrainConfig(batch_size=32, vocab_chunk=1024)
  mem = sweep.model_memory(shape, tcfg, eval_batch=64)
  assert mem.state == 4 * 2 * 667_136  # params, grads and two Adam moments, in bf16
  assert mem.likelihood == 2 * 32 * 64 * 1024 * 4  # the fp32 [B*S, vocab_chunk] chunk, twice
  k = sweep.ACTIVATION_FLOATS_PER_LAYER
  assert mem.activations == 32 * 64 * 2 * k * 128 * 2 + 2 * 32 * 4 * 64 * 64 * (4 + 2)
  # Mixed precision: fp32 state plus the bf16 copy of the parameters; bf16 activations.
  mixed = sweep.model_memory(dataclasses.replace(shape, precision="bf16-mixed"), tcfg, 64)
  assert mixed.state == 4 * 4 * 667_136 + 2 * 667_136
  assert (mixed.activations, mixed.likelihood, mixed.eval) == (mem.activations, mem.likelihood,
                                                               mem.eval)


@pytest.mark.parametrize("field,value,needle", [
    ("train__batch_size", 1 << 20, "config.train.batch_size: one L1 d8 fp32 model needs about"),
    ("eval__batch_size", 1 << 22, "config.eval.batch_size: one L1 d8 fp32 model needs about"),
])
def test_a_model_that_cannot_fit_names_the_field_to_change(field, value, needle):
  settings = tiny_settings(**{field: value, "sweep__device_memory_gib": 0.5})
  with pytest.raises(config_lib.ConfigError) as e:
    sweep.plan_chunks(settings, [FakeDevice()])
  assert str(e.value).startswith(needle), str(e.value)
  assert "or raise sweep.device_memory_gib" in str(e.value) and "\n" not in str(e.value)


def test_d_model_is_named_when_the_parameters_alone_do_not_fit():
  config = load_config()
  config.sweep.d_model = (4096,)
  config.model.num_heads = 2
  config.train.batch_size = 1
  config.eval.batch_size = 1
  config.sweep.device_memory_gib = 1.0
  with pytest.raises(config_lib.ConfigError, match=r"^config.sweep.d_model: one L1 d4096"):
    sweep.plan_chunks(config_lib.validate(config), [FakeDevice()])


def run_main(args, workdir, **env):
  return subprocess.run([sys.executable, "-m", "memjax.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **env})


TINY = ["--config=configs/capacity.py", "--config.quiet=True", "--config.data.vocab_size=16",
        "--config.data.seq_len=8", "--config.sweep.d_model=(8,16)",
        "--config.sweep.dataset_sizes=(4,32)", "--config.sweep.seeds=(0,1,2)",
        "--config.eval.batch_size=16"]


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
  def dry_run(cpu_devices):
    proc = run_main(TINY + ["--dry_run", "--config.sweep.models_per_chunk=4",
                            f"--cpu_devices={cpu_devices}"], tmp_path / "w")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
  out = dry_run(1)
  assert out.startswith("plan: 2 buckets, 4 chunks, 12 models on 1 device a process x 1 process;"), out
  assert "bucket 0: L1 d8 fp32, 1,080 params, 6 models in 2 chunks; one model ~" in out
  assert "  chunk 3: 3 models (padded to 3, 3 a device" in out
  # The host split into 2 CPU devices: chunks are padded to a multiple of 2.
  out = dry_run(2)
  assert out.startswith("plan: 2 buckets, 4 chunks, 12 models on 2 devices"), out
  assert "  chunk 3: 3 models (padded to 4, 2 a device" in out
  assert "total: 12 of 12 models to train, at most " in out
  assert f"{4000 * 64 * 8:,} tokens a model" in out
  assert not (tmp_path / "w").exists()  # a dry run creates nothing
  # A model too big for the memory: one line naming the field, before anything is compiled.
  proc = run_main(TINY + ["--dry_run", "--config.sweep.device_memory_gib=0.001",
                          "--config.train.batch_size=4096"], tmp_path / "w")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip() and "tpu" not in l]
  assert len(lines) == 1 and lines[0].startswith("memjax: error: config.train.batch_size: "), lines
  # The same without --dry_run fails the same way and leaves no empty workdir behind.
  proc = run_main(TINY + ["--config.sweep.device_memory_gib=0.001",
                          "--config.train.batch_size=4096"], tmp_path / "w")
  assert proc.returncode == 2 and "config.train.batch_size: " in proc.stderr, proc.stderr
  assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# Saturation.

CFG = gpt2.ModelConfig(16, 8, 1, 16, 2)
SAT = TrainConfig(steps=200, batch_size=16, learning_rate=1e-2, warmup_steps=5, steps_per_call=10,
                  saturation_tolerance=0.02, saturation_window=10, saturation_patience=2)
SPECS = [ModelSpec(2, 0, 1e-2), ModelSpec(512, 1, 1e-2), ModelSpec(4, 2, 1e-2)]


def test_saturated_models_are_frozen_while_the_others_train():
  state = train_lib.init_stack_from_specs(CFG, SAT, SPECS)
  snapshots = []

  def on_call(done, st):
    snapshots.append((done, jax.tree.map(np.asarray, st.params),
                      np.asarray(st.saturation.saturated_step_M), np.asarray(st.step_M)))

  state, _ = train_lib.train(CFG, SAT, state, on_call=on_call)
  sat_step = np.asarray(state.saturation.saturated_step_M)
  # The tiny datasets (2 and 4 sequences) are memorized and saturate; 512 sequences do not.
  assert sat_step[0] > 0 and sat_step[2] > 0 and sat_step[1] == -1, sat_step
  assert (sat_step[[0, 2]] % SAT.saturation_window == 0).all()
  assert np.asarray(state.step_M).tolist() == [sat_step[0], 200, sat_step[2]]
  assert np.asarray(state.active_M).tolist() == [False, True, False]
  assert not np.asarray(state.diverged_M).any()
  # After a model saturated its parameters never change again; model 1's keep changing.
  for i in (0, 2):
    frozen = [p for done, p, _, _ in snapshots if done >= sat_step[i]]
    assert len(frozen) >= 3
    for a, b in zip(frozen, frozen[1:]):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x[i], y[i])
  later = [p for done, p, _, _ in snapshots if done >= max(sat_step[0], sat_step[2])]
  assert any(not np.array_equal(x[1], y[1])
             for x, y in zip(jax.tree.leaves(later[0]), jax.tree.leaves(later[-1])))
  # The estimate that decided it: close to all (S-1) log2 V bits of the 2 sequences.
  est = float(state.saturation.prev_mem_M[0])
  assert 0.8 * 2 * 7 * 4 < est <= 2 * 7 * 4 + 1e-3


def test_the_loop_stops_once_every_model_is_frozen():
  # Same shapes and settings as above: the compiled program is reused.
  specs = [SPECS[0], SPECS[2], ModelSpec(2, 3, 1e-2)]
  calls = []
  state = train_lib.init_stack_from_specs(CFG, SAT, specs)
  state, _ = train_lib.train(CFG, SAT, state, on_call=lambda done, st: calls.append(done))
  assert not np.asarray(state.active_M).any()
  assert calls[-1] < SAT.steps and calls[-1] == int(np.max(state.step_M))
  np.testing.assert_array_equal(state.step_M, state.saturation.saturated_step_M)


def test_model_key_ignores_checkpointing_and_unused_saturation_settings():
  shape, spec = CFG, SPECS[0]
  base = TrainConfig(steps=100)
  key = sweep.model_key(shape, spec, base)
  assert sweep.model_key(shape, spec, dataclasses.replace(base, checkpoint_every=7)) == key
  assert sweep.model_key(shape, spec, dataclasses.replace(base, saturation_window=7)) == key
  on = dataclasses.replace(base, saturation_tolerance=0.01)
  assert sweep.model_key(shape, spec, on) != key
  assert sweep.model_key(shape, spec, dataclasses.replace(on, saturation_window=7)) != \
      sweep.model_key(shape, spec, on)


def test_model_key_holds_the_rate_the_model_trains_at_not_the_default_rate():
  shape = gpt2.ModelConfig(16, 8, 1, 8, 2)
  base = TrainConfig()
  # A model at the default rate keeps the key it had before (golden: workdirs stay resumable).
  assert sweep.model_key(shape, ModelSpec(32, 0, base.learning_rate), base) == "f6035cfbc8362e80"
  # With sweep.learning_rates, train.learning_rate changes nothing the model trains with.
  spec = ModelSpec(32, 0, 3e-3)
  assert sweep.model_key(shape, spec, base) == sweep.model_key(
      shape, spec, dataclasses.replace(base, learning_rate=3e-3))
  assert sweep.model_key(shape, spec, base) != sweep.model_key(shape, ModelSpec(32, 0, 1e-3), base)


def test_saturation_config_fields_validate():
  config = load_config()
  config.train.saturation_tolerance = -0.1
  with pytest.raises(config_lib.ConfigError, match="^config.train.saturation_tolerance: "):
    config_lib.validate(config)
  config = load_config()
  config.train.saturation_window = 0
  with pytest.raises(config_lib.ConfigError, match="^config.train.saturation_window: "):
    config_lib.validate(config)
  # A window (times the patience) longer than the run: saturation could never freeze a model.
  for window, patience, steps in ((5000, 2, 1000), (400, 2, 1000)):
    config = load_config()
    config.train.saturation_tolerance = 0.01
    config.train.saturation_window = window
    config.train.saturation_patience = patience
    config.train.steps = steps
    with pytest.raises(config_lib.ConfigError,
                       match="^config.train.saturation_window: .*never act"):
      config_lib.validate(config)
  config.train.saturation_window = 300  # 3 windows of 300 fit in 1,000 steps
  assert config_lib.validate(config).train.saturation_window == 300
  config.train.saturation_tolerance = 0.0  # a fixed budget ignores the window
  config.train.saturation_window = 5000
  config_lib.validate(config)
  config = load_config()
  config.sweep.models_per_chunk = -1
  with pytest.raises(config_lib.ConfigError, match="^config.sweep.models_per_chunk: "):
    config_lib.validate(config)
  for name in ("capacity", "capacity_paper", "capacity_gpu_check"):
    settings = config_lib.validate(load_config(name))
    assert settings.train.checkpoint_every >= 0


# ---------------------------------------------------------------------------------------------
# Results files of several processes.

def test_merge_waits_for_every_model_then_writes_each_row_once(tmp_path):
  w = str(tmp_path)
  rows = [{"key": k, "v": i} for i, k in enumerate("abcd")]
  sweep.ResultsFile(sweep.results_path(w, 0, 2)).append([rows[0], rows[2]])
  sweep.ResultsFile(sweep.results_path(w, 1, 2)).append([rows[1]])
  assert sweep.results_path(w, 0, 1).endswith("results.jsonl")
  assert not sweep.merge_results(w, list("abcd"))
  assert not os.path.exists(os.path.join(w, "results.jsonl"))
  # A torn tail in a per-process file is dropped, the whole rows before it count.
  with open(sweep.results_path(w, 1, 2), "a") as f:
    f.write(json.dumps(rows[3]) + "\n" + '{"key": "e", "v"')
  # A dry run reads the whole rows and leaves the tail, which a live run may still be writing.
  size = os.path.getsize(sweep.results_path(w, 1, 2))
  assert {r["key"] for r in sweep.read_all_rows(w, repair=False)} == set("abcd")
  assert os.path.getsize(sweep.results_path(w, 1, 2)) == size
  assert sweep.merge_results(w, list("abcd"))
  merged = sweep.ResultsFile(os.path.join(w, "results.jsonl")).read()
  assert merged == rows
  # Merging again changes nothing; rows already merged keep their place.
  assert sweep.merge_results(w, list("dcba"))
  assert sweep.ResultsFile(os.path.join(w, "results.jsonl")).read() == rows
  assert {r["key"] for r in sweep.read_all_rows(w)} == set("abcd")
  # A user's copy beside them is not a process's file: its rows are not read as results.
  sweep.ResultsFile(os.path.join(w, "results.bak.jsonl")).append([{"key": "z", "v": 9}])
  assert {r["key"] for r in sweep.read_all_rows(w)} == set("abcd")


def test_results_lines_that_parse_but_are_not_rows_are_skipped(tmp_path):
  # A damaged line that still parses as JSON (null, a number, a list) is skipped like one that
  # does not parse, instead of crashing every later run with an AttributeError.
  path = str(tmp_path / "results.jsonl")
  with open(path, "w") as f:
    f.write('{"key": "a"}\nnull\n123\n[1, 2]\n"x"\n{"key": "b"}\n')
  assert sweep.ResultsFile(path).done_keys() == {"a", "b"}


def test_results_append_writes_the_rest_after_a_short_write(tmp_path, monkeypatch):
  # os.write may write part of a blob (a disk filling up); every row must still land whole.
  real_write = os.write
  monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
  path = str(tmp_path / "results.jsonl")
  rows = [{"key": k, "v": i} for i, k in enumerate("abc")]
  sweep.ResultsFile(path).append(rows)
  monkeypatch.setattr(os, "write", real_write)
  assert sweep.ResultsFile(path).read() == rows
