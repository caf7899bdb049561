"""GPT-NeoX (the Pythia suite) in pure JAX, for imported checkpoints.

The forward pass follows Hugging Face's `GPTNeoXForCausalLM`: learned token embeddings
(`embed_in`), no position embeddings but rotary ones on the first `rotary_pct` of each head's
dimensions, pre-LayerNorm blocks whose attention and MLP are added to the residual stream either
in parallel (`use_parallel_residual`, Pythia's form: x + attn(ln1(x)) + mlp(ln2(x))) or one
after the other, a final LayerNorm and an untied output layer (`embed_out`).

Like `gpt2.py`, the model returns final hidden states; `output_embedding` gives the [V, d]
output layer, so `likelihood.py` scores a NeoX stack with the same chunked kernel. Parameters
are a plain pytree (no Flax module: nothing trains these models here):

    {"embed_in": [V, d], "embed_out": [V, d], "final_ln": {"scale", "bias"},
     "h_0": {"ln_1", "ln_2", "qkv": {"kernel": [d, 3d], "bias"}, "dense": {[d, d], "bias"},
             "fc_in": {[d, I], "bias"}, "fc_out": {[I, d], "bias"}}, "h_1": ..., }

The qkv kernel keeps Hugging Face's column order: per head, [q | k | v] of head_size each.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from memjax.model import gpt2

# hidden_act (Hugging Face's ACT2FN names) -> the function. "gelu" is the exact (erf) GELU that
# Pythia uses; the tanh forms are the approximation GPT-2 uses.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class NeoXConfig:
  """The shape of one GPT-NeoX model; every model of a stack shares it (hashable: jit static)."""
  vocab_size: int
  seq_len: int  # max_position_embeddings: the longest sequence the model was made for
  layers: int
  d_model: int
  num_heads: int
  intermediate_size: int
  rotary_pct: float = 0.25
  rotary_base: float = 10000.0
  use_parallel_residual: bool = True
  layer_norm_eps: float = 1e-5
  hidden_act: str = "gelu"
  attention_bias: bool = True
  tie_word_embeddings: bool = False
  precision: str = "fp32"  # "fp32" or "bf16" (pure bf16: parameters and compute)

  @property
  def dtype(self):
    return gpt2.PRECISIONS[self.precision][0]

  @property
  def param_dtype(self):
    return gpt2.PRECISIONS[self.precision][1]

  @property
  def head_size(self) -> int:
    return self.d_model // self.num_heads

  @property
  def rotary_dims(self) -> int:
    """Dimensions of each head that rotate: Hugging Face takes int(head_size * rotary_pct)
    frequencies' worth, 2 * ceil(n / 2) (an odd n rotates one more)."""
    n = int(self.head_size * self.rotary_pct)
    return 2 * len(range(0, n, 2))


def param_shapes(cfg: NeoXConfig) -> dict:
  """The shape of every parameter, as a pytree of tuples (the loader fills these)."""
  v, d, i = cfg.vocab_size, cfg.d_model, cfg.intermediate_size
  ln = {"scale": (d,), "bias": (d,)}
  block = {"ln_1": dict(ln), "ln_2": dict(ln),
           "qkv": {"kernel": (d, 3 * d), "bias": (3 * d,)},
           "dense": {"kernel": (d, d), "bias": (d,)},
           "fc_in": {"kernel": (d, i), "bias": (i,)},
           "fc_out": {"kernel": (i, d), "bias": (d,)}}
  shapes = {"embed_in": (v, d), "final_ln": dict(ln)}
  if not cfg.tie_word_embeddings:
    shapes["embed_out"] = (v, d)
  for layer in range(cfg.layers):
    shapes[f"h_{layer}"] = {k: dict(b) for k, b in block.items()}
  return shapes


def n_params(cfg: NeoXConfig) -> int:
  return sum(math.prod(s) for s in jax.tree.leaves(param_shapes(cfg), is_leaf=_is_shape))


def _is_shape(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def _layer_norm(x_BxSxD, p, eps):
  # In fp32 whatever the model's dtype, as PyTorch's LayerNorm under autocast.
  x = x_BxSxD.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x_BxSxD.dtype)


