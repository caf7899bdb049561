"""The one likelihood kernel: per-token log-probabilities of a stack of models, in fp32.

The vocabulary projection (hidden @ wte.T) and the log-softmax are fused and walked over
vocabulary chunks with a running max, so [B, S, V] fp32 logits are never materialized (at
V=50257 they would dwarf the model); when one chunk covers the vocabulary there is no loop at
all. The target's logit is h . wte[target] (a gather of N rows). Training uses the same kernel
with a custom backward pass that recomputes each chunk's softmax instead of storing it and forms
the logit gradient g (onehot - p) in that same pass, so it neither gathers nor scatter-adds
rows of the embedding.

Sequence convention: there is no BOS token. Position 0 of every sequence has no context and costs
log2 V under every model (the uniform reference included), so `logp[..., 0] = -log2 V`; position
t >= 1 is predicted from the hidden state at t - 1.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from memjax import fused_logprobs
from memjax.model import gpt2
from memjax.model import module_of

LN2 = math.log(2.0)
DEFAULT_VOCAB_CHUNK = 4096
# The kernel also narrows a chunk so that one model's fp32 [rows, chunk] logits hold at most
# `logits_block_elements()` elements, in multiples of MIN_CHUNK columns and never fewer. On a GPU
# the block is 2**24 elements (64 MiB): a stack of M models keeps M such blocks in flight, so
# large batches need narrower chunks to fit in memory. On a CPU it is 2**16 (256 KiB), which keeps
# a chunk in cache: measured 1.2x faster training at V=1024-2048 and 1.2-1.8x faster scoring at
# V=2048-50257 than one chunk (benchmarks/README.md). Chunking changes only memory and speed, not
# the results (up to float rounding). Set LOGITS_BLOCK_ELEMENTS to override (read at trace time).
LOGITS_BLOCK_ELEMENTS = None
MIN_CHUNK = 256


def logits_block_elements() -> int:
  if LOGITS_BLOCK_ELEMENTS:
    return LOGITS_BLOCK_ELEMENTS
  return 2**16 if jax.default_backend() == "cpu" else 2**24


def effective_chunk(rows, vocab_size, vocab_chunk):
  """The vocabulary chunk used for `rows` rows: vocab_chunk, narrowed to fit the logits block."""
  fit = max(MIN_CHUNK, logits_block_elements() // max(rows, 1) // MIN_CHUNK * MIN_CHUNK)
  k = min(vocab_chunk, fit)
  return vocab_size if k >= vocab_size else k


def _vocab_chunks(w_VxD, chunk):
  """[V, D] -> ([C, K, D], valid [C, K]) with V padded up to C*K."""
  v, d = w_VxD.shape
  k = min(chunk, v)
  c = -(-v // k)
  w_CKxD = jnp.pad(w_VxD, ((0, c * k - v), (0, 0)))
  valid_CxK = (jnp.arange(c * k) < v).reshape(c, k)
  return w_CKxD.reshape(c, k, d), valid_CxK


def _chunk_logits(h_NxD, w_KxD, valid_K):
  logits_NxK = jnp.einsum("nd,kd->nk", h_NxD, w_KxD, preferred_element_type=jnp.float32)
  return logits_NxK if valid_K is None else jnp.where(valid_K, logits_NxK, -jnp.inf)


def _is_target(targets_N, offset, k):
  """[N, K] bool: is vocabulary entry offset + j the target of row n (an iota compare, fused)."""
  return targets_N[:, None] == offset + jnp.arange(k, dtype=targets_N.dtype)[None, :]


def _logsumexp(h_NxD, w_VxD, chunk):
  """logsumexp of h @ w.T per row in fp32, walking vocabulary chunks (no scan for one chunk)."""
  v = w_VxD.shape[0]
  if chunk >= v:
    return jax.nn.logsumexp(_chunk_logits(h_NxD, w_VxD, None), axis=-1)
  w_CxKxD, valid_CxK = _vocab_chunks(w_VxD, chunk)

  def body(carry, xs):
    max_N, sum_N = carry
    logits_NxK = _chunk_logits(h_NxD, *xs)
    new_max_N = jnp.maximum(max_N, logits_NxK.max(-1))
    sum_N = sum_N * jnp.exp(max_N - new_max_N) + jnp.exp(logits_NxK - new_max_N[:, None]).sum(-1)
    return (new_max_N, sum_N), None

  n = h_NxD.shape[0]
  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32))
  (max_N, sum_N), _ = jax.lax.scan(body, init, (w_CxKxD, valid_CxK))
  return max_N + jnp.log(sum_N)


def _target_logits(h_NxD, w_VxD, targets_N):
  """h_n . w[t_n] in fp32: a gather of N rows, far cheaper than a pass over [N, V] logits."""
  return jnp.einsum("nd,nd->n", h_NxD, jnp.take(w_VxD, targets_N, axis=0),
                    preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _target_logprobs(h_NxD, w_VxD, targets_N, chunk):
  return _target_logits(h_NxD, w_VxD, targets_N) - _logsumexp(h_NxD, w_VxD, chunk)


def _target_logprobs_fwd(h_NxD, w_VxD, targets_N, chunk):
  lse_N = _logsumexp(h_NxD, w_VxD, chunk)
  return _target_logits(h_NxD, w_VxD, targets_N) - lse_N, (h_NxD, w_VxD, targets_N, lse_N)


def _target_logprobs_bwd(chunk, residuals, g_N):
  # d logp_n / d logits_nv = onehot(t_n)_v - p_nv: recompute p per chunk (never stored), form
  # g (onehot - p) in the same elementwise pass (an iota compare), then
  # grad_h = (g (onehot - p)) @ w and grad_w = (g (onehot - p)).T @ h, one matmul each: no
  # gather of w[t] and no scatter-add into grad_w.
  h_NxD, w_VxD, targets_N, lse_N = residuals
  v, d = w_VxD.shape
  g_N = g_N.astype(jnp.float32)

  def chunk_grads(w_KxD, valid_K, offset):
    k = w_KxD.shape[0]
    probs_NxK = jnp.exp(_chunk_logits(h_NxD, w_KxD, valid_K) - lse_N[:, None])
    dlogits_NxK = g_N[:, None] * (_is_target(targets_N, offset, k).astype(jnp.float32) - probs_NxK)
    dlogits_NxK = dlogits_NxK.astype(h_NxD.dtype)
    grad_h_NxD = jnp.einsum("nk,kd->nd", dlogits_NxK, w_KxD, preferred_element_type=jnp.float32)
    grad_w_KxD = gpt2.contract_rows(dlogits_NxK, h_NxD, preferred_element_type=jnp.float32)
    return grad_h_NxD, grad_w_KxD

  if chunk >= v:
    grad_h_NxD, grad_w_VxD = chunk_grads(w_VxD, None, 0)
  else:
    w_CxKxD, valid_CxK = _vocab_chunks(w_VxD, chunk)
    c, k, _ = w_CxKxD.shape

    def body(grad_h_NxD, xs):
      grad_h_chunk, grad_w_KxD = chunk_grads(*xs)
      return grad_h_NxD + grad_h_chunk, grad_w_KxD

    offsets_C = jnp.arange(c, dtype=targets_N.dtype) * k
    grad_h_NxD, grad_w_CxKxD = jax.lax.scan(
        body, jnp.zeros(h_NxD.shape, jnp.float32), (w_CxKxD, valid_CxK, offsets_C))
    grad_w_VxD = grad_w_CxKxD.reshape(-1, d)[:v]
  return grad_h_NxD.astype(h_NxD.dtype), grad_w_VxD.astype(w_VxD.dtype), None


_target_logprobs.defvjp(_target_logprobs_fwd, _target_logprobs_bwd)


# Which kernel computes target log-probabilities in training and scoring: "xla" (the chunked
# kernel above) or "pallas" (`fused_logprobs`: the logits stay on chip; a GPU kernel, d_model a
# power of two >= 16, interpreted and slow elsewhere). Both give the same log-probabilities up to
# float rounding; the choice is speed only. Read at trace time.
KERNEL = "xla"


def target_logprobs(h_NxD, w_VxD, targets_N, chunk=DEFAULT_VOCAB_CHUNK):
  """Natural-log probability of each target token under softmax(h @ w.T), in fp32.

  With KERNEL "xla", walks the vocabulary in chunks of `effective_chunk(N, V, chunk)` columns
  (one chunk, with no scan, when that covers V); the backward pass recomputes each chunk's
  softmax. With KERNEL "pallas", `fused_logprobs.target_logprobs` (`chunk` unused).
  """
  if KERNEL == "pallas":
    if not fused_logprobs.supported(h_NxD.shape[1]):
      raise ValueError(f"likelihood.KERNEL='pallas' needs a d_model that is a power of two >= 16, "
                       f"got {h_NxD.shape[1]}")
    return fused_logprobs.target_logprobs(h_NxD, w_VxD, targets_N)
  if KERNEL != "xla":
    raise ValueError(f"likelihood.KERNEL must be xla or pallas, got {KERNEL!r}")
  chunk = effective_chunk(h_NxD.shape[0], w_VxD.shape[0], chunk)
  return _target_logprobs(h_NxD, w_VxD, targets_N, chunk)


def token_logprobs(cfg: gpt2.ModelConfig, params, tokens_BxS, vocab_chunk=DEFAULT_VOCAB_CHUNK):
  """log2 p of every token of every sequence under one model: [B, S] fp32 (position 0: -log2 V)."""
  b, s = tokens_BxS.shape
  arch = module_of(cfg)
  params = arch.compute_params(cfg, params)
  h_BxSxD = arch.hidden_states(cfg, params, tokens_BxS)
  h_NxD = h_BxSxD[:, :-1].reshape(b * (s - 1), h_BxSxD.shape[-1])  # S = 1: zero rows
  targets_N = tokens_BxS[:, 1:].reshape(-1)
  logp_N = target_logprobs(h_NxD, arch.output_embedding(params), targets_N, vocab_chunk)
  first_Bx1 = jnp.full((b, 1), -math.log2(cfg.vocab_size), jnp.float32)
  return jnp.concatenate([first_Bx1, logp_N.reshape(b, s - 1) / LN2], axis=1)


def mean_loss(cfg, params, tokens_BxS, vocab_chunk=DEFAULT_VOCAB_CHUNK):
  """Training loss: mean cross-entropy in nats over the predicted positions 1..S-1."""
  logp_BxS = token_logprobs(cfg, params, tokens_BxS, vocab_chunk)
  return -jnp.mean(logp_BxS[:, 1:]) * LN2


@functools.partial(jax.jit, static_argnums=(0, 3))
def stack_token_logprobs(cfg, params_M, tokens_MxBxS, vocab_chunk=DEFAULT_VOCAB_CHUNK):
  """log2 p [M, B, S] for a stack of models, each scoring its own [B, S] tokens."""
  return jax.vmap(lambda p, t: token_logprobs(cfg, p, t, vocab_chunk))(params_M, tokens_MxBxS)


@functools.partial(jax.jit, static_argnums=(0, 3))
def shared_token_logprobs(cfg, params_M, tokens_BxS, vocab_chunk=DEFAULT_VOCAB_CHUNK):
  """log2 p [M, B, S]: every model of the stack scores the same [B, S] tokens."""
  return jax.vmap(lambda p: token_logprobs(cfg, p, tokens_BxS, vocab_chunk))(params_M)


def _next_token_moments(h_NxD, w_VxD, chunk):
  """Per row: logsumexp, E_p[log p], Var_p[log p] and argmax of softmax(h @ w.T), chunked.

  Running sums are kept relative to the running max m (u = logit - m) and re-centred when m moves,
  so nothing overflows: S0 = sum e^u, S1 = sum e^u u, S2 = sum e^u u^2.
  """
  w_CxKxD, valid_CxK = _vocab_chunks(w_VxD, chunk)
  k = w_CxKxD.shape[1]
  n = h_NxD.shape[0]

  def body(carry, xs):
    m, s0, s1, s2, best_val, best_idx = carry
    w_KxD, valid_K, offset = xs
    logits_NxK = _chunk_logits(h_NxD, w_KxD, valid_K)
    new_m = jnp.maximum(m, logits_NxK.max(-1))
    delta = new_m - m
    scale = jnp.exp(-delta)
    s2 = scale * (s2 - 2 * delta * s1 + delta**2 * s0)
    s1 = scale * (s1 - delta * s0)
    s0 = scale * s0
    u_NxK = logits_NxK - new_m[:, None]
    e_NxK = jnp.exp(u_NxK)
    u_NxK = jnp.where(valid_K, u_NxK, 0.0)
    s0, s1, s2 = s0 + e_NxK.sum(-1), s1 + (e_NxK * u_NxK).sum(-1), s2 + (e_NxK * u_NxK**2).sum(-1)
    chunk_best = logits_NxK.argmax(-1)
    chunk_val = jnp.take_along_axis(logits_NxK, chunk_best[:, None], -1)[:, 0]
    better = chunk_val > best_val
    best_idx = jnp.where(better, chunk_best + offset, best_idx)
    best_val = jnp.where(better, chunk_val, best_val)
    return (new_m, s0, s1, s2, best_val, best_idx), None

  zeros = jnp.zeros((n,), jnp.float32)
  # The first chunk is never all padding, so starting m at -inf is safe once delta is finite:
  # seed m with the first chunk's max to keep delta finite from the start.
  first_max = _chunk_logits(h_NxD, w_CxKxD[0], valid_CxK[0]).max(-1)
  init = (first_max, zeros, zeros, zeros, jnp.full((n,), -jnp.inf), jnp.zeros((n,), jnp.int32))
  offsets = jnp.arange(w_CxKxD.shape[0], dtype=jnp.int32) * k
  (m, s0, s1, s2, _, best_idx), _ = jax.lax.scan(body, init, (w_CxKxD, valid_CxK, offsets))
  mean_u = s1 / s0
  lse = m + jnp.log(s0)
  return lse, mean_u - jnp.log(s0), s2 / s0 - mean_u**2, best_idx


def next_token_stats(cfg, params, tokens_BxS, vocab_chunk=DEFAULT_VOCAB_CHUNK):
  """What one model says at every position t about token t+1, in bits.

  Returns a dict of [B, S] arrays: `logp` (log2 p of the actual tokens, aligned as in
  `token_logprobs`), `entropy` and `var_logp` (entropy and variance of log2 p of the next-token
  distribution after position t) and `argmax` (the greedy next token after position t).
  """
  b, s = tokens_BxS.shape
  arch = module_of(cfg)
  params = arch.compute_params(cfg, params)
  h_BxSxD = arch.hidden_states(cfg, params, tokens_BxS)
  h_NxD = h_BxSxD.reshape(b * s, -1)
  w_VxD = arch.output_embedding(params)
  chunk = effective_chunk(h_NxD.shape[0], w_VxD.shape[0], vocab_chunk)  # as target_logprobs
  lse, mean_logp, var_logp, argmax = _next_token_moments(h_NxD, w_VxD, chunk)
  next_N = jnp.concatenate([tokens_BxS[:, 1:], tokens_BxS[:, :1]], axis=1).reshape(-1)
  logp_next_BxS = (_target_logits(h_NxD, w_VxD, next_N) - lse).reshape(b, s) / LN2
  first_Bx1 = jnp.full((b, 1), -math.log2(cfg.vocab_size), jnp.float32)
  return {
      "logp": jnp.concatenate([first_Bx1, logp_next_BxS[:, :-1]], axis=1),
      "entropy": (-mean_logp / LN2).reshape(b, s),
      "var_logp": (var_logp / LN2**2).reshape(b, s),
      "argmax": argmax.reshape(b, s),
  }
