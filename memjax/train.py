"""Stacked training: M models of one shape in one jit-compiled program.

Everything per model is an array with a leading model axis M: parameters, optimizer state (the
peak learning rate is an injected hyperparameter, so it is an array too), the data key, the
dataset size N and the position in the dataset. One step is written for one model and lifted to
the stack (`lift_to_stack`: on CPUs `lax.map` of the one-model program on each device, so a
model's floats do not depend on the device layout; on GPUs `jax.vmap`; see `StackLayout`);
`steps_per_call` steps are fused with `lax.scan` so tiny models do not pay a dispatch a step. A
model whose loss turns NaN or inf is frozen (its update is dropped) and marked `diverged`.

Saturation (`TrainConfig.saturation_tolerance > 0`): computing the memorization of a whole
training set inside the scan is too costly, so each model keeps an on-device estimate instead.
The training losses of every window of `saturation_window` of its steps are averaged and turned
into an estimated memorization in bits,

    mem_est = N * (S - 1) * (log2 V - mean_loss_bits),

(the bits of the training set the model predicts better than uniform; for text data it is only a
growth signal). At the end of each window the relative change
|mem_est - mem_est_prev| / max(|mem_est|, |mem_est_prev|) is compared with the tolerance; after
`saturation_patience` consecutive windows below it (and past the warmup) the model is saturated:
it is frozen through the same `active_M` mask as a diverged model, and `saturated_step_M` records
the step. Early in training the estimate is near 0 and dominated by batch noise, so its relative
change is large and a model is not frozen before it learns; the patience guards against a single
lucky window. The tolerance is per window: for the same growth rate a longer window needs a
proportionally larger tolerance.
The rest of the stack trains on; the loop stops early once every model is frozen.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from memjax import likelihood
from memjax.model import gpt2
from memjax.data import synthetic


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 2000
  batch_size: int = 64
  learning_rate: float = 1e-3  # default peak; each model may have its own
  warmup_steps: int = 100
  min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-8
  grad_clip: float = 1.0
  steps_per_call: int = 100
  vocab_chunk: int = likelihood.DEFAULT_VOCAB_CHUNK
  # Saturation: 0.0 trains every model for exactly `steps` steps (a fixed budget); > 0 freezes a
  # model once its estimated memorization changes by less than this fraction between windows of
  # `saturation_window` steps, `saturation_patience` windows in a row (`steps` is then the limit).
  saturation_tolerance: float = 0.0
  saturation_window: int = 100
  saturation_patience: int = 2
  # Save a checkpoint every this many steps (0: only when training ends or is interrupted), at
  # the first call boundary at or after each multiple (a multiple of steps_per_call is exact).
  # Only how a run is saved, not what it computes.
  checkpoint_every: int = 0
  # Learning-rate schedule after the warmup: "cosine" (decay over all steps) or "wsd"
  # (warmup-stable-decay: a constant peak, then a linear decay to min_lr_ratio over the last
  # decay_fraction of `steps`). With saturation, a WSD model's decay starts when its own plateau is
  # found (or where it must start to end at `steps`) and the model is frozen when it ends.
  schedule: str = "cosine"
  decay_fraction: float = 0.2
  # > 0: each model's batch is batch_fraction * its N rounded to a power of two, clipped to
  # [batch_min, batch_max] (models are grouped into stacks by batch); 0: batch_size for all.
  batch_fraction: float = 0.0
  batch_min: int = 16
  batch_max: int = 1024

  @property
  def saturation(self) -> bool:
    return self.saturation_tolerance > 0

  @property
  def wsd(self) -> bool:
    return self.schedule == "wsd"

  @property
  def decay_steps(self) -> int:
    """Length of a WSD decay, in steps."""
    return max(1, round(self.decay_fraction * self.steps))

  def batch_for(self, dataset_size: int) -> int:
    """The batch of a model of N = dataset_size sequences."""
    if not self.batch_fraction:
      return self.batch_size
    # A power of two: models of nearby N share a batch, so a shape splits into few stacks.
    batch = 2 ** round(math.log2(max(self.batch_fraction * dataset_size, 1)))
    return min(max(batch, self.batch_min), self.batch_max)


def drop_fields_at_old_behaviour(train: dict) -> dict:
  """A TrainConfig's dict less the fields added after stored results were keyed, where they
  train as before they existed (a cosine; one batch for all): keys of those results stay."""
  if train.get("schedule", "cosine") == "cosine":
    for name in ("schedule", "decay_fraction"):
      train.pop(name, None)
  if not train.get("batch_fraction"):
    for name in ("batch_fraction", "batch_min", "batch_max"):
      train.pop(name, None)
  return train


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What distinguishes one model of a stack from the others."""
  dataset_size: int
  seed: int
  learning_rate: float


