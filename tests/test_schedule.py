"""The warmup-stable-decay schedule, its saturation-triggered decay, the convergence record and
batches given as a fraction of N (issue 22)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import config as config_lib
from memjax.engine import sweep
from memjax.experiments import capacity
from memjax.model import gpt2
from memjax import train as train_lib
from memjax.train import ModelSpec, TrainConfig
from tests.test_sweep import load_config

CFG = gpt2.ModelConfig(16, 8, 1, 16, 2)
WSD = TrainConfig(steps=200, batch_size=16, learning_rate=1e-2, warmup_steps=5, steps_per_call=10,
                  schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1)
SAT = dataclasses.replace(WSD, saturation_tolerance=0.02, saturation_window=10,
                          saturation_patience=2)


def test_wsd_values_at_its_boundaries():
  lr = lambda count, start=-1.0: float(
      train_lib.wsd_schedule(2.0, jnp.float32(start), WSD)(jnp.int32(count)))
  assert lr(0) == pytest.approx(2.0 / 5)  # warmup
  assert lr(4) == lr(5) == lr(159) == 2.0  # the constant peak up to the latest start (200 - 40)
  assert lr(160) == pytest.approx(2.0 * (1 - 0.9 / 40))  # first decayed step
  assert lr(199) == lr(250) == pytest.approx(0.2)  # the decay's last step is at the minimum
  # A model's own start (its plateau) moves the decay earlier, never past the latest start.
  assert lr(49, 50) == 2.0 and lr(89, 50) == pytest.approx(0.2)
  assert lr(159, 1000) == 2.0 and lr(199, 1000) == pytest.approx(0.2)


def test_cosine_rows_keep_their_keys_and_wsd_changes_them():
  spec = ModelSpec(32, 0, TrainConfig().learning_rate)
  shape = gpt2.ModelConfig(16, 8, 1, 8, 2)
  base = TrainConfig()
  assert sweep.model_key(shape, spec, base) == "f6035cfbc8362e80"  # golden, as in test_sweep
  assert sweep.model_key(shape, spec, dataclasses.replace(base, decay_fraction=0.5,
                                                          batch_min=3)) == "f6035cfbc8362e80"
  wsd = dataclasses.replace(base, schedule="wsd")
  assert sweep.model_key(shape, spec, wsd) != sweep.model_key(shape, spec, base)
  assert sweep.model_key(shape, spec, wsd) != sweep.model_key(
      shape, spec, dataclasses.replace(wsd, decay_fraction=0.5))


def test_models_decay_at_their_own_plateau_then_stop_changing():
  # N = 2 and 16 are memorized fast and decay early, at different steps; N = 512 plateaus late or
  # never and decays where it must to end at 200.
  specs = [ModelSpec(2, 0, 1e-2), ModelSpec(512, 1, 1e-2), ModelSpec(16, 2, 1e-2)]
  state = train_lib.init_stack_from_specs(CFG, SAT, specs)
  snapshots = []
  state, _ = train_lib.train(CFG, SAT, state, on_call=lambda done, st: snapshots.append(
      (done, jax.tree.map(np.asarray, st.params))))
  start = np.asarray(state.opt_state.hyperparams["decay_start"])
  plateau = np.asarray(state.saturation.saturated_step_M)
  steps = np.asarray(state.step_M)
  assert start[0] == plateau[0] > 0 and start[2] == plateau[2] > 0, (start, plateau)
  assert start[0] != start[2], start  # one stack, two decay steps
  assert start[1] == 160 and steps[1] == 200, (start, steps)
  # Frozen exactly when the decay ends, not before: no model is scored mid-schedule.
  np.testing.assert_array_equal(steps[[0, 2]], start[[0, 2]] + SAT.decay_steps)
  for i in (0, 2):
    frozen = [p for done, p in snapshots if done >= steps[i]]
    assert len(frozen) >= 2
    for a, b in zip(frozen, frozen[1:]):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x[i], y[i])


def test_convergence_record_rises_to_the_memorizable_bits():
  cfg = gpt2.ModelConfig(vocab_size=32, seq_len=16, layers=1, d_model=32, num_heads=2)
  tcfg = TrainConfig(steps=300, batch_size=8, learning_rate=1e-2, warmup_steps=20,
                     steps_per_call=10, schedule="wsd")
  settings = dataclasses.replace(config_lib.validate(load_config()), curve_steps=6,
                                 eval_batch_size=8)
  assert capacity.curve_points(tcfg, 6) == (10, 20, 40, 80, 160, 300)
  state = train_lib.init_stack_from_specs(cfg, tcfg, [ModelSpec(8, 0, 1e-2)])
  curve = capacity.Curve(settings, cfg, tcfg, 1)
  train_lib.train(cfg, tcfg, state, on_call=curve.record)
  record = curve.of_model(0)
  bits = np.array(record["curve_bits"])
  assert record["curve_steps"] == [10, 20, 40, 80, 160, 300]
  assert bits[0] < 0.5 * bits[-1] and (np.diff(bits) > -0.02 * bits[-1]).all(), bits
  memorizable = 8 * 15 * 5
  assert 0.95 * memorizable <= bits[-1] <= memorizable + 1e-3, bits / memorizable


def test_batch_fraction_gives_each_n_its_batch_and_its_own_bucket():
  tcfg = TrainConfig(batch_fraction=0.25, batch_min=16, batch_max=128)
  assert [tcfg.batch_for(n) for n in (32, 64, 256, 300, 512, 2048)] == [16, 16, 64, 64, 128, 128]
  assert TrainConfig(batch_size=48).batch_for(4096) == 48  # no fraction: train.batch_size
  config = load_config()
  config.sweep.dataset_sizes = (32, 64, 256, 2048)
  config.train.batch_fraction = 0.25
  config.train.batch_min = 16
  config.train.batch_max = 128
  settings = config_lib.validate(config)
  buckets = sweep.plan(settings)
  got = sorted((b.shape.d_model, b.train.batch_size, tuple(s.dataset_size for s in b.specs))
               for b in buckets)
  sizes = {d: [g for g in got if g[0] == d] for d in settings.d_model}
  for d in settings.d_model:
    assert {b: ns for _, b, ns in sizes[d]} == {16: (32, 64), 64: (256,), 128: (2048,)}
  chunks = sweep.plan_chunks(settings, jax.local_devices()).chunks
  assert {c.train.batch_size for c in chunks} == {16, 64, 128}


@pytest.mark.parametrize("field,value,needle", [
    ("schedule", "linear", "config.train.schedule: must be one of cosine, wsd"),
    ("decay_fraction", 1.5, "config.train.decay_fraction: "),
    ("batch_fraction", -0.1, "config.train.batch_fraction: "),
    ("batch_min", 0, "config.train.batch_min: "),
])
def test_bad_schedule_and_batch_fields_name_the_field(field, value, needle):
  config = load_config()
  config.train.schedule = "wsd"
  config.train[field] = value
  with pytest.raises(config_lib.ConfigError, match="^" + needle):
    config_lib.validate(config)


def test_a_decay_longer_than_the_run_after_warmup_is_refused():
  config = load_config()
  config.train.schedule = "wsd"
  config.train.decay_fraction = 1.0
  with pytest.raises(config_lib.ConfigError, match="^config.train.decay_fraction: a decay of"):
    config_lib.validate(config)
  config = load_config()
  config.train.batch_fraction = 0.25
  config.train.batch_min = 512
  config.train.batch_max = 64
  with pytest.raises(config_lib.ConfigError, match="^config.train.batch_min: "):
    config_lib.validate(config)
