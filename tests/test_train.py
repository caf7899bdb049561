import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import likelihood
from memjax.estimators import memorization
from memjax.model import gpt2
from memjax import train as train_lib
from memjax.train import ModelSpec, TrainConfig

CFG = gpt2.ModelConfig(vocab_size=64, seq_len=12, layers=1, d_model=16, num_heads=2)
TCFG = TrainConfig(steps=40, batch_size=8, learning_rate=3e-3, warmup_steps=5, steps_per_call=20)
SPECS = [ModelSpec(16, 0, 3e-3), ModelSpec(5, 1, 1e-2), ModelSpec(40, 2, 1e-3),
         ModelSpec(8, 3, 5e-3)]


def test_stack_trains_the_same_models_as_one_at_a_time():
  stack = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  singles = [train_lib.model_slice(stack, i) for i in range(len(SPECS))]
  stack, losses_KxM = train_lib.train_steps(CFG, TCFG, stack, 25)
  for i, single in enumerate(singles):
    single, losses_K = train_lib.train_steps_single(CFG, TCFG, single, 25)
    np.testing.assert_allclose(losses_KxM[:, i], losses_K, rtol=2e-5, atol=2e-6)
    stacked = train_lib.model_slice(stack.params, i)
    # The key bias has a true gradient of exactly 0 (softmax ignores a shift), so Adam turns
    # float rounding into +-lr steps there: compare it apart, with that bound.
    d = CFG.d_model
    key_bias = lambda p: p["h_0"]["c_attn"]["bias"][d:2 * d]
    no_key_bias = lambda p: {**p, "h_0": {**p["h_0"], "c_attn": {
        "kernel": p["h_0"]["c_attn"]["kernel"],
        "bias": p["h_0"]["c_attn"]["bias"].at[d:2 * d].set(0)}}}
    for a, b in zip(jax.tree.leaves(no_key_bias(stacked)), jax.tree.leaves(no_key_bias(single.params))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert np.abs(key_bias(stacked) - key_bias(single.params)).max() <= 2 * 25 * SPECS[i].learning_rate
  # The models really differ: per-model seeds, sizes and learning rates are honoured.
  assert len({round(float(l), 6) for l in losses_KxM[-1]}) == len(SPECS)


def test_per_model_learning_rate_and_dataset_size_are_arrays_in_the_state():
  stack = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  np.testing.assert_allclose(stack.opt_state.hyperparams["peak_lr"], [s.learning_rate for s in SPECS])
  np.testing.assert_array_equal(stack.dataset_size_M, [s.dataset_size for s in SPECS])
  stack, _ = train_lib.train_steps(CFG, TCFG, stack, 3)
  # Data positions walk each model's own dataset, wrapping at its size.
  np.testing.assert_array_equal(stack.data_pos_M, [(3 * 8) % s.dataset_size for s in SPECS])


def test_a_diverging_model_is_frozen_and_marked_while_others_train():
  stack = train_lib.init_stack_from_specs(CFG, TCFG, SPECS[:2])
  # Poison model 0's weights: its loss is NaN from the first step.
  wte = stack.params["wte"].at[0].set(jnp.nan)
  stack = stack.replace(params={**stack.params, "wte": wte})
  before = jax.tree.map(np.asarray, stack.params)
  stack, losses = train_lib.train_steps(CFG, TCFG, stack, 5)
  assert np.isnan(losses[0, 0]) and np.isfinite(losses[:, 1]).all()
  assert stack.diverged_M.tolist() == [True, False]
  assert stack.step_M.tolist() == [0, 5]
  np.testing.assert_array_equal(stack.params["h_0"]["c_fc"]["kernel"][0],
                                before["h_0"]["c_fc"]["kernel"][0])


def test_bf16_stack_trains_with_bf16_params_and_fp32_loss():
  cfg = gpt2.ModelConfig(64, 12, 1, 16, 2, "bf16")
  stack = train_lib.init_stack_from_specs(cfg, TCFG, SPECS[:2])
  stack, losses = train_lib.train_steps(cfg, TCFG, stack, 20)
  assert losses.dtype == jnp.float32
  assert stack.params["wte"].dtype == jnp.bfloat16
  assert float(losses[-1].mean()) < float(losses[0].mean())


def test_mixed_precision_steps_fp32_parameters_with_the_gradient_of_the_bf16_model():
  # "bf16-mixed": the loss and gradient are those of the bf16 model at the casts of the fp32
  # parameters; Adam updates the fp32 parameters and keeps fp32 moments.
  mixed = gpt2.ModelConfig(64, 12, 1, 16, 2, "bf16-mixed")
  bf16 = gpt2.ModelConfig(64, 12, 1, 16, 2, "bf16")
  stack = train_lib.init_stack_from_specs(mixed, TCFG, SPECS[:1])
  one = train_lib.model_slice(stack, 0)
  tokens = train_lib.batch_tokens(mixed, TCFG, one)

  @jax.jit
  def by_hand(params, opt_state):
    cast = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    loss, grads = jax.value_and_grad(
        lambda q: likelihood.mean_loss(bf16, q, tokens, TCFG.vocab_chunk))(cast)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    updates, _ = train_lib.make_optimizer(TCFG).update(grads, opt_state, params)
    return loss, optax.apply_updates(params, updates)

  loss, expected = by_hand(one.params, one.opt_state)
  stepped, losses = train_lib.train_steps_single(mixed, TCFG, one, 1)
  np.testing.assert_allclose(losses[0], loss, rtol=1e-6)
  assert {a.dtype for a in jax.tree.leaves(stepped.params)} == {jnp.dtype(jnp.float32)}
  assert {a.dtype for a in jax.tree.leaves(stepped.opt_state)} <= {jnp.dtype(jnp.float32),
                                                                    jnp.dtype(jnp.int32)}
  for a, b in zip(jax.tree.leaves(stepped.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_mixed_precision_keeps_the_updates_that_pure_bf16_rounds_away():
  # A LayerNorm gain starts at 1.0, where bf16 values are 2^-7 apart: Adam steps of about the
  # learning rate (1e-3) round away in pure bf16 and accumulate in fp32 master weights. Over a
  # run, pure bf16 stalls while bf16-mixed memorizes nearly as well as fp32.
  tcfg = TrainConfig(steps=400, batch_size=32, learning_rate=3e-3, warmup_steps=20,
                     steps_per_call=8)
  specs = [ModelSpec(32, 0, 3e-3), ModelSpec(32, 1, 3e-3)]
  final, gain_moved = {}, {}
  for precision in ("bf16", "bf16-mixed", "fp32"):
    cfg = gpt2.ModelConfig(64, 16, 1, 16, 2, precision)
    state = train_lib.init_stack_from_specs(cfg, tcfg, specs)
    state, _ = train_lib.train_steps(cfg, tcfg, state, 8)  # the compiled call of train()
    gain_moved[precision] = bool((state.params["h_0"]["ln_1"]["scale"] != 1).any())
    state, losses = train_lib.train(cfg, tcfg, state, start_step=8)
    final[precision] = float(losses.mean())
  assert gain_moved == {"bf16": False, "bf16-mixed": True, "fp32": True}
  # Measured: bf16 ~1.0 nats, bf16-mixed ~0.16, fp32 ~0.12 (log 64 = 4.16 for a blind guess).
  assert final["bf16-mixed"] < 0.3 and final["fp32"] < 0.3, final
  assert final["bf16"] > 3 * final["bf16-mixed"], final


def test_a_tiny_model_memorizes_nearly_all_bits_of_a_few_sequences():
  cfg = gpt2.ModelConfig(vocab_size=32, seq_len=16, layers=1, d_model=32, num_heads=2)
  tcfg = TrainConfig(steps=300, batch_size=8, learning_rate=1e-2, warmup_steps=20,
                     steps_per_call=100)
  state = train_lib.init_stack_from_specs(cfg, tcfg, [ModelSpec(8, 0, 1e-2), ModelSpec(4, 1, 1e-2)])
  state, _ = train_lib.train(cfg, tcfg, state)
  ev = memorization.evaluate_synthetic(cfg, state, eval_batch=8, test_size=64, vocab_chunk=4096)
  memorizable = np.array([8, 4]) * (16 - 1) * 5  # (S - 1) log2 V bits a sequence
  assert (ev["mem_bits"] >= 0.95 * memorizable).all(), ev["mem_bits"] / memorizable
  assert (ev["mem_bits"] <= memorizable + 1e-3).all()
  # Held-out sequences are not memorized: test loss stays at or above log V.
  assert (ev["test_loss"] > np.log(32) * 0.95).all()


def test_text_stack_gathers_each_models_members_from_the_shared_corpus():
  corpus_NxS = jax.random.randint(jax.random.key(3), (50, CFG.seq_len), 0, CFG.vocab_size)
  members = [np.arange(0, 10), np.arange(20, 24)]
  specs = [ModelSpec(10, 0, 1e-2), ModelSpec(4, 1, 1e-2)]
  stack = train_lib.init_stack_from_specs(CFG, TCFG, specs, members)
  np.testing.assert_array_equal(stack.members_MxN[1], [20, 21, 22, 23, 0, 0, 0, 0, 0, 0])
  # Batches: model 1 walks rows 20..23 and wraps, never touching the padding.
  batch = train_lib.batch_tokens(CFG, TCFG, train_lib.model_slice(stack, 1), corpus_NxS)
  np.testing.assert_array_equal(batch, corpus_NxS[np.array([20, 21, 22, 23] * 2)])
  singles = [train_lib.model_slice(stack, i) for i in range(2)]
  stack, losses_KxM = train_lib.train_steps(CFG, TCFG, stack, 10, corpus_NxS)
  for i, single in enumerate(singles):
    _, losses_K = train_lib.train_steps_single(CFG, TCFG, single, 10, corpus_NxS)
    np.testing.assert_allclose(losses_KxM[:, i], losses_K, rtol=2e-5, atol=2e-6)
  assert float(losses_KxM[-1, 1]) < float(losses_KxM[0, 1])


def test_sequential_layout_trains_the_same_models_as_vmap():
  # lax.map over the models (the CPU layout) against one vmap over them (the GPU layout).
  vmapped = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  mapped = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  vmapped, losses_v = train_lib.train_steps_in_layout(CFG, TCFG, vmapped, 25,
                                                      layout=train_lib.StackLayout(sequential=False))
  mapped, losses_m = train_lib.train_steps_in_layout(CFG, TCFG, mapped, 25,
                                                     layout=train_lib.StackLayout(sequential=True))
  np.testing.assert_allclose(losses_m, losses_v, rtol=2e-5, atol=2e-6)
  np.testing.assert_array_equal(mapped.step_M, vmapped.step_M)
  np.testing.assert_array_equal(mapped.data_pos_M, vmapped.data_pos_M)
  np.testing.assert_allclose(mapped.params["wpe"], vmapped.params["wpe"], rtol=1e-4, atol=1e-5)


def test_a_cpu_stack_runs_the_one_model_program_at_every_batch():
  # On a CPU the layout is lax.map over the models, whatever the batch or the stack size, so a
  # model's arithmetic does not depend on the others (tests/test_sharding.py checks devices).
  stack = train_lib.init_stack_from_specs(CFG, TCFG, SPECS)
  for tcfg in (TCFG, TrainConfig(batch_size=256)):
    assert train_lib.stack_layout(CFG, tcfg, stack) == train_lib.StackLayout(sequential=True)
  one = train_lib.init_stack_from_specs(CFG, TCFG, SPECS[:1])
  assert train_lib.stack_layout(CFG, TCFG, one) == train_lib.StackLayout(sequential=True)


def test_calls_end_at_the_stops_and_count_from_the_last_one():
  # Stops every 120 steps with 100 steps a call: calls of 100 and 20, two compiled lengths (the
  # multiples of 100 from step 0 would make five); without stops, multiples of steps_per_call.
  tcfg = train_lib.TrainConfig(steps=600, steps_per_call=100)

  def calls(stops):
    done, out = 0, []
    while done < tcfg.steps:
      end = train_lib.next_boundary(tcfg, done, stops)
      out.append(end - done)
      done = end
    return out
  assert calls((120, 240, 360, 480, 600)) == [100, 20] * 5
  assert calls(()) == [100] * 6
  assert calls((250,)) == [100, 100, 50, 100, 100, 100, 50]