@flax.struct.dataclass
class SaturationState:
  """Per-model on-device saturation tracking (see the module docstring)."""
  window_loss_M: jax.Array  # sum of training losses (nats) over the current window
  prev_mem_M: jax.Array  # estimated memorization (bits) of the last finished window; NaN if none
  calm_M: jax.Array  # finished windows in a row whose relative change was below the tolerance
  saturated_step_M: jax.Array  # step at which the model was frozen as saturated; -1 if not


@flax.struct.dataclass
class StackState:
  params: Any
  opt_state: Any
  step_M: jax.Array  # steps actually applied (frozen models stop counting)
  data_pos_M: jax.Array  # index of the next training sample
  data_key_M: jax.Array
  dataset_size_M: jax.Array
  active_M: jax.Array  # False once frozen
  diverged_M: jax.Array
  # Text data only: row indices into the device-resident corpus of each model's N members,
  # padded to the largest N of the stack ([M, N_max]); None for synthetic data.
  members_MxN: Any = None
  saturation: Any = None  # SaturationState (None in states built by hand: no tracking)


def lr_schedule(peak_lr, tcfg: TrainConfig):
  """Linear warmup, then cosine decay to min_lr_ratio * peak; `peak_lr` may be a traced array."""
  def schedule(count):
    count = count.astype(jnp.float32)
    warm = jnp.minimum(1.0, (count + 1) / max(tcfg.warmup_steps, 1))
    decay_steps = max(tcfg.steps - tcfg.warmup_steps, 1)
    progress = jnp.clip((count - tcfg.warmup_steps) / decay_steps, 0.0, 1.0)
    cosine = tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * 0.5 * (1 + jnp.cos(math.pi * progress))
    return peak_lr * warm * cosine
  return schedule


def wsd_decay_start(tcfg: TrainConfig, decay_start):
  """Where a WSD decay starts: a model's own start (`decay_start` >= 0, set at its plateau), else
  the last point from which the decay still ends at `steps`."""
  latest = tcfg.steps - tcfg.decay_steps
  return jnp.where(decay_start >= 0, jnp.minimum(decay_start, latest), latest)


def wsd_schedule(peak_lr, decay_start, tcfg: TrainConfig):
  """Linear warmup, constant peak, linear decay over decay_steps to min_lr_ratio * peak, then
  flat; `peak_lr` and `decay_start` (-1: not triggered) may be traced arrays."""
  def schedule(count):
    count = count.astype(jnp.float32)
    warm = jnp.minimum(1.0, (count + 1) / max(tcfg.warmup_steps, 1))
    start = wsd_decay_start(tcfg, decay_start).astype(jnp.float32)
    # The decay's last step (count start + decay_steps - 1) is the first at the minimum.
    progress = jnp.clip((count - start + 1) / tcfg.decay_steps, 0.0, 1.0)
    return peak_lr * warm * (1 - (1 - tcfg.min_lr_ratio) * progress)
  return schedule


