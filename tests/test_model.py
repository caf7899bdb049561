import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import likelihood
from memjax.model import gpt2


@pytest.mark.parametrize("v,s,l,d,h,expected", [
    (2048, 64, 1, 32, 4, 80_352),
    (2048, 64, 2, 128, 4, 667_136),
    (2048, 64, 8, 256, 4, 6_859_264),
    (128, 32, 1, 16, 2, None),
    (300, 17, 3, 24, 3, None),
])
def test_param_count_matches_formula_and_tree(v, s, l, d, h, expected):
  cfg = gpt2.ModelConfig(v, s, l, d, h)
  formula = v * d + s * d + l * (12 * d * d + 13 * d) + 2 * d
  assert gpt2.n_params(cfg) == formula
  if expected is not None:
    assert formula == expected
  # The real parameter tree, shapes only (no memory for the big ones).
  shapes = jax.eval_shape(lambda k: gpt2.init_params(cfg, k), jax.random.key(0))
  assert gpt2.count_params(shapes) == formula


@pytest.mark.parametrize("precision,param_dtype,compute_dtype", [
    ("fp32", jnp.float32, jnp.float32), ("bf16", jnp.bfloat16, jnp.bfloat16),
    ("bf16-mixed", jnp.float32, jnp.bfloat16)])
def test_parameters_have_the_requested_dtype(precision, param_dtype, compute_dtype):
  cfg = gpt2.ModelConfig(64, 8, 1, 16, 2, precision)
  params = gpt2.init_params(cfg, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(param_dtype)}
  tokens = jnp.zeros((2, 8), jnp.int32)
  hidden = jax.eval_shape(lambda p: gpt2.hidden_states(cfg, p, tokens), params)
  assert hidden.dtype == compute_dtype


def test_a_mixed_precision_model_is_the_bf16_model_of_its_cast_parameters():
  # Every estimate of a "bf16-mixed" model must be that of the bf16 model whose parameters are
  # the casts of its fp32 ones: likelihoods, next-token statistics and greedy decoding.
  from memjax.estimators import extraction
  mixed = gpt2.ModelConfig(50, 12, 2, 32, 4, "bf16-mixed")
  bf16 = gpt2.ModelConfig(50, 12, 2, 32, 4, "bf16")
  params_M = jax.vmap(lambda k: gpt2.init_params(mixed, k))(
      jax.random.split(jax.random.key(0), 2))
  params_M = jax.tree.map(lambda x: x * 3 + 1e-3, params_M)  # off the bf16 grid
  cast_M = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params_M)
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 50)
  one = lambda tree: jax.tree.map(lambda a: a[0], tree)
  logprobs = jax.jit(likelihood.token_logprobs, static_argnums=0)
  np.testing.assert_array_equal(logprobs(mixed, one(params_M), tokens),
                                logprobs(bf16, one(cast_M), tokens))
  stats = jax.jit(likelihood.next_token_stats, static_argnums=0)
  for key, value in stats(mixed, one(params_M), tokens).items():
    np.testing.assert_array_equal(value, stats(bf16, one(cast_M), tokens)[key])
  np.testing.assert_array_equal(extraction.greedy_continue(mixed, params_M, tokens[:, :4]),
                                extraction.greedy_continue(bf16, cast_M, tokens[:, :4]))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
def test_causality_logprob_of_token_t_ignores_later_tokens(precision):
  cfg = gpt2.ModelConfig(50, 12, 2, 32, 4, precision)
  params = gpt2.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)
  base = likelihood.token_logprobs(cfg, params, tokens)
  for t in (0, 3, 10):
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % 50)
    other = likelihood.token_logprobs(cfg, params, changed)
    np.testing.assert_array_equal(np.asarray(base[:, : t + 1]), np.asarray(other[:, : t + 1]))
    assert not np.allclose(np.asarray(base[:, t + 1:]), np.asarray(other[:, t + 1:]))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attention_implementations_give_the_same_logprobs(precision, monkeypatch):
  cfg = gpt2.ModelConfig(50, 12, 2, 32, 4, precision)
  params = gpt2.init_params(cfg, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 4, params)  # sharper attention, so differences would show
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 50)
  monkeypatch.setattr(gpt2, "ATTENTION", "einsum")
  base = likelihood.token_logprobs(cfg, params, tokens)
  monkeypatch.setattr(gpt2, "ATTENTION", "xla")
  other = likelihood.token_logprobs(cfg, params, tokens)
  np.testing.assert_allclose(other, base, atol=1e-4 if precision == "fp32" else 0.1)
  monkeypatch.setattr(gpt2, "ATTENTION", "flash")
  with pytest.raises(ValueError, match="einsum"):
    likelihood.token_logprobs(cfg, params, tokens)


def test_explicit_transposes_give_the_gradients_of_plain_autodiff(monkeypatch):
  # The CPU weight gradients (model.contract_rows, behind Dense and the likelihood kernel) are a
  # speed choice: a stack's loss gradients must equal those of JAX's own transposes.
  # V > the 128-column chunk, so the scanned backward of the likelihood kernel runs too.
  cfg = gpt2.ModelConfig(300, 8, 1, 16, 2)
  params_M = jax.vmap(lambda k: gpt2.init_params(cfg, k))(jax.random.split(jax.random.key(0), 2))
  tokens_MxBxS = jax.random.randint(jax.random.key(1), (2, 3, 8), 0, 300)
  grads = lambda: jax.jit(jax.vmap(jax.grad(lambda p, t: likelihood.mean_loss(cfg, p, t, 128))))(
      params_M, tokens_MxBxS)
  monkeypatch.setattr(gpt2, "EXPLICIT_TRANSPOSES", False)
  plain = grads()
  monkeypatch.setattr(gpt2, "EXPLICIT_TRANSPOSES", True)
  explicit = grads()
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(explicit)):
    np.testing.assert_allclose(b, a, atol=1e-6 * float(jnp.abs(a).max()))


@pytest.mark.parametrize("shape_a,shape_b", [((7, 3), (7, 5)), ((7, 5), (7, 3))])
def test_contract_rows_is_a_transposed_matmul_either_way_round(shape_a, shape_b, monkeypatch):
  monkeypatch.setattr(gpt2, "EXPLICIT_TRANSPOSES", True)
  a = jax.random.normal(jax.random.key(0), shape_a)
  b = jax.random.normal(jax.random.key(1), shape_b)
  np.testing.assert_allclose(jax.jit(gpt2.contract_rows)(a, b), np.asarray(a).T @ np.asarray(b),
                             rtol=1e-5, atol=1e-6)
  # bf16 operands with an fp32 result, as the likelihood kernel asks for its embedding gradient.
  bf16 = gpt2.contract_rows(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                                 preferred_element_type=jnp.float32)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, np.asarray(a).T @ np.asarray(b), rtol=2e-2, atol=5e-2)


def test_dense_dot_general_leaves_other_contractions_to_lax(monkeypatch):
  monkeypatch.setattr(gpt2, "EXPLICIT_TRANSPOSES", True)
  x = jax.random.normal(jax.random.key(0), (2, 4, 3))
  w = jax.random.normal(jax.random.key(1), (2, 3, 5))
  batched = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_allclose(gpt2.dense_dot_general(x, w, batched),
                             jax.lax.dot_general(x, w, batched), rtol=1e-6)
  dense = (((2,), (0,)), ((), ()))
  np.testing.assert_allclose(gpt2.dense_dot_general(x, w[0], dense),
                             jax.lax.dot_general(x, w[0], dense), rtol=1e-6)
