"""Memorization dynamics (Chen, Han, Miyao 2024, "A Multi-Perspective Analysis of Memorization in
Large Language Models"): scores, buckets, transitions over training, sample embeddings, decoding
dynamics around the point where a generation leaves the true continuation, and a small
Transformer that predicts a sample's memorization score from its context.

Conventions.

* A sample is a training sequence [S]. Its *context* is its first c tokens and its *continuation*
  the next k tokens (c + k <= S; positions count from the start of the sequence, as in training,
  so the learned position embeddings are the ones seen in training). The *memorization score* is
  the fraction of the k greedily decoded tokens equal to the true ones
  (`extraction.extraction_scores`' token_match).
* Score buckets are [0, 0.2), [0.2, 0.4), [0.4, 0.6), [0.6, 0.8), [0.8, 1.0] (the last closed):
  bucket b = min(floor(5 * score), 4). With k = 5 each decoded-token count has its own bucket.
* Decoding dynamics: when generating continuation token t (c <= t < c + k) the model's
  next-token distribution is the one after position t - 1 of the generated sequence, so its entropy
  is `likelihood.next_token_stats(...)['entropy'][:, t - 1]`; the n-gram frequency at t is the
  training-corpus count of the generated n-gram ending at t (`ngram.position_counts`). Steps are
  aligned on the first continuation position where the generation differs from the truth (offset
  0); samples that never leave it (score 1) have no such point and are counted, not aligned.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax.estimators import extraction
from memjax import likelihood
from memjax.model import gpt2
from memjax.model import module_of
from memjax.estimators import ngram as ngram_lib

NUM_BUCKETS = 5
BUCKET_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BUCKET_LABELS = tuple(f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(BUCKET_EDGES[:-1], BUCKET_EDGES[1:]))


# ---------------------------------------------------------------------------------------------
# Scores and buckets.


def check_sizes(seq_len: int, context: int, continuation: int):
  """ValueError, naming the sizes, unless 1 <= context, 1 <= continuation, context + continuation <= S."""
  if context < 1 or continuation < 1:
    raise ValueError(f"context ({context}) and continuation ({continuation}) must both be >= 1")
  if context + continuation > seq_len:
    raise ValueError(f"context ({context}) + continuation ({continuation}) = "
                     f"{context + continuation} is longer than the sequence (seq_len={seq_len})")


def score_buckets(scores) -> np.ndarray:
  """Bucket index 0..4 of each score in [0, 1] (see the module docstring); int array of its shape."""
  scores = np.asarray(scores, np.float64)
  if scores.size and (np.nanmin(scores) < 0 or np.nanmax(scores) > 1 or np.isnan(scores).any()):
    raise ValueError("scores must be in [0, 1] (no nan)")
  # The small epsilon keeps k/K fractions like 0.6 = 3/5 out of the bucket below by rounding.
  return np.minimum(np.floor(scores * NUM_BUCKETS + 1e-9), NUM_BUCKETS - 1).astype(np.int64)


def bucket_counts(buckets, num_buckets: int = NUM_BUCKETS) -> np.ndarray:
  return np.bincount(np.asarray(buckets).reshape(-1), minlength=num_buckets)[:num_buckets]


def greedy_generations(cfg, params_M, tokens, context: int, continuation: int,
                       batch_size: int = 256, vocab_chunk: int = likelihood.DEFAULT_VOCAB_CHUNK):
  """Greedy continuations of every sample's context: int32 [M, B, context + continuation].

  tokens: [M, B, S] (each model its own samples) or [B, S] (shared); decoded in batches.
  """
  tokens = np.asarray(tokens)
  check_sizes(tokens.shape[-1], context, continuation)
  total = context + continuation
  shared = tokens.ndim == 2
  n = tokens.shape[-2]
  m = jax.tree.leaves(params_M)[0].shape[0]
  out = np.zeros((m, n, total), np.int32)
  batch_size = max(1, min(batch_size, n))
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)  # one shape, one compile
    batch = tokens[idx] if shared else tokens[:, idx]
    gen = extraction.greedy_continue(cfg, params_M, batch[..., :context], total, vocab_chunk)
    out[:, start:stop] = np.asarray(gen)[:, : stop - start]
  return out


def memorization_scores(cfg, params_M, tokens, context: int, continuation: int,
                        batch_size: int = 256, vocab_chunk: int = likelihood.DEFAULT_VOCAB_CHUNK):
  """Memorization score of every sample for every model of the stack: float64 [M, B]."""
  tokens = np.asarray(tokens)
  gen = greedy_generations(cfg, params_M, tokens, context, continuation, batch_size, vocab_chunk)
  return extraction.extraction_scores(gen, tokens[..., : context + continuation],
                                      context)["token_match"]


# ---------------------------------------------------------------------------------------------
# Over training.


def transition_matrix(before, after, num_buckets: int = NUM_BUCKETS) -> np.ndarray:
  """T[i, j] = samples in bucket i at one checkpoint and bucket j at the next: int64 [K, K].

  Row i sums to the number of samples in bucket i before, column j to those in j after.
  """
  before = np.asarray(before).reshape(-1)
  after = np.asarray(after).reshape(-1)
  if before.shape != after.shape:
    raise ValueError(f"before/after: one bucket per sample each, got {before.shape} and "
                     f"{after.shape}")
  out = np.zeros((num_buckets, num_buckets), np.int64)
  np.add.at(out, (before, after), 1)
  return out


def transition_matrices(buckets_CxB, num_buckets: int = NUM_BUCKETS) -> np.ndarray:
  """[C - 1, K, K]: the transition matrix between each pair of consecutive checkpoints."""
  buckets_CxB = np.asarray(buckets_CxB)
  return np.stack([transition_matrix(a, b, num_buckets)
                   for a, b in zip(buckets_CxB[:-1], buckets_CxB[1:])]) if len(buckets_CxB) > 1 \
      else np.zeros((0, num_buckets, num_buckets), np.int64)


# ---------------------------------------------------------------------------------------------
# Embeddings.


@functools.partial(jax.jit, static_argnums=(0,))
def _mean_hidden(cfg, params, tokens_BxC):
  return module_of(cfg).hidden_states(cfg, params, tokens_BxC).astype(jnp.float32).mean(axis=1)


def sample_embeddings(cfg, params, tokens_BxS, context: int, batch_size: int = 512) -> np.ndarray:
  """Mean of one model's last hidden states over each sample's first `context` tokens: [B, d]."""
  tokens_BxS = np.asarray(tokens_BxS)
  if not 1 <= context <= tokens_BxS.shape[-1]:
    raise ValueError(f"context ({context}) must be in [1, seq_len={tokens_BxS.shape[-1]}]")
  n = tokens_BxS.shape[0]
  out = np.zeros((n, cfg.d_model), np.float32)
  batch_size = max(1, min(batch_size, n))
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    emb = _mean_hidden(cfg, params, jnp.asarray(tokens_BxS[idx, :context], jnp.int32))
    out[start:stop] = np.asarray(emb)[: stop - start]
  return out


def pca_2d(x_NxD) -> tuple[np.ndarray, np.ndarray]:
  """Projection on the first two principal components ([N, 2]) and their explained variance ratio."""
  x = np.asarray(x_NxD, np.float64)
  x = x - x.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  k = min(2, vt.shape[0])
  proj = np.zeros((x.shape[0], 2))
  proj[:, :k] = x @ vt[:k].T
  var = s**2
  ratio = np.zeros(2)
  if var.sum() > 0:
    ratio[:k] = var[:k] / var.sum()
  return proj, ratio


def bucket_centroids(x_NxD, buckets_N, num_buckets: int = NUM_BUCKETS):
  """(centroids [K, D] with nan rows for empty buckets, counts [K])."""
  x = np.asarray(x_NxD, np.float64)
  buckets_N = np.asarray(buckets_N)
  counts = bucket_counts(buckets_N, num_buckets)
  cent = np.full((num_buckets, x.shape[1]), np.nan)
  for b in range(num_buckets):
    if counts[b]:
      cent[b] = x[buckets_N == b].mean(axis=0)
  return cent, counts


def centroid_distances(x_NxD, buckets_N, num_buckets: int = NUM_BUCKETS) -> dict:
  """Euclidean distances between bucket centroids, raw and relative to the samples' spread.

  `relative` divides by the RMS distance of the samples to their overall mean, so models of
  different widths can be compared. Entries with an empty bucket are nan; `empty` lists them.
  """
  cent, counts = bucket_centroids(x_NxD, buckets_N, num_buckets)
  dist = np.sqrt(((cent[:, None] - cent[None]) ** 2).sum(-1))
  x = np.asarray(x_NxD, np.float64)
  spread = float(np.sqrt(((x - x.mean(0)) ** 2).sum(-1).mean())) if len(x) else math.nan
  rel = dist / spread if spread > 0 else np.full_like(dist, np.nan)
  return {"distances": dist, "relative": rel, "counts": counts, "spread": spread,
          "empty": [BUCKET_LABELS[b] for b in range(num_buckets) if counts[b] == 0]}


# ---------------------------------------------------------------------------------------------
# Decoding dynamics.


@functools.partial(jax.jit, static_argnums=(0,))
def _entropy(cfg, params, tokens_BxT):
  return likelihood.next_token_stats(cfg, params, tokens_BxT)["entropy"]


def divergence_points(generated_BxT, targets_BxT, context: int) -> np.ndarray:
  """Per sample: index (within the continuation, 0-based) of the first generated token that
  differs from the truth; -1 if the whole continuation matches."""
  gen = np.asarray(generated_BxT)[:, context:]
  tgt = np.asarray(targets_BxT)[:, context: context + gen.shape[1]]
  differs = gen != tgt
  return np.where(differs.any(1), differs.argmax(1), -1)


def step_dynamics(cfg, params, generated_BxT, context: int, index: ngram_lib.NgramIndex | None,
                  n: int, batch_size: int = 512) -> dict:
  """Per continuation step [B, K] (K = T - context): entropy (bits) of the next-token
  distribution that produced the token, and the corpus count of the generated n-gram ending at
  it (nan where fewer than n tokens precede-and-include it, or without an index)."""
  gen = np.asarray(generated_BxT)
  b, t = gen.shape
  if index is not None and n > index.max_n:
    raise ValueError(f"n={n} is larger than the counted order max_n={index.max_n}")
  ent = np.zeros((b, t), np.float32)
  batch_size = max(1, min(batch_size, b))
  for start in range(0, b, batch_size):
    stop = min(start + batch_size, b)
    idx = np.minimum(np.arange(start, start + batch_size), b - 1)
    ent[start:stop] = np.asarray(_entropy(cfg, params, jnp.asarray(gen[idx], jnp.int32)))[
        : stop - start]
  entropy_BxK = ent[:, context - 1: t - 1].astype(np.float64)
  if index is None:
    count_BxK = np.full(entropy_BxK.shape, np.nan)
  else:
    count_BxK = ngram_lib.position_counts(index, gen, n)[:, context:]
  return {"entropy": entropy_BxK, "count": count_BxK}


def align_on_divergence(values_BxK, divergence_B, window: int) -> np.ndarray:
  """[B, 2 * window + 1]: values at offsets -window..window from each sample's divergence step;
  nan outside the continuation and for samples that never diverge."""
  values_BxK = np.asarray(values_BxK, np.float64)
  b, k = values_BxK.shape
  offsets = np.arange(-window, window + 1)
  pos = np.asarray(divergence_B)[:, None] + offsets[None]
  ok = (pos >= 0) & (pos < k) & (np.asarray(divergence_B)[:, None] >= 0)
  out = np.full((b, offsets.size), np.nan)
  rows = np.broadcast_to(np.arange(b)[:, None], pos.shape)
  out[ok] = values_BxK[rows[ok], pos[ok]]
  return out


def boundary_effect(entropy_BxK, count_BxK, divergence_B, scores_B, window: int,
                    memorized_threshold: float) -> dict:
  """Mean entropy and mean log10(1 + n-gram count) at each offset from the divergence point, for
  memorized (score >= threshold) and unmemorized samples, with the samples behind each mean."""
  scores_B = np.asarray(scores_B)
  divergence_B = np.asarray(divergence_B)
  groups = {"memorized": scores_B >= memorized_threshold,
            "unmemorized": scores_B < memorized_threshold}
  out = {"offsets": list(range(-window, window + 1)), "memorized_threshold": memorized_threshold}
  ent = align_on_divergence(entropy_BxK, divergence_B, window)
  cnt = align_on_divergence(np.log10(1 + np.asarray(count_BxK, np.float64)), divergence_B, window)
  for name, mask in groups.items():
    aligned = mask & (divergence_B >= 0)
    e, c = ent[aligned], cnt[aligned]
    out[name] = {
        "samples": int(mask.sum()), "never_diverged": int((mask & (divergence_B < 0)).sum()),
        "aligned": int(aligned.sum()),
        "entropy": _nanmean_cols(e), "log10_count": _nanmean_cols(c),
        "n_per_offset": [int(v) for v in np.isfinite(e).sum(0)] if len(e) else [0] * ent.shape[1],
        # the boundary effect: mean after the divergence (offsets >= 0) minus before (< 0)
        "entropy_jump": _jump(e, window), "log10_count_jump": _jump(c, window)}
  return out


def _nanmean_cols(x):
  if not len(x):
    return [None] * x.shape[1]
  n = np.isfinite(x).sum(0)
  s = np.where(np.isfinite(x), x, 0).sum(0)
  return [float(a / b) if b else None for a, b in zip(s, n)]


def _jump(x, window):
  if not len(x):
    return None
  before, after = x[:, :window], x[:, window:]
  if not np.isfinite(before).any() or not np.isfinite(after).any():
    return None
  return float(np.nanmean(after) - np.nanmean(before))


# ---------------------------------------------------------------------------------------------
# Predicting memorization from the context.


class ScorePredictor(nn.Module):
  """memjax's GPT-2 body, mean-pooled over the context, and a linear head over score buckets."""
  cfg: gpt2.ModelConfig
  num_classes: int

  @nn.compact
  def __call__(self, tokens_BxC):
    h_BxCxD = gpt2.GPT2(self.cfg, name="body")(tokens_BxC).astype(jnp.float32)
    return nn.Dense(self.num_classes, name="head")(h_BxCxD.mean(axis=1))


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
  layers: int = 1
  d_model: int = 32
  num_heads: int = 2
  steps: int = 300
  batch_size: int = 64
  learning_rate: float = 3e-3
  seed: int = 0


