import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import likelihood
from memjax import model as model_lib


@pytest.mark.parametrize("v,s,l,d,h,expected", [
    (2048, 64, 1, 32, 4, 80_352),
    (2048, 64, 2, 128, 4, 667_136),
    (2048, 64, 8, 256, 4, 6_859_264),
    (128, 32, 1, 16, 2, None),
    (300, 17, 3, 24, 3, None),
])
def test_param_count_matches_formula_and_tree(v, s, l, d, h, expected):
  cfg = model_lib.ModelConfig(v, s, l, d, h)
  formula = v * d + s * d + l * (12 * d * d + 13 * d) + 2 * d
  assert model_lib.n_params(cfg) == formula
  if expected is not None:
    assert formula == expected
  # The real parameter tree, shapes only (no memory for the big ones).
  shapes = jax.eval_shape(lambda k: model_lib.init_params(cfg, k), jax.random.key(0))
  assert model_lib.count_params(shapes) == formula


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_parameters_have_the_requested_dtype(precision):
  cfg = model_lib.ModelConfig(64, 8, 1, 16, 2, precision)
  params = model_lib.init_params(cfg, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(cfg.dtype)}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_causality_logprob_of_token_t_ignores_later_tokens(precision):
  cfg = model_lib.ModelConfig(50, 12, 2, 32, 4, precision)
  params = model_lib.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)
  base = likelihood.token_logprobs(cfg, params, tokens)
  for t in (0, 3, 10):
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % 50)
    other = likelihood.token_logprobs(cfg, params, changed)
    np.testing.assert_array_equal(np.asarray(base[:, : t + 1]), np.asarray(other[:, : t + 1]))
    assert not np.allclose(np.asarray(base[:, t + 1:]), np.asarray(other[:, t + 1:]))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attention_implementations_give_the_same_logprobs(precision, monkeypatch):
  cfg = model_lib.ModelConfig(50, 12, 2, 32, 4, precision)
  params = model_lib.init_params(cfg, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 4, params)  # sharper attention, so differences would show
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 50)
  monkeypatch.setattr(model_lib, "ATTENTION", "einsum")
  base = likelihood.token_logprobs(cfg, params, tokens)
  monkeypatch.setattr(model_lib, "ATTENTION", "xla")
  other = likelihood.token_logprobs(cfg, params, tokens)
  np.testing.assert_allclose(other, base, atol=1e-4 if precision == "fp32" else 0.1)
  monkeypatch.setattr(model_lib, "ATTENTION", "flash")
  with pytest.raises(ValueError, match="einsum"):
    likelihood.token_logprobs(cfg, params, tokens)
