"""Stacked training: M models of one shape in one jit-compiled program.

Everything per model is an array with a leading model axis M: parameters, optimizer state (the
peak learning rate is an injected hyperparameter, so it is an array too), the data key, the
dataset size N and the position in the dataset. One step is written for one model and lifted with
`jax.vmap`; `steps_per_call` steps are fused with `lax.scan` so tiny models do not pay a dispatch a
step. A model whose loss turns NaN or inf is frozen (its update is dropped) and marked `diverged`.
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

from memjax import likelihood
from memjax import model as model_lib
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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What distinguishes one model of a stack from the others."""
  dataset_size: int
  seed: int
  learning_rate: float


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


def make_optimizer(tcfg: TrainConfig):
  def adamw(peak_lr):
    return optax.chain(
        optax.clip_by_global_norm(tcfg.grad_clip),
        optax.adamw(lr_schedule(peak_lr, tcfg), b1=tcfg.b1, b2=tcfg.b2, eps=tcfg.eps,
                    weight_decay=tcfg.weight_decay))
  return optax.inject_hyperparams(adamw)(peak_lr=tcfg.learning_rate)


def init_model_state(cfg: model_lib.ModelConfig, tcfg: TrainConfig, seed, dataset_size,
                     learning_rate):
  """State of one model; seeds and sizes may be traced, so this vmaps over a stack."""
  init_key, data_key = jax.random.split(jax.random.key(seed))
  params = model_lib.init_params(cfg, init_key)
  opt_state = make_optimizer(tcfg).init(params)
  opt_state.hyperparams["peak_lr"] = jnp.asarray(learning_rate, jnp.float32)
  return StackState(
      params=params, opt_state=opt_state, step_M=jnp.int32(0), data_pos_M=jnp.int32(0),
      data_key_M=data_key, dataset_size_M=jnp.asarray(dataset_size, jnp.int32),
      active_M=jnp.bool_(True), diverged_M=jnp.bool_(False))


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_stack(cfg, tcfg, seed_M, dataset_size_M, learning_rate_M) -> StackState:
  return jax.vmap(lambda s, n, lr: init_model_state(cfg, tcfg, s, n, lr))(
      seed_M, dataset_size_M, learning_rate_M)


def init_stack_from_specs(cfg, tcfg, specs: Sequence[ModelSpec], members=None) -> StackState:
  """A fresh stack; `members` (text data): one index array per model, of length its N."""
  arrays = [np.array([getattr(s, f) for s in specs], dtype)
            for f, dtype in (("seed", np.int32), ("dataset_size", np.int32),
                             ("learning_rate", np.float32))]
  state = init_stack(cfg, tcfg, *arrays)
  if members is not None:
    for spec, m in zip(specs, members):
      if len(m) != spec.dataset_size:
        raise ValueError(f"members of a model must number its dataset_size {spec.dataset_size}, "
                         f"got {len(m)}")
    n_max = max(len(m) for m in members)
    padded = np.zeros((len(specs), n_max), np.int32)
    for i, m in enumerate(members):
      padded[i, : len(m)] = m
    state = state.replace(members_MxN=jnp.asarray(padded))
  return state


def batch_tokens(cfg, tcfg, state: StackState, corpus_NxS=None):
  """The next training batch of one model: generated (synthetic) or gathered (text)."""
  indices_B = synthetic.cyclic_indices(state.data_pos_M, tcfg.batch_size, state.dataset_size_M)
  if state.members_MxN is None:
    return synthetic.sequences(synthetic.train_key(state.data_key_M), indices_B, cfg.seq_len,
                               cfg.vocab_size)
  return jnp.take(corpus_NxS, state.members_MxN[indices_B], axis=0).astype(jnp.int32)


def train_step(cfg: model_lib.ModelConfig, tcfg: TrainConfig, state: StackState, corpus_NxS=None):
  """One optimizer step of one model (vmap lifts it to the stack). Returns (state, loss)."""
  tokens_BxS = batch_tokens(cfg, tcfg, state, corpus_NxS)
  loss_fn = lambda p: likelihood.mean_loss(cfg, p, tokens_BxS, tcfg.vocab_chunk)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, new_opt_state = make_optimizer(tcfg).update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)

  finite = jnp.isfinite(loss)
  apply = state.active_M & finite
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  return state.replace(
      params=keep(new_params, state.params),
      opt_state=keep(new_opt_state, state.opt_state),
      step_M=state.step_M + apply.astype(jnp.int32),
      data_pos_M=jnp.where(apply, (state.data_pos_M + tcfg.batch_size) % state.dataset_size_M,
                           state.data_pos_M),
      active_M=apply,
      diverged_M=state.diverged_M | (state.active_M & ~finite),
  ), loss


@functools.partial(jax.jit, static_argnums=(0, 1, 3), donate_argnums=(2,))
def train_steps(cfg, tcfg, state: StackState, num_steps: int, corpus_NxS=None):
  """`num_steps` steps of the whole stack in one dispatch. Returns (state, losses [K, M]).

  `corpus_NxS` (text data) is shared by all models and stays on the device between calls.
  """
  step = jax.vmap(lambda s: train_step(cfg, tcfg, s, corpus_NxS))
  return jax.lax.scan(lambda s, _: step(s), state, None, length=num_steps)


@functools.partial(jax.jit, static_argnums=(0, 1, 3), donate_argnums=(2,))
def train_steps_single(cfg, tcfg, state: StackState, num_steps: int, corpus_NxS=None):
  """The one-model path (no vmap): the baseline that the stacked program is checked against."""
  return jax.lax.scan(lambda s, _: train_step(cfg, tcfg, s, corpus_NxS), state, None,
                      length=num_steps)


def model_slice(tree, i):
  """Model i of a stacked pytree."""
  return jax.tree.map(lambda a: a[i], tree)


def train(cfg, tcfg: TrainConfig, state: StackState, progress=None, corpus_NxS=None):
  """Run `tcfg.steps` steps in chunks; returns (state, last losses [M])."""
  done = 0
  losses_M = None
  while done < tcfg.steps:
    k = min(tcfg.steps_per_call, tcfg.steps - done)
    state, losses_KxM = train_steps(cfg, tcfg, state, k, corpus_NxS)
    losses_M = losses_KxM[-1]
    done += k
    if progress is not None:
      progress(k, losses_M)
  return state, losses_M
