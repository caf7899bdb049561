import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import likelihood
from memjax.model import gpt2

CFG = gpt2.ModelConfig(vocab_size=97, seq_len=10, layers=1, d_model=16, num_heads=2)


def dense_logprobs(cfg, params, tokens):
  """Reference: full [B, S, V] logits and log-softmax, no chunking."""
  h = gpt2.hidden_states(cfg, params, tokens).astype(jnp.float32)
  logp = jax.nn.log_softmax(h @ params["wte"].astype(jnp.float32).T, -1) / math.log(2)
  return logp


@pytest.fixture(scope="module")
def params_and_tokens():
  params = gpt2.init_params(CFG, jax.random.key(0))
  # Larger weights so the distribution is far from uniform and errors would show.
  params = jax.tree.map(lambda x: x * 8, params)
  tokens = jax.random.randint(jax.random.key(1), (3, CFG.seq_len), 0, CFG.vocab_size)
  return params, tokens


@pytest.mark.parametrize("chunk", [97, 32, 10, 1000])
def test_chunked_logprobs_equal_dense(params_and_tokens, chunk):
  params, tokens = params_and_tokens
  dense = dense_logprobs(CFG, params, tokens)
  expected = jnp.take_along_axis(dense[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  got = likelihood.token_logprobs(CFG, params, tokens, chunk)
  np.testing.assert_allclose(got[:, 1:], expected, atol=2e-5)
  np.testing.assert_allclose(got[:, 0], -math.log2(CFG.vocab_size))
  assert got.dtype == jnp.float32 and got.shape == tokens.shape


@pytest.mark.parametrize("chunk", [97, 20])
def test_custom_backward_equals_autodiff_of_dense(params_and_tokens, chunk):
  params, tokens = params_and_tokens
  def dense_sum(p):
    d = dense_logprobs(CFG, p, tokens)
    return jnp.take_along_axis(d[:, :-1], tokens[:, 1:, None], -1).sum()
  g_dense = jax.grad(dense_sum)(params)
  g_kernel = jax.grad(lambda p: likelihood.token_logprobs(CFG, p, tokens, chunk).sum())(params)
  for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_kernel)):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-4)


def test_one_token_sequences_score_only_the_unconditioned_first_token(params_and_tokens):
  params, _ = params_and_tokens
  tokens_Bx1 = jnp.zeros((2, 1), jnp.int32)
  for logp in (likelihood.token_logprobs(CFG, params, tokens_Bx1),
               likelihood.next_token_stats(CFG, params, tokens_Bx1)["logp"]):
    np.testing.assert_allclose(logp, np.full((2, 1), -math.log2(CFG.vocab_size)))


def test_next_token_stats_match_dense(params_and_tokens):
  params, tokens = params_and_tokens
  dense = dense_logprobs(CFG, params, tokens)
  p = jnp.exp2(dense)
  entropy = -(p * dense).sum(-1)
  var = (p * dense**2).sum(-1) - (p * dense).sum(-1) ** 2
  stats = likelihood.next_token_stats(CFG, params, tokens, vocab_chunk=25)
  np.testing.assert_allclose(stats["entropy"], entropy, atol=1e-4)
  np.testing.assert_allclose(stats["var_logp"], var, atol=1e-3, rtol=1e-4)
  np.testing.assert_array_equal(stats["argmax"], dense.argmax(-1))
  np.testing.assert_allclose(stats["logp"], likelihood.token_logprobs(CFG, params, tokens),
                             atol=2e-5)


def test_stack_kernel_scores_each_model_on_its_own_tokens(params_and_tokens):
  params, tokens = params_and_tokens
  params2 = gpt2.init_params(CFG, jax.random.key(5))
  stack = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, params2)
  tokens2 = (tokens + 1) % CFG.vocab_size
  got = likelihood.stack_token_logprobs(CFG, stack, jnp.stack([tokens, tokens2]), 32)
  assert got.shape == (2,) + tokens.shape
  np.testing.assert_allclose(got[0], likelihood.token_logprobs(CFG, params, tokens), atol=1e-5)
  np.testing.assert_allclose(got[1], likelihood.token_logprobs(CFG, params2, tokens2), atol=1e-5)


