"""GPT-2 in Flax: learned positions, pre-LayerNorm, GELU MLP of 4d, biases, tied embeddings.

The module returns the final hidden states (after the last LayerNorm), not logits: the vocabulary
projection lives in `likelihood.py`, where it is chunked over the vocabulary so that [B, S, V] fp32
logits are never materialized. The output embedding is the input embedding (`wte`), so

    n_params = V*d + S*d + L*(12*d*d + 13*d) + 2*d      (with n_positions = S).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# precision -> (compute dtype, parameter dtype). "bf16" is pure bf16: parameters and optimizer
# state are bf16 too, so an Adam update below half a weight's bf16 spacing rounds away
# (docs/results.md). "bf16-mixed" computes in bf16 from bf16 casts of fp32 parameters, which the
# optimizer updates in fp32 (fp32 master weights, as in PyTorch autocast and Lightning's
# "bf16-mixed"; unlike autocast, the embeddings, LayerNorms and residual stream are bf16 too): the
# trained model is its parameters cast to bf16, and every estimate is read from that cast.
PRECISIONS = {
    "fp32": (jnp.float32, jnp.float32),
    "bf16": (jnp.bfloat16, jnp.bfloat16),
    "bf16-mixed": (jnp.bfloat16, jnp.float32),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The shape of one GPT-2 model; every model of a stack shares it."""
  vocab_size: int
  seq_len: int  # n_positions
  layers: int
  d_model: int
  num_heads: int
  precision: str = "fp32"  # a key of PRECISIONS

  @property
  def dtype(self):
    """The dtype of activations, of the parameters as the model uses them, and of matmuls."""
    return PRECISIONS[self.precision][0]

  @property
  def param_dtype(self):
    """The dtype parameters are stored and optimized in."""
    return PRECISIONS[self.precision][1]


def n_params(cfg: ModelConfig) -> int:
  """Parameter count of the model, by formula (tests check it against the real tree)."""
  v, s, l, d = cfg.vocab_size, cfg.seq_len, cfg.layers, cfg.d_model
  return v * d + s * d + l * (12 * d * d + 13 * d) + 2 * d


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


# Attention implementation: "einsum" (scores and softmax in fp32, written out here), "xla" or
# "cudnn" (jax.nn.dot_product_attention; cudnn needs a GPU and bf16), or "auto" (see
# `attention_impl`). Read when a function is traced: change it before jit compiles, or clear caches.
ATTENTION = "auto"


def attention_impl(dtype) -> str:
  """The implementation `causal_attention` uses for this dtype on the default backend."""
  if ATTENTION != "auto":
    return ATTENTION
  return "einsum"


def causal_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, dtype):
  """Causal softmax attention, [B, S, H, K] -> [B, S, H, K]; scores and softmax in fp32."""
  impl = attention_impl(dtype)
  if impl in ("xla", "cudnn"):
    return jax.nn.dot_product_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True,
                                        implementation=impl)
  if impl != "einsum":
    raise ValueError(f"model.ATTENTION must be auto, einsum, xla or cudnn, got {impl!r}")
  s, k = q_BxSxHxK.shape[1], q_BxSxHxK.shape[-1]
  # Attention scores and softmax in fp32, as in every stable bf16 recipe. The scale is a multiply
  # by the fp32 reciprocal, not a division: XLA rewrites x / c into x * (1 / c) in some programs
  # (one device) and not in others (a model axis sharded over devices), which made a model's
  # training depend on the device layout (docs/precision.md).
  scale = np.float32(1.0) / np.float32(math.sqrt(k))
  scores_BxHxSxS = jnp.einsum("bqhk,bthk->bhqt", q_BxSxHxK, k_BxSxHxK,
                              preferred_element_type=jnp.float32) * scale
  causal_SxS = jnp.tril(jnp.ones((s, s), bool))
  scores_BxHxSxS = jnp.where(causal_SxS, scores_BxHxSxS, jnp.finfo(jnp.float32).min)
  probs_BxHxSxS = _softmax_last(scores_BxHxSxS).astype(dtype)
  return jnp.einsum("bhqt,bthk->bqhk", probs_BxHxSxS, v_BxSxHxK)


def _softmax_last(x):
  """Softmax over the last axis, normalized by a multiply with the reciprocal of the sum.

  jax.nn.softmax divides by the broadcast sum, and XLA turns that division (and the one in its
  gradient) into a multiply by the reciprocal in some programs but not in others (a model axis
  on one device or sharded over several), so the same model trained to different floats by
  device layout. Written out with the multiply, every program computes the same values.
  """
  e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
  return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


# Weight gradients with explicit transposes (`contract_rows`): True, False, or None for "on a CPU
# only". A speed choice: the results agree up to float rounding. Read at trace time.
EXPLICIT_TRANSPOSES = None


def explicit_transposes() -> bool:
  if EXPLICIT_TRANSPOSES is not None:
    return EXPLICIT_TRANSPOSES
  return jax.default_backend() == "cpu"


