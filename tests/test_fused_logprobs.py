"""The fused Pallas kernel (interpreted on the CPU) against the XLA likelihood kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import fused_logprobs
from memjax import likelihood
from memjax.model import gpt2
from memjax import train as train_lib


@pytest.fixture
def small_blocks(monkeypatch):
  # Several row blocks, vocabulary blocks (the last one partly padding) and row splits.
  monkeypatch.setattr(fused_logprobs, "BLOCK_ROWS", 16)
  monkeypatch.setattr(fused_logprobs, "BLOCK_VOCAB", 32)
  monkeypatch.setattr(fused_logprobs, "ROW_SPLITS", 3)


@pytest.fixture
def pallas_kernel(monkeypatch):
  # KERNEL is read when a function is traced: drop compiled programs on the way in and out, so
  # that neither this test nor a later one runs a program traced with the other kernel.
  jax.clear_caches()
  monkeypatch.setattr(likelihood, "KERNEL", "pallas")
  yield
  jax.clear_caches()


def inputs(n, v, d, dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  h = jax.random.normal(k[0], (n, d)).astype(dtype)
  w = (0.7 * jax.random.normal(k[1], (v, d))).astype(dtype)
  return h, w, jax.random.randint(k[2], (n,), 0, v), jax.random.normal(k[3], (n,))


@pytest.mark.parametrize("n,v,d,dtype", [(100, 97, 16, jnp.float32), (37, 200, 32, jnp.float32),
                                         (100, 97, 16, jnp.bfloat16)])
def test_fused_kernel_gives_the_xla_kernels_logprobs_and_gradients(small_blocks, n, v, d, dtype):
  h, w, t, g = inputs(n, v, d, dtype)
  xla = lambda h, w: likelihood._target_logprobs(h, w, t, 4096)
  fused = lambda h, w: fused_logprobs.target_logprobs(h, w, t)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(fused(h, w), xla(h, w), rtol=tol, atol=tol)
  assert fused(h, w).dtype == jnp.float32
  loss = lambda f: lambda h, w: (f(h, w) * g).sum()
  grads_fused = jax.grad(loss(fused), argnums=(0, 1))(h, w)
  grads_xla = jax.grad(loss(xla), argnums=(0, 1))(h, w)
  for a, b in zip(grads_fused, grads_xla):
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max())


def test_a_stack_trains_the_same_with_either_kernel(small_blocks, pallas_kernel):
  cfg = gpt2.ModelConfig(97, 12, 1, 32, 2, "fp32")
  tcfg = train_lib.TrainConfig(steps=4, batch_size=8, learning_rate=3e-3, warmup_steps=2,
                               steps_per_call=4)
  specs = [train_lib.ModelSpec(16, i, 3e-3) for i in range(2)]
  fused, losses_fused = train_lib.train_steps(
      cfg, tcfg, train_lib.init_stack_from_specs(cfg, tcfg, specs), 4)
  likelihood.KERNEL = "xla"
  jax.clear_caches()
  ref, losses_ref = train_lib.train_steps(
      cfg, tcfg, train_lib.init_stack_from_specs(cfg, tcfg, specs), 4)
  np.testing.assert_allclose(losses_fused, losses_ref, rtol=1e-5)
  # The key bias has a zero true gradient, so rounding moves it by up to +-lr a step: skip it.
  wte = lambda s: np.asarray(s.params["wte"])
  np.testing.assert_allclose(wte(fused), wte(ref), atol=1e-4)


def test_unsupported_widths_and_kernel_names_are_refused(pallas_kernel):
  assert fused_logprobs.supported(16) and fused_logprobs.supported(256)
  assert not any(fused_logprobs.supported(d) for d in (8, 24, 48, 100))
  cfg = gpt2.ModelConfig(50, 8, 1, 24, 2)
  params = gpt2.init_params(cfg, jax.random.key(0))
  tokens = jnp.zeros((2, 8), jnp.int32)
  with pytest.raises(ValueError, match="power of two >= 16, got 24"):
    likelihood.token_logprobs(cfg, params, tokens)
  likelihood.KERNEL = "triton"
  with pytest.raises(ValueError, match="must be xla or pallas"):
    likelihood.token_logprobs(cfg, params, tokens)


def test_the_kernels_lower_to_triton_for_a_gpu(monkeypatch):
  # Without a GPU, lower for CUDA anyway: Pallas turns each kernel into Triton IR here, and
  # refuses what Triton cannot take (shapes, ops). Compiling that IR still needs a GPU.
  from jax import export
  monkeypatch.setattr(fused_logprobs, "INTERPRET", False)
  triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
  for n, v, d, dtype in [(4032, 2048, 32, jnp.bfloat16), (500, 50257, 256, jnp.float32)]:
    h, w, t = jnp.zeros((n, d), dtype), jnp.zeros((v, d), dtype), jnp.zeros((n,), jnp.int32)
    grads = jax.grad(lambda h, w: fused_logprobs.target_logprobs(h, w, t).sum(), argnums=(0, 1))
    module = export.export(jax.jit(grads), platforms=["cuda"], disabled_checks=[triton])(h, w)
    # The forward kernel, and the two of the backward pass.
    assert module.mlir_module().count('name = "logprobs_') == 3
