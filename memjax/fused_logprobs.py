"""The vocabulary projection, log-softmax and target pick as fused Pallas kernels (GPU).

`likelihood.py`'s XLA kernel walks the vocabulary in chunks, but on a GPU each chunk's fp32
[rows, chunk] logits still go to device memory and back between the matmul and the reductions.
For a small model at a big batch (L1 d32 at 2,048 sequences a step) that traffic, not the
matmuls, sets the speed. Here one program owns `BLOCK_ROWS` rows and walks the vocabulary in
blocks of `BLOCK_VOCAB` columns, keeping the logits in registers: the online max and sum of the
log-softmax, and the target's logit (an iota compare), never leave the chip. The backward pass
recomputes each block's softmax from the saved log-sum-exp, as the XLA kernel does:

    d logp_n / d h_n = sum_v g_n (onehot(t_n)_v - p_nv) w_v   (a kernel over row blocks)
    d logp / d w_v   = sum_n g_n (onehot(t_n)_v - p_nv) h_n   (a kernel over vocabulary blocks,
                                                               its rows split ROW_SPLITS ways
                                                               and the partial sums added after)

Same function as `likelihood._target_logprobs` (natural-log probabilities, fp32 accumulation,
the logit gradient cast to the operands' dtype before its matmuls); the two agree to float
rounding (tests/test_fused_logprobs.py). Off a GPU the kernels run in Pallas' interpret mode,
which is how the tests check them on a CPU; it is slow and only for tests.

Triton wants power-of-two block shapes of at least 16 for its matmuls, so `supported(d)` asks
for a power-of-two d_model >= 16. Which kernel trains and scores is `likelihood.KERNEL`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# Block sizes and warps: speed only, the results are the same (benchmarks/variants.py times them).
BLOCK_ROWS = 64
BLOCK_VOCAB = 128
ROW_SPLITS = 16
NUM_WARPS = 4


def supported(d_model: int) -> bool:
  """Whether the kernels take this hidden size (Triton: a power of two, at least 16)."""
  return d_model >= 16 and d_model & (d_model - 1) == 0


# Interpret the kernels (True), compile them with Triton (False), or None: interpret off a GPU.
INTERPRET = None


def _interpret() -> bool:
  return jax.default_backend() != "gpu" if INTERPRET is None else INTERPRET


def _compiler_params():
  if _interpret():
    return None
  from jax.experimental.pallas import triton as plgpu
  return plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=2)


def _block_logits(h_BxD, w_ref, j, vocab):
  """fp32 logits of the rows against vocabulary block j, padding columns at -inf; and the
  block's column ids."""
  w_VbxD = w_ref[pl.ds(j * BLOCK_VOCAB, BLOCK_VOCAB), :]
  logits = jnp.dot(h_BxD, w_VbxD.T, preferred_element_type=jnp.float32)
  cols = j * BLOCK_VOCAB + jnp.arange(BLOCK_VOCAB, dtype=jnp.int32)
  return jnp.where(cols[None, :] < vocab, logits, -jnp.inf), cols, w_VbxD


def _dlogits(logits, cols, t_B, lse_B, g_B):
  """g (onehot(t) - p) of one block, fp32 (p = 0 on padding columns, whose logits are -inf)."""
  p = jnp.exp(logits - lse_B[:, None])
  onehot = (cols[None, :] == t_B[:, None]).astype(jnp.float32)
  return g_B[:, None] * (onehot - p)