def test_bf16_model_gives_fp32_logprobs_close_to_fp32_model():
  cfg32 = gpt2.ModelConfig(97, 10, 1, 16, 2, "fp32")
  cfg16 = gpt2.ModelConfig(97, 10, 1, 16, 2, "bf16")
  params = gpt2.init_params(cfg32, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 0, 97)
  lp32 = likelihood.token_logprobs(cfg32, params, tokens)
  lp16 = likelihood.token_logprobs(cfg16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params),
                                   tokens)
  assert lp16.dtype == jnp.float32
  np.testing.assert_allclose(lp16, lp32, atol=0.05)


@pytest.mark.parametrize("block", [64, 300])
def test_chunks_narrowed_to_the_logits_block_give_the_same_values_and_grads(
    params_and_tokens, monkeypatch, block):
  # 27 rows: a block of 64 (or 300) elements allows 2 (or 11) columns, raised to MIN_CHUNK=16
  # here, so V=97 is walked in 7 padded chunks, against one chunk of 97.
  params, tokens = params_and_tokens
  monkeypatch.setattr(likelihood, "LOGITS_BLOCK_ELEMENTS", 2**24)
  assert likelihood.effective_chunk(27, 97, 4096) == 97
  monkeypatch.setattr(likelihood, "LOGITS_BLOCK_ELEMENTS", block)
  monkeypatch.setattr(likelihood, "MIN_CHUNK", 16)
  assert likelihood.effective_chunk(27, 97, 4096) == 16
  assert likelihood.effective_chunk(27, 97, 8) == 8  # an explicit smaller chunk still wins
  dense = dense_logprobs(CFG, params, tokens)
  expected = jnp.take_along_axis(dense[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  got = likelihood.token_logprobs(CFG, params, tokens, 4096)
  np.testing.assert_allclose(got[:, 1:], expected, atol=2e-5)
  stats = likelihood.next_token_stats(CFG, params, tokens, 4096)  # narrowed the same way
  np.testing.assert_allclose(stats["entropy"], -(jnp.exp2(dense) * dense).sum(-1), atol=1e-4)
  np.testing.assert_array_equal(stats["argmax"], dense.argmax(-1))
  g_dense = jax.grad(lambda p: jnp.take_along_axis(
      dense_logprobs(CFG, p, tokens)[:, :-1], tokens[:, 1:, None], -1).sum())(params)
  g_kernel = jax.grad(lambda p: likelihood.token_logprobs(CFG, p, tokens, 4096).sum())(params)
  for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_kernel)):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-4)


def test_effective_chunk_bounds_the_logits_block(monkeypatch):
  assert likelihood.logits_block_elements() == 2**16  # the CPU default
  assert likelihood.effective_chunk(248, 256, 4096) == 256  # small: one chunk, no scan
  assert likelihood.effective_chunk(1984, 2048, 4096) == 256
  monkeypatch.setattr(likelihood, "LOGITS_BLOCK_ELEMENTS", 2**24)  # the GPU default
  assert likelihood.effective_chunk(4032, 2048, 4096) == 2048  # 64 sequences of 64: one chunk
  k = likelihood.effective_chunk(63 * 2048, 2048, 4096)  # 2048 sequences of 64 tokens
  assert k == 256 and k % likelihood.MIN_CHUNK == 0
  assert likelihood.effective_chunk(63 * 512, 50257, 4096) == 512
  assert likelihood.effective_chunk(10**7, 50257, 4096) == likelihood.MIN_CHUNK


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_and_fp32_gradients_of_the_kernel_agree(precision):
  # The bf16 backward forms (onehot - p) in bf16 for the matmuls: close to the fp32 gradient.
  cfg = gpt2.ModelConfig(97, 10, 1, 16, 2, precision)
  params32 = gpt2.init_params(gpt2.ModelConfig(97, 10, 1, 16, 2), jax.random.key(0))
  params = jax.tree.map(lambda x: x.astype(cfg.dtype), params32)
  tokens = jax.random.randint(jax.random.key(1), (4, 10), 0, 97)
  g = jax.grad(lambda p: likelihood.mean_loss(cfg, p, tokens, 32))(params)
  g32 = jax.grad(lambda p: likelihood.mean_loss(
      gpt2.ModelConfig(97, 10, 1, 16, 2), p, tokens, 32))(params32)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g32)):
    scale = float(jnp.abs(b).max()) + 1e-6
    assert float(jnp.abs(a.astype(jnp.float32) - b).max()) <= 0.05 * scale
