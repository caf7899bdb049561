"""Greedy extraction by a stack of models: decoding, scores, memorized and untrained models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.estimators import extraction
from memjax import likelihood
from memjax.model import gpt2
from memjax import train as train_lib
from memjax.train import ModelSpec, TrainConfig

CFG = gpt2.ModelConfig(vocab_size=37, seq_len=12, layers=1, d_model=16, num_heads=2)


@pytest.fixture(scope="module")
def stack_params():
  keys = jax.random.split(jax.random.key(0), 3)
  params_M = jax.vmap(lambda k: gpt2.init_params(CFG, k))(keys)
  # Larger weights, so the greedy choices depend on the context and errors would show.
  return jax.tree.map(lambda x: x * 6, params_M)


@pytest.mark.parametrize("chunk", [37, 8, 5, 4096])
def test_chunked_argmax_equals_dense_argmax_and_breaks_ties_low(chunk):
  h = jax.random.normal(jax.random.key(1), (9, 6))
  w = jax.random.normal(jax.random.key(2), (37, 6))
  w = w.at[30].set(w[3])  # a tie across chunks: the lower id wins
  h = h.at[0].set(w[3] * 5)
  dense = jnp.argmax(h @ w.T, -1)
  got = extraction.chunked_argmax(h, w, chunk)
  np.testing.assert_array_equal(got, dense)
  assert int(got[0]) == 3


def test_greedy_continuation_keeps_the_prompt_and_takes_each_models_argmax(stack_params):
  tokens = jax.random.randint(jax.random.key(3), (3, 5, CFG.seq_len), 0, CFG.vocab_size)
  p = 4
  gen = extraction.greedy_continue(CFG, stack_params, tokens[..., :p], vocab_chunk=10)
  assert gen.shape == (3, 5, CFG.seq_len) and gen.dtype == jnp.int32
  np.testing.assert_array_equal(gen[..., :p], tokens[..., :p])
  # Teacher-forced on its own output, every model's next-token argmax reproduces it.
  for m in range(3):
    params = train_lib.model_slice(stack_params, m)
    argmax = likelihood.next_token_stats(CFG, params, gen[m])["argmax"]
    np.testing.assert_array_equal(argmax[:, p - 1:-1], gen[m, :, p:])
  # The models differ, so their continuations do too.
  assert not np.array_equal(gen[0, :, p:], gen[1, :, p:])


def test_shared_prompts_equal_the_same_prompts_given_per_model(stack_params):
  prompts = jax.random.randint(jax.random.key(4), (6, 3), 0, CFG.vocab_size)
  shared = extraction.greedy_continue(CFG, stack_params, prompts, total_len=9)
  per_model = extraction.greedy_continue(CFG, stack_params, jnp.stack([prompts] * 3), total_len=9)
  assert shared.shape == (3, 6, 9)
  np.testing.assert_array_equal(shared, per_model)
  with pytest.raises(ValueError, match="prefix length"):
    extraction.greedy_continue(CFG, stack_params, prompts, total_len=3)
  with pytest.raises(ValueError, match="seq_len"):
    extraction.greedy_continue(CFG, stack_params, prompts, total_len=CFG.seq_len + 1)


def test_extraction_scores_count_exact_and_token_matches():
  targets = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
  generated = np.array([[[1, 2, 3, 4, 5], [1, 2, 9, 4, 9]]])  # [M=1, B=2, T=5]
  s = extraction.extraction_scores(generated, targets, prefix_len=2)
  np.testing.assert_array_equal(s["exact"], [[True, False]])
  np.testing.assert_allclose(s["token_match"], [[1.0, 1 / 3]])
  for bad in (5, 9, -1):  # nothing (or the wrong end) left to score
    with pytest.raises(ValueError, match=f"prefix_len must be in \\[0, 5\\).*got {bad}"):
      extraction.extraction_scores(generated, targets, prefix_len=bad)


def test_extract_batches_every_prefix_and_matches_unbatched(stack_params):
  tokens = jax.random.randint(jax.random.key(5), (7, CFG.seq_len), 0, CFG.vocab_size)
  done = []
  out = extraction.extract(CFG, stack_params, tokens, (2, 5), batch_size=3,
                           progress=done.append)
  assert sorted(out) == [2, 5] and sum(done) == 2 * 7
  for p in (2, 5):
    gen = extraction.greedy_continue(CFG, stack_params, tokens[:, :p])
    want = extraction.extraction_scores(gen, tokens, p)
    np.testing.assert_array_equal(out[p]["exact"], want["exact"])
    np.testing.assert_allclose(out[p]["token_match"], want["token_match"])
    assert out[p]["exact"].shape == (3, 7)


def test_a_model_that_memorized_four_sequences_extracts_them_and_an_untrained_one_does_not():
  cfg = gpt2.ModelConfig(vocab_size=32, seq_len=16, layers=1, d_model=32, num_heads=2)
  tcfg = TrainConfig(steps=300, batch_size=4, learning_rate=1e-2, warmup_steps=20,
                     steps_per_call=150)
  corpus = np.asarray(jax.random.randint(jax.random.key(6), (40, 16), 0, 32))
  members = [np.arange(4), np.arange(4)]
  state = train_lib.init_stack_from_specs(cfg, tcfg, [ModelSpec(4, 0, 1e-2), ModelSpec(4, 1, 1e-2)],
                                          members)
  untrained = jax.tree.map(jnp.copy, state.params)  # train() donates the state
  state, _ = train_lib.train(cfg, tcfg, state, corpus_NxS=jnp.asarray(corpus))
  prefixes = (4, 8)
  trained_members = extraction.extract(cfg, state.params, corpus[:4], prefixes)
  nonmembers = extraction.extract(cfg, state.params, corpus[4:], prefixes)
  fresh = extraction.extract(cfg, untrained, corpus[:4], prefixes)
  for p in prefixes:
    assert trained_members[p]["exact"].all(), trained_members[p]["token_match"]
    np.testing.assert_allclose(trained_members[p]["token_match"], 1.0)
    # Random held-out sequences cannot be continued; nor can an untrained model continue anything.
    assert nonmembers[p]["exact"].mean() == 0.0
    assert nonmembers[p]["token_match"].mean() < 0.15
    assert fresh[p]["exact"].mean() == 0.0
    assert fresh[p]["token_match"].mean() < 0.15


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kv_cache_decoding_equals_the_full_forward_decoding(precision):
  cfg = gpt2.ModelConfig(vocab_size=41, seq_len=14, layers=2, d_model=16, num_heads=4,
                              precision=precision)
  keys = jax.random.split(jax.random.key(7), 2)
  params_M = jax.vmap(lambda k: gpt2.init_params(cfg, k))(keys)
  params_M = jax.tree.map(lambda x: x * 6, params_M)
  tokens = jax.random.randint(jax.random.key(8), (2, 6, 14), 0, 41)
  for p in (1, 5):
    cached = extraction.greedy_continue(cfg, params_M, tokens[..., :p], vocab_chunk=16)
    full = extraction.greedy_continue(cfg, params_M, tokens[..., :p], vocab_chunk=16,
                                      method="full_forward")
    agree = float((np.asarray(cached) == np.asarray(full)).mean())
    # fp32 agrees exactly; in bf16 a near-tie may round the other way, and then diverge.
    assert agree == 1.0 if precision == "fp32" else agree > 0.9, agree