def _forward_kernel(h_ref, w_ref, t_ref, logp_ref, lse_ref, *, vocab):
  h_BxD, t_B = h_ref[...], t_ref[...]
  rows = h_BxD.shape[0]

  def body(j, carry):
    max_B, sum_B, target_B = carry
    logits, cols, _ = _block_logits(h_BxD, w_ref, j, vocab)
    new_max = jnp.maximum(max_B, logits.max(axis=1))
    sum_B = sum_B * jnp.exp(max_B - new_max) + jnp.exp(logits - new_max[:, None]).sum(axis=1)
    target_B = target_B + jnp.where(cols[None, :] == t_B[:, None], logits, 0.0).sum(axis=1)
    return new_max, sum_B, target_B

  init = (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32),
          jnp.zeros((rows,), jnp.float32))
  max_B, sum_B, target_B = jax.lax.fori_loop(0, w_ref.shape[0] // BLOCK_VOCAB, body, init)
  lse_B = max_B + jnp.log(sum_B)
  logp_ref[...] = target_B - lse_B
  lse_ref[...] = lse_B


def _grad_h_kernel(h_ref, w_ref, t_ref, lse_ref, g_ref, dh_ref, *, vocab):
  h_BxD, t_B, lse_B, g_B = h_ref[...], t_ref[...], lse_ref[...], g_ref[...]

  def body(j, dh_BxD):
    logits, cols, w_VbxD = _block_logits(h_BxD, w_ref, j, vocab)
    dl = _dlogits(logits, cols, t_B, lse_B, g_B).astype(h_BxD.dtype)
    return dh_BxD + jnp.dot(dl, w_VbxD, preferred_element_type=jnp.float32)

  dh_BxD = jax.lax.fori_loop(0, w_ref.shape[0] // BLOCK_VOCAB, body,
                             jnp.zeros(h_BxD.shape, jnp.float32))
  dh_ref[...] = dh_BxD.astype(dh_ref.dtype)


def _grad_w_kernel(h_ref, w_ref, t_ref, lse_ref, g_ref, dw_ref, *, vocab, rows_per_split):
  j, split = pl.program_id(0), pl.program_id(1)
  w_VbxD = w_ref[...]
  cols = j * BLOCK_VOCAB + jnp.arange(BLOCK_VOCAB, dtype=jnp.int32)

  def body(i, dw_VbxD):
    rows = pl.ds(split * rows_per_split + i * BLOCK_ROWS, BLOCK_ROWS)
    h_BxD = h_ref[rows, :]
    logits = jnp.dot(h_BxD, w_VbxD.T, preferred_element_type=jnp.float32)
    logits = jnp.where(cols[None, :] < vocab, logits, -jnp.inf)
    dl = _dlogits(logits, cols, t_ref[rows], lse_ref[rows], g_ref[rows]).astype(h_BxD.dtype)
    return dw_VbxD + jnp.dot(dl.T, h_BxD, preferred_element_type=jnp.float32)

  dw_ref[...] = jax.lax.fori_loop(0, rows_per_split // BLOCK_ROWS, body,
                                  jnp.zeros(w_VbxD.shape, jnp.float32))


def _layout(n, v):
  """(row splits of the w-gradient kernel, padded rows, padded vocabulary)."""
  row_blocks = pl.cdiv(n, BLOCK_ROWS)
  splits = max(1, min(ROW_SPLITS, row_blocks))
  n_pad = pl.cdiv(row_blocks, splits) * splits * BLOCK_ROWS
  return splits, n_pad, pl.cdiv(v, BLOCK_VOCAB) * BLOCK_VOCAB


def _pad_rows(x, n_pad):
  return jnp.pad(x, [(0, n_pad - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def _forward(h_NxD, w_VxD, targets_N):
  n, d = h_NxD.shape
  v = w_VxD.shape[0]
  _, n_pad, v_pad = _layout(n, v)
  h_pad, t_pad = _pad_rows(h_NxD, n_pad), _pad_rows(targets_N.astype(jnp.int32), n_pad)
  w_pad = _pad_rows(w_VxD, v_pad)
  rows = pl.BlockSpec((BLOCK_ROWS,), lambda i: (i,))
  logp, lse = pl.pallas_call(
      functools.partial(_forward_kernel, vocab=v),
      grid=(n_pad // BLOCK_ROWS,),
      in_specs=[pl.BlockSpec((BLOCK_ROWS, d), lambda i: (i, 0)),
                pl.BlockSpec((v_pad, d), lambda i: (0, 0)), rows],
      out_specs=[rows, rows],
      out_shape=[jax.ShapeDtypeStruct((n_pad,), jnp.float32)] * 2,
      compiler_params=_compiler_params(), interpret=_interpret(), name="logprobs_forward",
  )(h_pad, w_pad, t_pad)
  return logp[:n], (h_pad, w_pad, t_pad, lse)


def _backward(v, residuals, g_N):
  h_pad, w_pad, t_pad, lse = residuals
  n_pad, d = h_pad.shape
  v_pad = w_pad.shape[0]
  n = g_N.shape[0]
  splits = _layout(n, v)[0]
  g_pad = _pad_rows(g_N.astype(jnp.float32), n_pad)  # padding rows get g = 0: no gradient
  rows = pl.BlockSpec((BLOCK_ROWS,), lambda i: (i,))
  dh = pl.pallas_call(
      functools.partial(_grad_h_kernel, vocab=v),
      grid=(n_pad // BLOCK_ROWS,),
      in_specs=[pl.BlockSpec((BLOCK_ROWS, d), lambda i: (i, 0)),
                pl.BlockSpec((v_pad, d), lambda i: (0, 0)), rows, rows, rows],
      out_specs=pl.BlockSpec((BLOCK_ROWS, d), lambda i: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((n_pad, d), h_pad.dtype),
      compiler_params=_compiler_params(), interpret=_interpret(), name="logprobs_grad_h",
  )(h_pad, w_pad, t_pad, lse, g_pad)
  all_rows = pl.BlockSpec((n_pad,), lambda j, s: (0,))
  dw_parts = pl.pallas_call(
      functools.partial(_grad_w_kernel, vocab=v, rows_per_split=n_pad // splits),
      grid=(v_pad // BLOCK_VOCAB, splits),
      in_specs=[pl.BlockSpec((n_pad, d), lambda j, s: (0, 0)),
                pl.BlockSpec((BLOCK_VOCAB, d), lambda j, s: (j, 0)),
                all_rows, all_rows, all_rows],
      out_specs=pl.BlockSpec((None, BLOCK_VOCAB, d), lambda j, s: (s, j, 0)),
      out_shape=jax.ShapeDtypeStruct((splits, v_pad, d), jnp.float32),
      compiler_params=_compiler_params(), interpret=_interpret(), name="logprobs_grad_w",
  )(h_pad, w_pad, t_pad, lse, g_pad)
  return dh[:n], dw_parts.sum(axis=0)[:v].astype(w_pad.dtype)


def target_logprobs(h_NxD, w_VxD, targets_N):
  """Natural-log probability of each target under softmax(h @ w.T), fp32: [N]."""
  return _target_logprobs(h_NxD, w_VxD, targets_N, w_VxD.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _target_logprobs(h_NxD, w_VxD, targets_N, vocab):
  del vocab  # the same as w_VxD.shape[0]; the backward pass needs it as a static number
  return _forward(h_NxD, w_VxD, targets_N)[0]


def _target_logprobs_fwd(h_NxD, w_VxD, targets_N, vocab):
  del vocab
  return _forward(h_NxD, w_VxD, targets_N)


def _target_logprobs_bwd(vocab, residuals, g_N):
  dh, dw = _backward(vocab, residuals, g_N)
  return dh, dw, None


_target_logprobs.defvjp(_target_logprobs_fwd, _target_logprobs_bwd)