def make_optimizer(tcfg: TrainConfig):
  def adamw(schedule):
    return optax.chain(
        optax.clip_by_global_norm(tcfg.grad_clip),
        optax.adamw(schedule, b1=tcfg.b1, b2=tcfg.b2, eps=tcfg.eps,
                    weight_decay=tcfg.weight_decay))
  if tcfg.wsd:
    # The decay start is a per-model hyperparameter like the peak, so the step can set it.
    return optax.inject_hyperparams(
        lambda peak_lr, decay_start: adamw(wsd_schedule(peak_lr, decay_start, tcfg)))(
            peak_lr=tcfg.learning_rate, decay_start=-1.0)
  return optax.inject_hyperparams(lambda peak_lr: adamw(lr_schedule(peak_lr, tcfg)))(
      peak_lr=tcfg.learning_rate)


def init_model_state(cfg: gpt2.ModelConfig, tcfg: TrainConfig, seed, dataset_size,
                     learning_rate):
  """State of one model; seeds and sizes may be traced, so this vmaps over a stack."""
  init_key, data_key = jax.random.split(jax.random.key(seed))
  params = gpt2.init_params(cfg, init_key)
  opt_state = make_optimizer(tcfg).init(params)
  opt_state.hyperparams["peak_lr"] = jnp.asarray(learning_rate, jnp.float32)
  if tcfg.wsd:
    opt_state.hyperparams["decay_start"] = jnp.float32(-1.0)
  return StackState(
      params=params, opt_state=opt_state, step_M=jnp.int32(0), data_pos_M=jnp.int32(0),
      data_key_M=data_key, dataset_size_M=jnp.asarray(dataset_size, jnp.int32),
      active_M=jnp.bool_(True), diverged_M=jnp.bool_(False),
      saturation=SaturationState(
          window_loss_M=jnp.float32(0.0), prev_mem_M=jnp.float32(jnp.nan),
          calm_M=jnp.int32(0), saturated_step_M=jnp.int32(-1)))


def _init_stack(cfg, tcfg, seed_M, dataset_size_M, learning_rate_M) -> StackState:
  return jax.vmap(lambda s, n, lr: init_model_state(cfg, tcfg, s, n, lr))(
      seed_M, dataset_size_M, learning_rate_M)


init_stack = jax.jit(_init_stack, static_argnums=(0, 1))


def model_sharding(devices=None) -> NamedSharding:
  """The model axis of a stack split over the local devices (or `devices`), a block a device."""
  devices = jax.local_devices() if devices is None else devices
  mesh = jax.make_mesh((len(devices),), ("models",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))
  return NamedSharding(mesh, P("models"))


def padded_to(items: Sequence, multiple: int) -> list:
  """`items` and copies of its last one, to a multiple of `multiple` (of devices: the copies
  train on the spare devices and are dropped from the results)."""
  return list(items) + [items[-1]] * (-len(items) % multiple)


@functools.lru_cache(maxsize=None)
def _init_stack_sharded(sharding):
  return jax.jit(_init_stack, static_argnums=(0, 1), out_shardings=sharding)


def init_stack_from_specs(cfg, tcfg, specs: Sequence[ModelSpec], members=None,
                          sharding=None) -> StackState:
  """A fresh stack; `members` (text data): one index array per model, of length its N.

  `sharding` (optional, e.g. `model_sharding()`) places every leaf, sharded along
  the model axis, directly where it will train (the model count must divide evenly).
  """
  arrays = [np.array([getattr(s, f) for s in specs], dtype)
            for f, dtype in (("seed", np.int32), ("dataset_size", np.int32),
                             ("learning_rate", np.float32))]
  if sharding is None:
    state = init_stack(cfg, tcfg, *arrays)
  else:
    arrays = [jax.device_put(a, sharding) for a in arrays]
    state = _init_stack_sharded(sharding)(cfg, tcfg, *arrays)
  if members is not None:
    for spec, m in zip(specs, members):
      if len(m) != spec.dataset_size:
        raise ValueError(f"members of a model must number its dataset_size {spec.dataset_size}, "
                         f"got {len(m)}")
    n_max = max(len(m) for m in members)
    padded = np.zeros((len(specs), n_max), np.int32)
    for i, m in enumerate(members):
      padded[i, : len(m)] = m
    members_MxN = jnp.asarray(padded) if sharding is None else jax.device_put(padded, sharding)
    state = state.replace(members_MxN=members_MxN)
  return state


