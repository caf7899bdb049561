"""Extraction: greedy continuation of a prefix by a whole stack of models, and match scores.

Morris et al. 2025 (section on extraction) and Chen, Han, Miyao 2024 ("memorization score"):
given the first P tokens of a sequence, a model decodes the rest greedily; the sample is
*extracted* when every decoded token equals the true one (exact match), and its memorization
score is the fraction of decoded tokens that equal the true ones.

`greedy_continue` decodes for every model of a stack at once: one jit-compiled program, `vmap`
over the model axis and a `lax.fori_loop` over positions. By default it feeds one token a step and
caches every layer's keys and values, so a whole continuation costs about one forward pass; the
plain alternative (`method="full_forward"`) recomputes the model's own forward pass over the
fixed-length buffer at every step (about S - P forward passes: some 30x slower at S=64, P=8) and
is what the cached decoder is tested against. Only the hidden state of the newest position is
projected onto the vocabulary, in chunks, so [B, V] logits of a large vocabulary are never
materialized whole. Ties go to the lowest token id, as in `jnp.argmax` (and
`likelihood.next_token_stats`'s 'argmax').

Prompts are either per model ([M, B, P], e.g. each model's own training samples) or shared by
every model ([B, P], e.g. held-out non-members).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from memjax import likelihood
from memjax.model import gpt2
from memjax.model import module_of


def chunked_argmax(h_BxD, w_VxD, vocab_chunk=likelihood.DEFAULT_VOCAB_CHUNK):
  """argmax_v of h @ w.T per row, in fp32, walking the vocabulary in chunks; ties -> lowest id."""
  v, d = w_VxD.shape
  k = min(vocab_chunk, v)
  c = -(-v // k)
  if c == 1:
    logits = jnp.einsum("bd,vd->bv", h_BxD, w_VxD, preferred_element_type=jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  w_CxKxD = jnp.pad(w_VxD, ((0, c * k - v), (0, 0))).reshape(c, k, d)
  valid_CxK = (jnp.arange(c * k) < v).reshape(c, k)
  offsets_C = jnp.arange(c, dtype=jnp.int32) * k

  def body(carry, xs):
    best_val, best_idx = carry
    w_KxD, valid_K, offset = xs
    logits = jnp.einsum("bd,kd->bk", h_BxD, w_KxD, preferred_element_type=jnp.float32)
    logits = jnp.where(valid_K, logits, -jnp.inf)
    idx = jnp.argmax(logits, axis=-1)
    val = jnp.take_along_axis(logits, idx[:, None], -1)[:, 0]
    better = val > best_val  # strict: an earlier chunk keeps a tie
    return (jnp.where(better, val, best_val),
            jnp.where(better, idx.astype(jnp.int32) + offset, best_idx)), None

  b = h_BxD.shape[0]
  init = (jnp.full((b,), -jnp.inf, jnp.float32), jnp.zeros((b,), jnp.int32))
  (_, best_idx), _ = jax.lax.scan(body, init, (w_CxKxD, valid_CxK, offsets_C))
  return best_idx


def _greedy_full_forward(cfg, params, prompts_BxP, total_len, vocab_chunk):
  """One model, recomputing the whole forward pass over the buffer each step (the plain way)."""
  b, p = prompts_BxP.shape
  buf_BxT = jnp.zeros((b, total_len), jnp.int32).at[:, :p].set(prompts_BxP.astype(jnp.int32))
  arch = module_of(cfg)
  w_VxD = arch.output_embedding(params)

  def body(t, buf_BxT):
    h_BxTxD = arch.hidden_states(cfg, params, buf_BxT)
    h_BxD = jax.lax.dynamic_index_in_dim(h_BxTxD, t - 1, axis=1, keepdims=False)
    next_B = chunked_argmax(h_BxD, w_VxD, vocab_chunk)
    return jax.lax.dynamic_update_index_in_dim(buf_BxT, next_B, t, axis=1)

  return jax.lax.fori_loop(p, total_len, body, buf_BxT)


def _dense(cfg, params, x):
  return nn.Dense(params["kernel"].shape[-1], dtype=cfg.dtype, param_dtype=cfg.param_dtype).apply(
      {"params": params}, x)


def _layer_norm(cfg, params, x):
  return nn.LayerNorm(epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.param_dtype).apply(
      {"params": params}, x)


def _greedy_kv_cache(cfg, params, prompts_BxP, total_len, vocab_chunk):
  """One model, one token a step with cached keys and values (the GPT-2 of model.py, unrolled).

  Step t feeds token t (the prompt's while t < P, then the model's own) and, from t = P - 1 on,
  projects the new hidden state onto the vocabulary to choose token t + 1. The Dense and
  LayerNorm layers are model.py's own Flax modules applied to its parameters; the attention is
  the same arithmetic as model.Block for one query row.
  """
  b, p = prompts_BxP.shape
  d, h, L = cfg.d_model, cfg.num_heads, cfg.layers
  k = d // h
  buf_BxT = jnp.zeros((b, total_len), jnp.int32).at[:, :p].set(prompts_BxP.astype(jnp.int32))
  cache = jnp.zeros((L, 2, b, total_len, h, k), cfg.dtype)
  w_VxD = gpt2.output_embedding(params)
  positions_T = jnp.arange(total_len)

  def body(t, carry):
    buf_BxT, cache = carry
    tok_B = jax.lax.dynamic_index_in_dim(buf_BxT, t, axis=1, keepdims=False)
    x_BxD = (jnp.take(params["wte"], tok_B, axis=0)
             + jax.lax.dynamic_index_in_dim(params["wpe"], t, axis=0, keepdims=False))
    for i in range(L):
      blk = params[f"h_{i}"]
      y = _layer_norm(cfg, blk["ln_1"], x_BxD)
      qkv_Bx3xHxK = _dense(cfg, blk["c_attn"], y).reshape(b, 3, h, k)
      kv_2xBxHxK = qkv_Bx3xHxK[:, 1:].transpose(1, 0, 2, 3)
      cache = jax.lax.dynamic_update_slice(cache, kv_2xBxHxK[None, :, :, None],
                                           (i, 0, 0, t, 0, 0))
      keys_BxTxHxK, values_BxTxHxK = cache[i, 0], cache[i, 1]
      scores_BxHxT = jnp.einsum("bhk,bthk->bht", qkv_Bx3xHxK[:, 0], keys_BxTxHxK,
                                preferred_element_type=jnp.float32) / math.sqrt(k)
      scores_BxHxT = jnp.where(positions_T <= t, scores_BxHxT, jnp.finfo(jnp.float32).min)
      probs_BxHxT = jax.nn.softmax(scores_BxHxT, axis=-1).astype(cfg.dtype)
      att_BxHxK = jnp.einsum("bht,bthk->bhk", probs_BxHxT, values_BxTxHxK)
      x_BxD = x_BxD + _dense(cfg, blk["c_proj"], att_BxHxK.reshape(b, d))
      y = _layer_norm(cfg, blk["ln_2"], x_BxD)
      y = nn.gelu(_dense(cfg, blk["c_fc"], y), approximate=True)
      x_BxD = x_BxD + _dense(cfg, blk["mlp_c_proj"], y)
    h_BxD = _layer_norm(cfg, params["ln_f"], x_BxD)
    # Inside the prompt the next token is given: skip the vocabulary projection there.
    buf_BxT = jax.lax.cond(
        t + 1 >= p,
        lambda buf: jax.lax.dynamic_update_index_in_dim(
            buf, chunked_argmax(h_BxD, w_VxD, vocab_chunk), t + 1, axis=1),
        lambda buf: buf, buf_BxT)
    return buf_BxT, cache

  buf_BxT, _ = jax.lax.fori_loop(0, total_len - 1, body, (buf_BxT, cache))
  return buf_BxT


_METHODS = {"kv_cache": _greedy_kv_cache, "full_forward": _greedy_full_forward}


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _greedy_stack(cfg, params_M, prompts, total_len, vocab_chunk, method):
  one = lambda params, prompts_BxP: _METHODS[method](
      cfg, module_of(cfg).compute_params(cfg, params), prompts_BxP, total_len, vocab_chunk)
  if prompts.ndim == 2:
    return jax.vmap(one, in_axes=(0, None))(params_M, prompts)
  return jax.vmap(one)(params_M, prompts)


def greedy_continue(cfg: gpt2.ModelConfig, params_M, prompts, total_len: int | None = None,
                    vocab_chunk: int = likelihood.DEFAULT_VOCAB_CHUNK, method: str = "kv_cache"):
  """Greedy decoding of every model of a stack from the given prompts.

  Args:
    cfg: the shape of the stack.
    params_M: stacked parameters (leading model axis M).
    prompts: int tokens, [M, B, P] (one set of prompts per model) or [B, P] (shared by all).
    total_len: length of the returned sequences, P < total_len <= cfg.seq_len (default S).
    vocab_chunk: vocabulary chunk of the output projection.
    method: "kv_cache" (one token a step, keys and values cached: about one forward pass in all)
      or "full_forward" (the model's own forward over the whole buffer at every step: about
      total_len - P forward passes; the plain version the cached one is tested against).

  Returns:
    int32 tokens [M, B, total_len]: the prompt followed by each model's greedy continuation.
  """
  total_len = cfg.seq_len if total_len is None else int(total_len)
  prompts = jnp.asarray(prompts)
  if prompts.ndim not in (2, 3):
    raise ValueError(f"prompts must be [M, B, P] or [B, P], got shape {prompts.shape}")
  p = prompts.shape[-1]
  if not 1 <= p < total_len <= cfg.seq_len:
    raise ValueError(f"need 1 <= prefix length ({p}) < total_len ({total_len}) <= "
                     f"seq_len ({cfg.seq_len})")
  if method not in _METHODS:
    raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
  if module_of(cfg) is not gpt2:
    method = "full_forward"  # the cached decoder is GPT-2's layers unrolled; others recompute
  return _greedy_stack(cfg, params_M, prompts, total_len, vocab_chunk, method)


def extraction_scores(generated, targets, prefix_len: int):
  """Per-sample scores of greedy continuations against the true continuations.

  Args:
    generated: [..., B, T] decoded tokens (e.g. greedy_continue's output).
    targets: the true sequences, [..., B, T] or broadcastable to it (a shared [B, T]).
    prefix_len: P; positions P..T-1 are scored.

  Returns:
    dict of numpy arrays of shape [..., B]: `exact` (bool: every continuation token matches, i.e.
    the sample is extracted) and `token_match` (float: fraction of continuation tokens that match,
    the memorization score of Chen et al.).
  """
  generated = np.asarray(generated)
  targets = np.asarray(targets)
  if not 0 <= prefix_len < generated.shape[-1]:
    raise ValueError(f"prefix_len must be in [0, {generated.shape[-1]}) for sequences of "
                     f"{generated.shape[-1]} tokens, got {prefix_len}")
  match = generated[..., prefix_len:] == targets[..., prefix_len:]
  return {"exact": match.all(-1), "token_match": match.mean(-1, dtype=np.float64)}


def extract(cfg: gpt2.ModelConfig, params_M, tokens, prefix_lengths: Sequence[int],
            batch_size: int = 256, vocab_chunk: int = likelihood.DEFAULT_VOCAB_CHUNK,
            progress=None):
  """Extraction of full sequences from their prefixes, for every prefix length, in batches.

  Args:
    tokens: true sequences, [M, B, T] (each model its own) or [B, T] (shared), T <= cfg.seq_len;
      the continuation is decoded up to T.
    prefix_lengths: the prefix lengths P to try (each 1 <= P < T).
    batch_size: sequences decoded per model per device call.
    progress: optional callback(number of sequences done) after each call.

  Returns:
    {P: {"exact": bool [M, B], "token_match": float [M, B]}} as numpy arrays.
  """
  tokens = np.asarray(tokens)
  shared = tokens.ndim == 2
  n, t = tokens.shape[-2], tokens.shape[-1]
  m = jax.tree.leaves(params_M)[0].shape[0]
  batch_size = max(1, min(batch_size, n))
  out = {}
  for p in prefix_lengths:
    exact = np.zeros((m, n), bool)
    token_match = np.zeros((m, n), np.float64)
    for start in range(0, n, batch_size):
      stop = min(start + batch_size, n)
      # Pad the last batch to the full batch size, so every call has one shape (one compile).
      idx = np.minimum(np.arange(start, start + batch_size), n - 1)
      batch = tokens[idx] if shared else tokens[:, idx]
      gen = greedy_continue(cfg, params_M, batch[..., :p], t, vocab_chunk)
      scores = extraction_scores(gen, batch, p)
      exact[:, start:stop] = scores["exact"][:, : stop - start]
      token_match[:, start:stop] = scores["token_match"][:, : stop - start]
      if progress is not None:
        progress(stop - start)
    out[int(p)] = {"exact": exact, "token_match": token_match}
  return out