def contract_rows(a_NxI, b_NxO, preferred_element_type=None):
  """a.T @ b: [I, O], summed over the shared leading (row) axis, as weight gradients are.

  XLA:CPU hands a matmul to its fast YNNPACK kernels only when the left operand is contracted
  over its last axis; autodiff writes a weight gradient as a dot over axis 0 of both operands,
  which XLA:CPU runs several times slower (benchmarks/README.md). On a CPU the transpose is
  therefore written out, behind an optimization barrier so that XLA does not fold it back into
  the dot. Elsewhere (GPU BLAS transposes for free) it is a plain dot.
  """
  out = preferred_element_type
  if not explicit_transposes():
    return jnp.einsum("ni,no->io", a_NxI, b_NxO, preferred_element_type=out)
  barrier = jax.lax.optimization_barrier
  # Transpose the narrower operand: the transposed copy is not free on a CPU either.
  if a_NxI.shape[1] <= b_NxO.shape[1]:
    return jnp.matmul(barrier(a_NxI.T), b_NxO, preferred_element_type=out)
  return barrier(jnp.matmul(barrier(b_NxO.T), a_NxI, preferred_element_type=out)).T


@jax.custom_vjp
def _dense_matmul(x_NxI, w_IxO):
  return jnp.matmul(x_NxI, w_IxO)


def _dense_matmul_fwd(x_NxI, w_IxO):
  return jnp.matmul(x_NxI, w_IxO), (x_NxI, w_IxO)


def _dense_matmul_bwd(residuals, g_NxO):
  x_NxI, w_IxO = residuals
  return jnp.matmul(g_NxO, w_IxO.T), contract_rows(x_NxI, g_NxO).astype(w_IxO.dtype)


_dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                      **kwargs):
  """`lax.dot_general` for `nn.Dense` ([..., I] @ [I, O]) whose weight gradient is
  `contract_rows`; any other contraction (or option) goes to `lax.dot_general` unchanged."""
  (lhs_contract, rhs_contract), batch = dimension_numbers
  is_dense = (tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
              and not any(batch) and rhs.ndim == 2)
  if (not explicit_transposes() or not is_dense or precision is not None
      or preferred_element_type is not None or kwargs):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
  out_NxO = _dense_matmul(lhs.reshape(-1, lhs.shape[-1]), rhs)
  return out_NxO.reshape(lhs.shape[:-1] + rhs.shape[1:])


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD):
    cfg = self.cfg
    d, h = cfg.d_model, cfg.num_heads
    dense = lambda n, name, std=0.02: nn.Dense(
        n, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
        kernel_init=nn.initializers.normal(std), dot_general=dense_dot_general)
    # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2L).
    resid_std = 0.02 / math.sqrt(2 * cfg.layers)
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                   name=name)

    b, s, _ = x_BxSxD.shape
    y = ln("ln_1")(x_BxSxD)
    qkv = dense(3 * d, "c_attn")(y).reshape(b, s, 3, h, d // h)
    att_BxSxHxK = causal_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], cfg.dtype)
    x_BxSxD = x_BxSxD + dense(d, "c_proj", resid_std)(att_BxSxHxK.reshape(b, s, d))

    y = ln("ln_2")(x_BxSxD)
    y = nn.gelu(dense(4 * d, "c_fc")(y), approximate=True)
    return x_BxSxD + dense(d, "mlp_c_proj", resid_std)(y)


class GPT2(nn.Module):
  """Maps tokens [B, S] to final hidden states [B, S, d]; `wte` doubles as the output layer."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxS):
    cfg = self.cfg
    wte = self.param("wte", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                     cfg.param_dtype).astype(cfg.dtype)
    wpe = self.param("wpe", nn.initializers.normal(0.01), (cfg.seq_len, cfg.d_model),
                     cfg.param_dtype).astype(cfg.dtype)
    s = tokens_BxS.shape[1]
    x_BxSxD = jnp.take(wte, tokens_BxS, axis=0) + wpe[None, :s]
    for i in range(cfg.layers):
      x_BxSxD = Block(cfg, name=f"h_{i}")(x_BxSxD)
    return nn.LayerNorm(epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        name="ln_f")(x_BxSxD)


def output_embedding(params):
  """The [V, d] matrix of the tied output layer (of parameters already in compute dtype)."""
  return params["wte"]


def compute_params(cfg: ModelConfig, params):
  """The parameters as the model computes with them: cast to `cfg.dtype` (bf16 casts of the fp32
  parameters of a "bf16-mixed" model; unchanged otherwise). Gradients flow back through the cast
  to the stored parameters. Every entry point that reads parameters calls it first."""
  return jax.tree.map(lambda a: a.astype(cfg.dtype), params)


def init_params(cfg: ModelConfig, key):
  """Parameters of one model from one key; lift with jax.vmap for a stack."""
  tokens_1xS = jnp.zeros((1, cfg.seq_len), jnp.int32)
  return GPT2(cfg).init(key, tokens_1xS)["params"]


def hidden_states(cfg: ModelConfig, params, tokens_BxS):
  """Final hidden states [B, S, d] of one model (in the model's dtype)."""
  return GPT2(cfg).apply({"params": compute_params(cfg, params)}, tokens_BxS)