def batch_tokens(cfg, tcfg, state: StackState, corpus_NxS=None):
  """The next training batch of one model: generated (synthetic) or gathered (text)."""
  indices_B = synthetic.cyclic_indices(state.data_pos_M, tcfg.batch_size, state.dataset_size_M)
  if state.members_MxN is None:
    return synthetic.sequences(synthetic.train_key(state.data_key_M), indices_B, cfg.seq_len,
                               cfg.vocab_size)
  return jnp.take(corpus_NxS, state.members_MxN[indices_B], axis=0).astype(jnp.int32)


def train_step(cfg: gpt2.ModelConfig, tcfg: TrainConfig, state: StackState, corpus_NxS=None):
  """One optimizer step of one model (vmap lifts it to the stack). Returns (state, loss)."""
  tokens_BxS = batch_tokens(cfg, tcfg, state, corpus_NxS)
  loss_fn = lambda p: likelihood.mean_loss(cfg, p, tokens_BxS, tcfg.vocab_chunk)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, new_opt_state = make_optimizer(tcfg).update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)

  finite = jnp.isfinite(loss)
  apply = state.active_M & finite
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  new_step = state.step_M + apply.astype(jnp.int32)
  saturation, saturated = _track_saturation(cfg, tcfg, state, apply, loss, new_step)
  if tcfg.wsd:
    new_opt_state, saturated = _wsd_decay(tcfg, new_opt_state, saturated, new_step)
  return state.replace(
      params=keep(new_params, state.params),
      opt_state=keep(new_opt_state, state.opt_state),
      step_M=new_step,
      data_pos_M=jnp.where(apply, (state.data_pos_M + tcfg.batch_size) % state.dataset_size_M,
                           state.data_pos_M),
      active_M=apply & ~saturated,
      diverged_M=state.diverged_M | (state.active_M & ~finite),
      saturation=saturation,
  ), loss


def _wsd_decay(tcfg: TrainConfig, opt_state, plateau, new_step):
  """A WSD model's decay starts at its first plateau (with saturation) or where it must to end at
  `steps`; returns (opt_state with that start, frozen now?): with saturation a model is frozen when
  its decay ends, so none is scored partway through its schedule."""
  start = opt_state.hyperparams["decay_start"]
  latest = tcfg.steps - tcfg.decay_steps
  begin = (plateau | (new_step >= latest)) if tcfg.saturation else new_step >= latest
  start = jnp.where((start < 0) & begin, jnp.minimum(new_step, latest).astype(start.dtype), start)
  opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "decay_start": start})
  ended = (start >= 0) & (new_step >= start + tcfg.decay_steps)
  return opt_state, ended & tcfg.saturation


def estimated_memorization_bits(cfg, dataset_size, mean_loss_nats):
  """The on-device saturation signal: N (S-1) (log2 V - loss in bits), in bits."""
  loss_bits = mean_loss_nats / likelihood.LN2
  return (jnp.asarray(dataset_size, jnp.float32) * (cfg.seq_len - 1)
          * (math.log2(cfg.vocab_size) - loss_bits))


def _track_saturation(cfg, tcfg: TrainConfig, state: StackState, apply, loss, new_step):
  """Update one model's window statistics; returns (new SaturationState, saturated now?)."""
  sat = state.saturation
  if sat is None:
    return None, jnp.bool_(False)
  window = tcfg.saturation_window
  window_loss = sat.window_loss_M + jnp.where(apply, loss, 0.0)
  window_done = apply & (new_step % window == 0)
  mem = estimated_memorization_bits(cfg, state.dataset_size_M, window_loss / window)
  prev = sat.prev_mem_M
  scale = jnp.maximum(jnp.maximum(jnp.abs(mem), jnp.abs(prev)), 1e-6)
  calm_now = jnp.isfinite(prev) & (jnp.abs(mem - prev) / scale < tcfg.saturation_tolerance)
  calm = jnp.where(window_done, jnp.where(calm_now, sat.calm_M + 1, 0), sat.calm_M)
  if tcfg.saturation:
    saturated = (window_done & (calm >= tcfg.saturation_patience)
                 & (new_step > tcfg.warmup_steps))
  else:
    saturated = jnp.bool_(False)
  new_sat = SaturationState(
      window_loss_M=jnp.where(window_done, 0.0, window_loss),
      prev_mem_M=jnp.where(window_done, mem, prev),
      calm_M=calm,
      # The first plateau (a cosine model is frozen there; a WSD one starts its decay).
      saturated_step_M=jnp.where(saturated & (sat.saturated_step_M < 0), new_step,
                                 sat.saturated_step_M))
  return new_sat, saturated


