"""The model axis sharded over 8 (simulated CPU) devices: no collectives, same results as 1."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EIGHT = "--xla_force_host_platform_device_count=8"

# 6 models in one bucket: padded to 8 on 8 devices (2 copies dropped), 3 a device on 2, 6 on one.
# Every device runs the one-model program (train.StackLayout), so training is the same float for
# float on any layout; 300 steps at lr 1e-2 made a vmapped stack drift by 1e-4 to 1e-2.
ARGS = ["--config=configs/capacity.py", "--config.quiet=True", "--config.data.vocab_size=32",
        "--config.data.seq_len=16", "--config.sweep.d_model=(8,)",
        "--config.sweep.dataset_sizes=(16,64)", "--config.sweep.seeds=(0,1,2)",
        "--config.train.steps=300", "--config.train.steps_per_call=100",
        "--config.train.warmup_steps=20", "--config.train.batch_size=16",
        "--config.train.learning_rate=1e-2",
        "--config.eval.batch_size=16", "--config.eval.test_size=16"]


def env_with(xla_flags=None, cpu_devices=None):
  """The environment with only the given CPU device settings (none: memjax's default)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  if cpu_devices:
    env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
  return env


def run_main(workdir, env):
  proc = subprocess.run([sys.executable, "-m", "memjax.main", *ARGS, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_one_two_and_eight_devices_give_the_same_rows(tmp_path):
  rows = {n: run_main(tmp_path / str(n), env_with(cpu_devices=n)) for n in (1, 2)}
  rows[8] = run_main(tmp_path / "8", env_with(EIGHT))
  by_key = {r["key"]: r for r in rows[1]}
  assert len(by_key) == 6
  for n in (2, 8):
    assert len(rows[n]) == 6 and {r["key"] for r in rows[n]} == set(by_key)
    for row in rows[n]:
      ref = by_key[row["key"]]
      for name, value in row.items():
        if name in ("wall_s_per_chunk", "curve_wall_s_per_chunk"):
          continue
        if name == "curve_bits" or isinstance(value, float):
          # Scoring is vmapped: its sums may round apart by ~1e-7 of the bits in play.
          memorization = name.startswith("mem_bits") or name == "curve_bits"
          scale = ref["memorizable_bits"] if memorization else abs(ref[name])
          np.testing.assert_allclose(value, ref[name], rtol=1e-6, atol=1e-6 * scale,
                                     err_msg=f"{name} on {n} devices")
        else:
          assert value == ref[name], (name, n)


SHARDED = textwrap.dedent("""
    import jax, numpy as np
    from memjax.model import gpt2
    from memjax import train as train_lib
    from memjax.train import ModelSpec, TrainConfig
    assert jax.local_device_count() == 8
    sharding = train_lib.model_sharding()
    cfg = gpt2.ModelConfig(16, 8, 1, 8, 2)
    tcfg = TrainConfig(steps=4, batch_size=4, steps_per_call=2)
    specs = [ModelSpec(4, i, 1e-2) for i in range(8)]
    state = train_lib.init_stack_from_specs(cfg, tcfg, specs, sharding=sharding)
    def check(tree):
      for leaf in jax.tree.leaves(tree):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), leaf.sharding
        assert len({s.device for s in leaf.addressable_shards}) == 8
        assert all(s.data.shape[0] == 1 for s in leaf.addressable_shards)
    check(state)
    layout = train_lib.stack_layout(cfg, tcfg, state)
    assert layout.sequential and layout.mesh is not None and layout.mesh.size == 8
    # Both layouts (lax.map within each device under shard_map: the CPU layout; vmap over the
    # models: the GPU layout) run without moving data between devices.
    for layout in (layout, train_lib.StackLayout(sequential=False)):
      hlo = train_lib.train_steps_in_layout.lower(cfg, tcfg, state, 2, layout=layout)
      hlo = hlo.compile().as_text()
      for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute",
                 "reduce-scatter"):
        assert op not in hlo, (op, layout)
    state, losses = train_lib.train_steps(cfg, tcfg, state, 2)
    check(state)
    state, _ = train_lib.train_steps_in_layout(cfg, tcfg, state, 2,
                                               layout=train_lib.StackLayout(sequential=False))
    check(state)
    print("ok", losses.shape)
""")


def test_every_leaf_is_sharded_over_the_devices_without_collectives():
  proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env_with(EIGHT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ok (2, 8)" in proc.stdout


DEVICES = textwrap.dedent("""
    import sys
    from memjax.engine import devices
    print("asked", devices.use_cpu_devices(int(sys.argv[1])))
    import jax
    print("devices", jax.local_device_count())
    print("again", devices.use_cpu_devices(5))  # JAX runs now: nothing changes
""")


def run_devices(count, xla_flags=None, cpu_devices=None):
  proc = subprocess.run([sys.executable, "-c", DEVICES, str(count)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env=env_with(xla_flags, cpu_devices))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.split()


def test_cpu_devices_default_to_one_per_core_and_keep_what_the_user_set():
  from memjax.engine import devices
  cores = str(min(devices.cpu_cores(), devices.MAX_DEFAULT_CPU_DEVICES))
  assert run_devices(0) == ["asked", cores, "devices", cores, "again", "None"]
  assert run_devices(0, EIGHT) == ["asked", "None", "devices", "8", "again", "None"]
  assert run_devices(3, EIGHT) == ["asked", "3", "devices", "3", "again", "None"]
  assert run_devices(0, cpu_devices=2)[:4] == ["asked", "None", "devices", "2"]