def _dense(x, p):
  return jnp.matmul(x, p["kernel"]) + p["bias"]


def rotary_tables(cfg: NeoXConfig, s: int):
  """(cos, sin), each [S, rotary_dims] fp32: Hugging Face's non-interleaved (rotate-half) form."""
  n = int(cfg.head_size * cfg.rotary_pct)  # the exponent's denominator, as Hugging Face's
  inv_freq = 1.0 / (cfg.rotary_base ** (np.arange(0, n, 2, dtype=np.float32) / max(n, 1)))
  freqs_SxR2 = np.arange(s, dtype=np.float32)[:, None] * inv_freq[None, :]
  emb_SxR = jnp.asarray(np.concatenate([freqs_SxR2, freqs_SxR2], axis=-1))
  return jnp.cos(emb_SxR), jnp.sin(emb_SxR)


def apply_rotary(x_BxSxHxK, cos_SxR, sin_SxR):
  """Rotates the first R dimensions of each head by position; the rest pass through."""
  r = cos_SxR.shape[-1]
  if r == 0:
    return x_BxSxHxK
  x_rot, x_pass = x_BxSxHxK[..., :r].astype(jnp.float32), x_BxSxHxK[..., r:]
  half = r // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  cos, sin = cos_SxR[None, :, None, :], sin_SxR[None, :, None, :]
  out = (x_rot * cos + rotated * sin).astype(x_BxSxHxK.dtype)
  return jnp.concatenate([out, x_pass], axis=-1)


def _attention(cfg, p, x_BxSxD, cos_SxR, sin_SxR):
  b, s, d = x_BxSxD.shape
  h, k = cfg.num_heads, cfg.head_size
  qkv_BxSxHx3K = _dense(x_BxSxD, p["qkv"]).reshape(b, s, h, 3 * k)
  q, kk, v = jnp.split(qkv_BxSxHx3K, 3, axis=-1)
  q, kk = apply_rotary(q, cos_SxR, sin_SxR), apply_rotary(kk, cos_SxR, sin_SxR)
  att_BxSxHxK = gpt2.causal_attention(q, kk, v, cfg.dtype)
  return _dense(att_BxSxHxK.reshape(b, s, d), p["dense"])


def _mlp(cfg, p, x_BxSxD):
  return _dense(ACTIVATIONS[cfg.hidden_act](_dense(x_BxSxD, p["fc_in"])), p["fc_out"])


def _block(cfg, p, x_BxSxD, cos_SxR, sin_SxR):
  eps = cfg.layer_norm_eps
  att = _attention(cfg, p, _layer_norm(x_BxSxD, p["ln_1"], eps), cos_SxR, sin_SxR)
  if cfg.use_parallel_residual:
    return x_BxSxD + att + _mlp(cfg, p, _layer_norm(x_BxSxD, p["ln_2"], eps))
  x_BxSxD = x_BxSxD + att
  return x_BxSxD + _mlp(cfg, p, _layer_norm(x_BxSxD, p["ln_2"], eps))


def compute_params(cfg: NeoXConfig, params):
  """The parameters cast to the compute dtype (as `gpt2.compute_params`)."""
  return jax.tree.map(lambda a: a.astype(cfg.dtype), params)


def output_embedding(params):
  """The [V, d] output layer: `embed_out`, or `embed_in` for a model with tied embeddings."""
  return params.get("embed_out", params["embed_in"])


def hidden_states(cfg: NeoXConfig, params, tokens_BxS):
  """Final hidden states [B, S, d] of one model (after the final LayerNorm)."""
  params = compute_params(cfg, params)
  cos_SxR, sin_SxR = rotary_tables(cfg, tokens_BxS.shape[1])
  x_BxSxD = jnp.take(params["embed_in"], tokens_BxS, axis=0)
  for layer in range(cfg.layers):
    x_BxSxD = _block(cfg, params[f"h_{layer}"], x_BxSxD, cos_SxR, sin_SxR)
  return _layer_norm(x_BxSxD, params["final_ln"], cfg.layer_norm_eps)