@dataclasses.dataclass(frozen=True)
class StackLayout:
  """How one model's step is lifted to a stack.

  On CPUs every model runs the one-model program (`lax.map` over the models of each device, the
  devices side by side under `shard_map`): a model's arithmetic is then the same whatever the
  number of devices or of models that share one, so rows do not depend on the device layout
  (tests/test_sharding.py; a vmap over a device's models sums in orders that depend on how many
  there are, and drifted up to 1.5% in 3,000 steps). On GPUs the models of a stack are vmapped,
  which the GPU needs to be busy; there results agree between layouts to float rounding only.
  """
  sequential: bool = False  # lax.map the one-model program over each device's models
  mesh: Any = None  # with `sequential`: the devices the model axis is split over (None: one)


def stack_layout(cfg, tcfg: TrainConfig, state: StackState) -> StackLayout:
  """The layout for a stack as it is placed: vmap on GPUs, the one-model program on CPUs."""
  del cfg, tcfg  # the layout no longer depends on the shapes (kept for callers' symmetry)
  sharding = getattr(state.step_M, "sharding", None)
  if sharding is None:  # a host array: it will go to the default device
    platform, devices = jax.default_backend(), 1
  else:
    platform, devices = next(iter(sharding.device_set)).platform, len(sharding.device_set)
  if platform != "cpu":
    return StackLayout()
  mesh = sharding.mesh if devices > 1 and isinstance(sharding, NamedSharding) else None
  return StackLayout(sequential=True, mesh=mesh)


def lift_to_stack(step, state, layout: StackLayout):
  """`step` (one model's state -> (state, outputs)) applied to every model of a stacked state."""
  if not layout.sequential:
    return jax.vmap(step)(state)
  per_device = functools.partial(_map_models, step)
  if layout.mesh is None:
    return per_device(state)
  # Each device maps over its own block of the model axis: no data moves between devices.
  axis = layout.mesh.axis_names[0]
  # check_vma=False: the loop's fresh output buffers are not typed as varying over the devices.
  return jax.shard_map(per_device, mesh=layout.mesh, in_specs=P(axis), out_specs=P(axis),
                       check_vma=False)(state)


def _map_models(step, state_M):
  """`lax.map(step, state_M)`, compiled the same way for any number of models.

  XLA specializes a loop it can see through: one of a single trip is inlined, and a dynamic
  slice of a one-model axis becomes a plain copy; the step then fuses with its surroundings
  into other float arithmetic, so a model alone on its device (8 models on 8 devices) trained
  to other floats than a model beside others. So the trip count is opaque to XLA, and a lone
  model's block is given a spare copy that the loop never runs.
  """
  m = jax.tree.leaves(state_M)[0].shape[0]
  size = max(m, 2)
  if m == 1:
    state_M = jax.tree.map(lambda a: jnp.concatenate([a, a]), state_M)
  count = jax.lax.optimization_barrier(jnp.int32(m))
  out_shape = jax.eval_shape(step, model_slice(state_M, 0))[1]
  outs_M = jax.tree.map(lambda x: jnp.zeros((size,) + x.shape, x.dtype), out_shape)

  def body(i, carry):
    states_M, outs_M = carry
    new_state, out = step(jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, False),
                                       states_M))
    put = lambda a, x: jax.lax.dynamic_update_index_in_dim(a, x, i, 0)
    return jax.tree.map(put, states_M, new_state), jax.tree.map(put, outs_M, out)

  state_M, outs_M = jax.lax.fori_loop(0, count, body, (state_M, outs_M))
  return jax.tree.map(lambda a: a[:m], (state_M, outs_M))