def train_predictor(tokens_NxC, labels_N, vocab_size: int, num_classes: int = NUM_BUCKETS,
                    pcfg: PredictorConfig = PredictorConfig()):
  """Trains a ScorePredictor with Adam on (context, bucket) pairs; returns (module, params, losses)."""
  tokens_NxC = jnp.asarray(tokens_NxC, jnp.int32)
  labels_N = jnp.asarray(labels_N, jnp.int32)
  n, c = tokens_NxC.shape
  cfg = gpt2.ModelConfig(vocab_size, c, pcfg.layers, pcfg.d_model, pcfg.num_heads)
  module = ScorePredictor(cfg, num_classes)
  key = jax.random.key(pcfg.seed)
  params = module.init(key, tokens_NxC[:1])["params"]
  opt = optax.adam(pcfg.learning_rate)
  opt_state = opt.init(params)
  batch = min(pcfg.batch_size, n)

  def loss_fn(p, x, y):
    logits = module.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def run(params, opt_state, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.choice(k, n, (batch,), replace=n < batch)
      loss, g = jax.value_and_grad(loss_fn)(p, tokens_NxC[idx], labels_N[idx])
      upd, s = opt.update(g, s, p)
      return (optax.apply_updates(p, upd), s), loss
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               jax.random.split(key, pcfg.steps))
    return params, losses

  params, losses = run(params, opt_state, jax.random.fold_in(key, 1))
  return module, params, np.asarray(losses)


