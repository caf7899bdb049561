"""Compression-based memorization, capacity and bits per parameter (Morris et al. 2025).

Unintended memorization of a sample x by a model, in bits, against a reference model:

    mem(x) = max(0, log2 p(x | model) - log2 p(x | reference))

and of a dataset, the sum over its samples (a lower bound on what the model stores about it). On
synthetic data the reference is the true distribution: uniform, log2 p(x) = -S log2 V. The first
token of a sequence has no context and costs log2 V under both, so at most (S - 1) log2 V bits of
a sequence can be memorized, and log2 n fewer when n training sequences share its first token (no
model can tell them apart at position 1). Capacity of a model shape = the largest seed-mean
memorization over the dataset sizes tried; alpha = bits per parameter.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from memjax import likelihood
from memjax.data import synthetic


def sample_memorization(seq_logp_model, seq_logp_reference):
  """Per-sample memorization in bits, clipped at 0 (works on numpy or jax arrays)."""
  return jnp.maximum(0.0, seq_logp_model - seq_logp_reference)


def uniform_sequence_logp(seq_len, vocab_size):
  """log2 p(x) of any sequence under the uniform reference."""
  return -seq_len * math.log2(vocab_size)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _synthetic_chunk_sums(cfg, params_M, data_key_M, size_M, start, batch, split, vocab_chunk):
  """Sums over samples [start, start+batch) of each model's set (masked beyond its size).

  Returns (mem_clipped_M, mem_unclipped_M, nll_bits_M) where nll counts positions 1..S-1.
  """
  key_fn = synthetic.train_key if split == "train" else synthetic.test_key
  indices_B = start + jnp.arange(batch, dtype=jnp.int32)

  def one_model(params, data_key, size):
    tokens_BxS = synthetic.sequences(key_fn(data_key), indices_B, cfg.seq_len, cfg.vocab_size)
    logp_BxS = likelihood.token_logprobs(cfg, params, tokens_BxS, vocab_chunk)
    seq_logp_B = logp_BxS.sum(-1)
    ref = uniform_sequence_logp(cfg.seq_len, cfg.vocab_size)
    in_set_B = indices_B < size
    mem_B = jnp.where(in_set_B, sample_memorization(seq_logp_B, ref), 0.0)
    raw_B = jnp.where(in_set_B, seq_logp_B - ref, 0.0)
    nll_B = jnp.where(in_set_B, -logp_BxS[:, 1:].sum(-1), 0.0)
    return mem_B.sum(), raw_B.sum(), nll_B.sum()

  return jax.vmap(one_model)(params_M, data_key_M, size_M)


def evaluate_synthetic(cfg, state, eval_batch, test_size, vocab_chunk, progress=None):
  """Memorization of each model's whole training set and loss on held-out samples.

  Returns a dict of numpy arrays [M]: mem_bits, mem_bits_unclipped, train_loss, test_loss (losses
  in nats per predicted token, the same unit as the training loss).
  """
  size_M = np.asarray(state.dataset_size_M)
  sums = [jnp.zeros(len(size_M))] * 3
  for start in range(0, int(size_M.max()), eval_batch):
    chunk = _synthetic_chunk_sums(cfg, state.params, state.data_key_M, state.dataset_size_M,
                                  start, eval_batch, "train", vocab_chunk)
    sums = [a + b for a, b in zip(sums, chunk)]
    if progress is not None:
      progress(min(eval_batch, int(size_M.max()) - start))
  mem, mem_raw, nll_bits = (np.asarray(s, np.float64) for s in sums)
  predicted = cfg.seq_len - 1
  test_nll = np.zeros(len(size_M))
  test_size_M = jnp.full_like(state.dataset_size_M, test_size)
  for start in range(0, test_size, eval_batch):
    test_nll += np.asarray(_synthetic_chunk_sums(cfg, state.params, state.data_key_M, test_size_M,
                                                 start, eval_batch, "test", vocab_chunk)[2])
  return {
      "mem_bits": mem,
      "mem_bits_unclipped": mem_raw,
      "train_loss": nll_bits * math.log(2) / (size_M * predicted),
      "test_loss": test_nll * math.log(2) / (test_size * predicted),
  }


def memorization_bits(cfg, state, eval_batch, vocab_chunk):
  """Each model's memorization of its whole training set, in bits (numpy [M]): the mem_bits of
  evaluate_synthetic without the held-out loss, for the convergence record during training."""
  size_M = np.asarray(state.dataset_size_M)
  mem = jnp.zeros(len(size_M))
  for start in range(0, int(size_M.max()), eval_batch):
    mem += _synthetic_chunk_sums(cfg, state.params, state.data_key_M, state.dataset_size_M,
                                 start, eval_batch, "train", vocab_chunk)[0]
  return np.asarray(mem, np.float64)


# ---------------------------------------------------------------------------------------------
# Capacity and alpha from result rows.

SHAPE_FIELDS = ("layers", "d_model", "heads", "vocab_size", "seq_len", "precision")


def shape_key(row):
  return tuple(row[f] for f in SHAPE_FIELDS)


def capacity_table(rows: Iterable[dict]):
  """Per model shape and precision: capacity = max over (N, learning rate) of the seed-mean
  memorization.

  Rows whose status is not "ok" (diverged models) or whose mem_bits is not finite are left out,
  and so is every (N, learning rate) point that fewer seeds completed than the most any point
  did: a mean over the seeds that survived would favour a setting where most diverged.
  Returns a list of dicts sorted by parameter count, each with n_params, capacity_bits,
  capacity_std (spread over seeds of each seed's own max), bits_per_param, best_dataset_size,
  best_learning_rate, num_seeds, seeds_at_best, points_left_out (the (N, learning rate) points
  with fewer seeds), best_at_largest_n (the best N is the largest N tried, so the capacity is only
  a lower bound) and the curve over N (at each N, the best learning rate's seed-mean, over the
  same points).
  """
  rows = list(rows)
  by_shape = collections.defaultdict(list)
  # Every (N, learning rate) point tried, usable or not: a point all of whose seeds diverged is
  # left out as much as one that only some completed.
  points_tried = collections.defaultdict(set)
  for row in rows:
    points_tried[shape_key(row)].add((row["dataset_size"], row.get("learning_rate")))
    if _usable(row):
      by_shape[shape_key(row)].append(row)
  table = []
  for key, shape_rows in by_shape.items():
    # Learning rates are settings to choose among, like N, not seeds to average over.
    by_n_lr = collections.defaultdict(list)
    for r in shape_rows:
      by_n_lr[r["dataset_size"], r.get("learning_rate")].append(r["mem_bits"])
    most_seeds = max(len(v) for v in by_n_lr.values())
    by_seed = collections.defaultdict(list)  # over the points kept, as the capacity is
    for r in shape_rows:
      if len(by_n_lr[r["dataset_size"], r.get("learning_rate")]) == most_seeds:
        by_seed[r["seed"]].append(r["mem_bits"])
    # Sorted so that a tie goes to the smallest N (then learning rate).
    mean_by_n_lr = {k: float(np.mean(by_n_lr[k]))
                    for k in sorted(by_n_lr, key=lambda k: (k[0], -1.0 if k[1] is None else k[1]))
                    if len(by_n_lr[k]) == most_seeds}
    best_n, best_lr = max(mean_by_n_lr, key=mean_by_n_lr.get)
    capacity = mean_by_n_lr[best_n, best_lr]
    curve = {}
    for (n, _), m in mean_by_n_lr.items():
      curve[n] = max(curve.get(n, -math.inf), m)
    per_seed = [max(v) for v in by_seed.values()]
    n_params = shape_rows[0]["n_params"]
    table.append({
        **dict(zip(SHAPE_FIELDS, key)),
        "n_params": n_params,
        "capacity_bits": capacity,
        "capacity_std": float(np.std(per_seed)),
        "bits_per_param": capacity / n_params,
        "bits_per_param_std": float(np.std(per_seed)) / n_params,
        "best_dataset_size": best_n,
        "best_learning_rate": best_lr,
        "num_seeds": len({r["seed"] for r in shape_rows}),
        "seeds_at_best": most_seeds,
        "points_left_out": len(points_tried[key]) - len(mean_by_n_lr),
        "best_at_largest_n": best_n == max(n for n, _ in points_tried[key]),
        "mem_bits_by_dataset_size": {str(n): m for n, m in curve.items()},
    })
  return sorted(table, key=lambda t: (t["precision"], t["n_params"]))


def _usable(row) -> bool:
  """A row the capacity can use: its model did not diverge and its memorization is a number."""
  return row.get("status", "ok") == "ok" and math.isfinite(row["mem_bits"])


def left_out_shapes(rows: Iterable[dict]) -> list[dict]:
  """The shapes with no row capacity_table can use (every model diverged or non-finite)."""
  models, usable = collections.Counter(), collections.Counter()
  for row in rows:
    models[shape_key(row)] += 1
    usable[shape_key(row)] += _usable(row)
  return [{**dict(zip(SHAPE_FIELDS, key)), "models": n} for key, n in sorted(models.items())
          if not usable[key]]


def fit_alpha(n_params, capacity_bits):
  """Bits per parameter: least-squares slope through the origin, and the mean per-model ratio."""
  p = np.asarray(n_params, np.float64)
  c = np.asarray(capacity_bits, np.float64)
  if p.size == 0:
    return {"alpha_fit": float("nan"), "alpha_mean": float("nan"), "alpha_std": float("nan")}
  ratios = c / p
  return {
      "alpha_fit": float((p * c).sum() / (p * p).sum()),
      "alpha_mean": float(ratios.mean()),
      "alpha_std": float(ratios.std()),
  }


def summarize(rows):
  """summary.json content: alpha over all shapes, alpha per precision, and the capacity table."""
  table = capacity_table(rows)
  summary = fit_alpha([t["n_params"] for t in table], [t["capacity_bits"] for t in table])
  summary["by_precision"] = {
      prec: fit_alpha([t["n_params"] for t in table if t["precision"] == prec],
                      [t["capacity_bits"] for t in table if t["precision"] == prec])
      for prec in sorted({t["precision"] for t in table})}
  summary["learning_rates"] = sorted({r["learning_rate"] for r in rows if "learning_rate" in r})
  summary["models"] = table
  summary["shapes_left_out"] = left_out_shapes(rows)
  return summary