@functools.partial(jax.jit, static_argnums=(0, 1, 3), static_argnames=("layout",),
                   donate_argnums=(2,))
def train_steps_in_layout(cfg, tcfg, state: StackState, num_steps: int, corpus_NxS=None, *,
                          layout: StackLayout = StackLayout()):
  """`num_steps` steps of the whole stack in one dispatch. Returns (state, losses [K, M])."""
  step = lambda s: train_step(cfg, tcfg, s, corpus_NxS)
  return jax.lax.scan(lambda s, _: lift_to_stack(step, s, layout), state, None,
                      length=num_steps)


def train_steps(cfg, tcfg, state: StackState, num_steps: int, corpus_NxS=None):
  """`num_steps` steps of the whole stack in one dispatch. Returns (state, losses [K, M]).

  The state is donated. `corpus_NxS` (text data) is shared by all models and stays on the
  device between calls. The layout (`stack_layout`) follows how the state is placed.
  """
  return train_steps_in_layout(cfg, tcfg, state, num_steps, corpus_NxS,
                               layout=stack_layout(cfg, tcfg, state))


@functools.partial(jax.jit, static_argnums=(0, 1, 3), donate_argnums=(2,))
def train_steps_single(cfg, tcfg, state: StackState, num_steps: int, corpus_NxS=None):
  """The one-model path (no vmap): the baseline that the stacked program is checked against."""
  return jax.lax.scan(lambda s, _: train_step(cfg, tcfg, s, corpus_NxS), state, None,
                      length=num_steps)


def model_slice(tree, i):
  """Model i of a stacked pytree."""
  return jax.tree.map(lambda a: a[i], tree)


def next_boundary(tcfg: TrainConfig, done: int, stops=()) -> int:
  """The loop step where the next device call ends: the next multiple of `steps_per_call` after
  the last of `stops` (steps where the caller scores the stack) reached, the next stop, or
  `steps`. Counting from the last stop keeps the calls to few lengths, each one compile (stops at
  120, 240, ... with 100 steps a call: calls of 100 and 20). A run resumed from a checkpoint
  (taken at a call boundary) therefore makes exactly the calls of an uninterrupted run.
  """
  base = max([0] + [s for s in stops if s <= done])
  later = [s for s in stops if s > done]
  step = base + ((done - base) // tcfg.steps_per_call + 1) * tcfg.steps_per_call
  return min(step, tcfg.steps, *later)


def checkpoint_due(tcfg: TrainConfig, before: int, after: int) -> bool:
  """Whether a call from loop step `before` to `after` crossed a multiple of checkpoint_every
  (checkpoints are taken at the first call boundary at or after each multiple)."""
  return bool(tcfg.checkpoint_every) and (
      after // tcfg.checkpoint_every > before // tcfg.checkpoint_every)


def train(cfg, tcfg: TrainConfig, state: StackState, progress=None, corpus_NxS=None, *,
          start_step: int = 0, on_call=None, should_stop=None, stops=()):
  """Run loop steps [start_step, tcfg.steps) in fused calls; returns (state, last losses [M]).

  `progress(k, losses_M)` after each call of k steps; `on_call(done, state)` after each call with
  the loop step reached (e.g. to checkpoint); `should_stop()` is asked after each call (e.g. a
  preemption signal); `stops`: steps where a call must end (see next_boundary). The loop also
  ends once every model is frozen (saturated or diverged): frozen models do not change, so
  stopping early gives the same result, sooner.
  """
  done = start_step
  losses_M = None
  while done < tcfg.steps:
    k = next_boundary(tcfg, done, stops) - done
    state, losses_KxM = train_steps(cfg, tcfg, state, k, corpus_NxS)
    losses_M = losses_KxM[-1]
    done += k
    if progress is not None:
      progress(k, losses_M)
    if on_call is not None:
      on_call(done, state)
    if not bool(np.asarray(state.active_M).any()):
      break
    if should_stop is not None and should_stop():
      break
  return state, losses_M