def predict(module, params, tokens_NxC, batch_size: int = 1024) -> np.ndarray:
  apply = jax.jit(lambda p, x: module.apply({"params": p}, x).argmax(-1))
  tokens_NxC = np.asarray(tokens_NxC)
  return np.concatenate([np.asarray(apply(params, jnp.asarray(tokens_NxC[i:i + batch_size],
                                                               jnp.int32)))
                         for i in range(0, len(tokens_NxC), batch_size)]) if len(tokens_NxC) \
      else np.zeros(0, np.int64)


def macro_f1(y_true, y_pred, num_classes: int = NUM_BUCKETS) -> float:
  """Mean F1 over the classes present in y_true or y_pred (an absent class has no F1)."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  f1s = []
  for c in range(num_classes):
    tp = np.sum((y_pred == c) & (y_true == c))
    fp = np.sum((y_pred == c) & (y_true != c))
    fn = np.sum((y_pred != c) & (y_true == c))
    if tp + fp + fn == 0:
      continue
    f1s.append(2 * tp / (2 * tp + fp + fn))
  return float(np.mean(f1s)) if f1s else math.nan


def classification_report(y_true, y_pred, train_labels, num_classes: int = NUM_BUCKETS) -> dict:
  """Accuracy and macro-F1 of the predictions and of the majority class of the training labels."""
  y_true = np.asarray(y_true)
  majority = int(np.bincount(np.asarray(train_labels), minlength=num_classes).argmax())
  base = np.full_like(y_true, majority)
  return {"accuracy": float(np.mean(y_true == np.asarray(y_pred))) if len(y_true) else math.nan,
          "macro_f1": macro_f1(y_true, y_pred, num_classes),
          "majority_class": BUCKET_LABELS[majority] if num_classes == NUM_BUCKETS else majority,
          "majority_accuracy": float(np.mean(y_true == base)) if len(y_true) else math.nan,
          "majority_macro_f1": macro_f1(y_true, base, num_classes),
          "test_samples": int(len(y_true)),
          "test_class_counts": [int(v) for v in np.bincount(y_true, minlength=num_classes)]}


def split_train_test(n: int, test_fraction: float, seed: int = 0):
  if n < 2:
    raise ValueError(f"a train/test split needs >= 2 samples, got {n}")
  perm = np.random.default_rng(seed).permutation(n)
  n_test = min(max(1, int(round(n * test_fraction))), n - 1)  # neither side empty
  return perm[n_test:], perm[:n_test]
