"""Membership inference: designs, per-sample scores, LiRA, metrics and the F1 scaling law.

Pure numpy + scipy. The inputs are per-token log2-probabilities from `memjax.likelihood`:
`logp_[..]xBxS` (float32, log2 p of each token). Position 0 has no context and is -log2 V under
every model, so every score here uses positions 1..S-1 only. Score functions take any leading
axes (a model axis M included) and reduce the last one: [.., B, S] -> [.., B].

Sign convention: every score is "higher = more likely a member". A NaN in the log-probabilities
(a diverged model) propagates to that sample's score; the metrics then refuse it (see below).

Scores, per sample:
- loss (Yeom et al. 2018; the attack of Morris et al. 2025): mean log2 p over positions 1..S-1,
  i.e. minus the loss in bits per token.
- reference (Carlini et al. 2021, "Extracting training data"; Mireshghallah et al. 2022):
  loss(target) - loss(reference), the target's likelihood calibrated by a reference model that
  never saw the sample (on synthetic data, the uniform distribution).
- zlib (Carlini et al. 2021): sum of log2 p over positions 1..S-1 divided by the zlib length in
  bits of the sequence. The bytes compressed are the S token ids as little-endian unsigned
  integers of `bytes_per_token` bytes (2 by default, enough for V <= 65536; 4 otherwise),
  zlib level 9. A member has a less negative log-likelihood, so a higher ratio.
- Min-K% (Shi et al. 2024, "Detecting pretraining data"): the mean of the lowest k fraction of
  the token log2-probs (positions 1..S-1; max(1, int(k (S-1))) tokens, as the reference code).
- Min-K%++ (Zhang et al. 2024): per token t >= 1, z_t = (log p(x_t) - mu_t) / sigma_t, with
  mu_t = E_{z~p}[log p(z)] (minus the entropy) and sigma_t^2 = Var_{z~p}[log p(z)] of the
  distribution that predicted x_t; then the mean of the lowest k fraction of the z_t. z is the
  same in bits or nats. `likelihood.next_token_stats` reports these moments at position t for
  token t+1 (its `entropy` is -mean_logp), which is the default alignment (`moments_at="next"`).
- LiRA (Carlini et al. 2022, "Membership inference attacks from first principles"): shadow models
  trained on a membership matrix give, per sample, Gaussian fits of their scores when the sample
  was IN and OUT. Online: log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out), in nats. Offline:
  a one-sided test against OUT only, -log P(OUT score >= s) = -log sf((s - mu_out) / sd_out).
  The score fed to LiRA is usually the per-sample log-likelihood (`loss_score`) or the
  logit-scaled confidence (`logit_confidence`), whose shadow distributions are closer to Gaussian.
  `global_variance=True` pools one within-sample variance per group over all samples, for few
  shadows.

Metrics, on (scores, is_member):
- F1 at the median: member when score > median(scores) (ties at the median count as
  non-members). On a balanced set half the samples are called members, so chance gives ~0.5.
- best F1 over all thresholds: optimistic (calling everything a member already gives 2/3 on a
  balanced set).
- ROC AUC: Mann-Whitney U with average ranks for ties = P(member > non-member) + P(tie) / 2.
- TPR at FPR (0.1%, 1%): the largest TPR over thresholds whose FPR <= the target; with n
  non-members the FPR resolution is 1/n, and below it this is the TPR at zero false positives.
- Bootstrap CIs: percentiles of seeded resamples, members and non-members resampled separately.
NaN or inf scores: every metric raises ValueError naming the score (the `name` argument); no
metric is ever computed on them.

The law (Morris et al. 2025, "How much do language models memorize?"):
    F1 = 1/2 (1 + c1 sigmoid(c2 (x + c3))),   published c1 = 1.34, c2 = -0.034, c3 = -33.14.
The printed x = capacity / |D| does not reproduce the paper's numbers; the working form is
x = S log2(V) N / params (tokens per parameter times log2 V). Both are provided; fit and report
both. Command line (published constants, or --constants FILE written by `save_constants`):

  python -m memjax.estimators.membership predict --n_params 1e6 --dataset_size 1e5 --seq_len 64 --vocab_size 2048
  python -m memjax.estimators.membership solve --n_params 1e6 --target_f1 0.6 --seq_len 64 --vocab_size 2048
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats

from memjax.engine import jsonio

PUBLISHED = {"c1": 1.34, "c2": -0.034, "c3": -33.14}
DEFAULT_FPRS = (0.001, 0.01)
_SD_FLOOR = 1e-6  # Gaussian fits and Min-K%++ moments: keep a zero spread from dividing by zero.


def _check_count(name: str, value, minimum: int, even: bool = False) -> int:
  """An integer >= minimum (and even if asked); ValueError naming the argument otherwise."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if value < minimum or (even and value % 2):
    need = f"an even integer >= {minimum}" if even else f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {need}, got {value}")
  return int(value)


# ---------------------------------------------------------------------------------------------
# Designs.


def balanced_split(num_candidates: int, seed: int) -> np.ndarray:
  """bool [num_candidates]: a seeded random mask with exactly num_candidates / 2 members."""
  n = _check_count("num_candidates", num_candidates, 2, even=True)
  member = np.zeros(n, bool)
  member[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
  return member


def membership_matrix(num_models: int, num_samples: int, seed: int) -> np.ndarray:
  """bool [num_models, num_samples]: model m trains on sample c where True.

  Every sample is a member of exactly num_models / 2 models (the LiRA construction: per sample,
  a random permutation of the models, first half IN), and every model then holds floor or ceil
  of num_samples / 2 samples: memberships are moved between models within a column, which keeps
  the column sums, until the row sums are balanced too.
  """
  m = _check_count("num_models", num_models, 2, even=True)
  c = _check_count("num_samples", num_samples, 1)
  rng = np.random.default_rng(seed)
  first_half_MxC = np.broadcast_to((np.arange(m) < m // 2)[:, None], (m, c))
  in_MxC = rng.permuted(first_half_MxC, axis=0)  # an independent permutation per column
  return _balance_rows(in_MxC, rng)


def _balance_rows(in_MxC: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  m, c = in_MxC.shape
  counts_M = in_MxC.sum(1)
  target_M = np.full(m, c // 2)
  if c % 2:  # half of the models hold one sample more: those that hold the most already
    target_M[np.argsort(-counts_M, kind="stable")[: m // 2]] += 1
  surplus_M = counts_M - target_M
  for heavy in np.flatnonzero(surplus_M > 0):
    while surplus_M[heavy] > 0:
      light = np.flatnonzero(surplus_M < 0)[0]
      moves = min(surplus_M[heavy], -surplus_M[light])
      # count(heavy) - count(light) >= 2 moves - 1, so at least `moves` such columns exist.
      movable = np.flatnonzero(in_MxC[heavy] & ~in_MxC[light])
      cols = rng.choice(movable, moves, replace=False)
      in_MxC[heavy, cols], in_MxC[light, cols] = False, True
      surplus_M[heavy] -= moves
      surplus_M[light] += moves
  return in_MxC


def save_design(path, matrix, **seeds) -> str:
  """Writes the membership matrix and its seeds (JSON) to an .npz; returns the path written."""
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or matrix.dtype != bool:
    raise ValueError(f"matrix must be a bool [num_models, num_samples] array, got {matrix.dtype} "
                     f"of shape {matrix.shape}")
  path = os.fspath(path)
  path = path if path.endswith(".npz") else path + ".npz"
  jsonio.savez_atomic(path, membership=matrix, seeds=np.array(json.dumps(seeds)))
  return path


def load_design(path) -> tuple[np.ndarray, dict]:
  """(membership matrix, seeds dict) from a file written by `save_design`."""
  with np.load(os.fspath(path)) as data:
    if "membership" not in data or "seeds" not in data:
      raise ValueError(f"{path}: not a membership design (needs 'membership' and 'seeds')")
    return data["membership"].astype(bool), json.loads(str(data["seeds"]))


# ---------------------------------------------------------------------------------------------
# Scores (higher = more likely a member).


def _predicted(logp, name="logp") -> np.ndarray:
  """Positions 1..S-1 of [.., S] log-probs, float64 (position 0 has no context)."""
  logp = np.asarray(logp, np.float64)
  if logp.ndim < 1 or logp.shape[-1] < 2:
    raise ValueError(f"{name} needs a last (sequence) axis of >= 2 tokens, got shape {logp.shape}")
  return logp[..., 1:]


def loss_score(logp_BxS) -> np.ndarray:
  """Mean log2 p over positions 1..S-1 (minus the loss in bits per token): [.., B]."""
  return _predicted(logp_BxS).mean(-1)


def reference_score(logp_target_BxS, logp_reference_BxS) -> np.ndarray:
  """loss_score(target) - loss_score(reference): [.., B]."""
  target, reference = np.shape(logp_target_BxS), np.shape(logp_reference_BxS)
  if target[-1:] != reference[-1:]:
    raise ValueError(f"target and reference log-probs differ in length: {target} vs {reference}")
  return loss_score(logp_target_BxS) - loss_score(logp_reference_BxS)


def zlib_bits(tokens_BxS, bytes_per_token: int = 2) -> np.ndarray:
  """zlib (level 9) length in bits of each sequence's token ids, little-endian: [.., B]."""
  if bytes_per_token not in (2, 4):
    raise ValueError(f"bytes_per_token must be 2 or 4, got {bytes_per_token}")
  tokens = np.asarray(tokens_BxS)
  if tokens.ndim < 1 or tokens.size == 0:
    raise ValueError(f"tokens must be a non-empty [.., B, S] array, got shape {tokens.shape}")
  if tokens.min() < 0 or tokens.max() >= 256**bytes_per_token:
    raise ValueError(f"token ids must lie in [0, {256**bytes_per_token}) for bytes_per_token="
                     f"{bytes_per_token}, got [{tokens.min()}, {tokens.max()}]")
  rows = tokens.astype(f"<u{bytes_per_token}").reshape(-1, tokens.shape[-1])
  bits = [8 * len(zlib.compress(row.tobytes(), 9)) for row in rows]
  return np.asarray(bits, np.float64).reshape(tokens.shape[:-1])


def zlib_score(logp_BxS, tokens_BxS, bytes_per_token: int = 2) -> np.ndarray:
  """sum log2 p (positions 1..S-1) / zlib length in bits: [.., B]."""
  if np.shape(logp_BxS) != np.shape(tokens_BxS):
    raise ValueError(f"logp and tokens differ in shape: {np.shape(logp_BxS)} vs "
                     f"{np.shape(tokens_BxS)}")
  return _predicted(logp_BxS).sum(-1) / zlib_bits(tokens_BxS, bytes_per_token)


def _lowest_k_mean(values, k: float) -> np.ndarray:
  if not 0 < k <= 1:
    raise ValueError(f"k must be a fraction in (0, 1], got {k}")
  count = max(1, int(k * values.shape[-1]))
  return np.sort(values, axis=-1)[..., :count].mean(-1)


def min_k_score(logp_BxS, k: float = 0.2) -> np.ndarray:
  """Min-K%: mean of the lowest k fraction of log2 p over positions 1..S-1: [.., B]."""
  return _lowest_k_mean(_predicted(logp_BxS), k)


def min_k_plus_plus_score(logp_BxS, mean_logp_BxS, var_logp_BxS, k: float = 0.2,
                          moments_at: str = "next") -> np.ndarray:
  """Min-K%++: mean of the lowest k fraction of (log p - mu) / sigma: [.., B].

  mean_logp = E_{z~p}[log2 p(z)] (minus the entropy in bits), var_logp = Var_{z~p}[log2 p(z)].
  moments_at="next": the moments at position t describe the distribution of token t + 1 (as
  `likelihood.next_token_stats` returns them), so token t uses those at t - 1.
  moments_at="token": the moments at t describe the distribution that produced token t.
  """
  if np.shape(mean_logp_BxS) != np.shape(logp_BxS) or np.shape(var_logp_BxS) != np.shape(logp_BxS):
    raise ValueError(f"logp, mean_logp and var_logp must share a shape, got {np.shape(logp_BxS)}, "
                     f"{np.shape(mean_logp_BxS)}, {np.shape(var_logp_BxS)}")
  if moments_at not in ("next", "token"):
    raise ValueError(f"moments_at must be 'next' or 'token', got {moments_at!r}")
  logp = _predicted(logp_BxS)
  window = slice(None, -1) if moments_at == "next" else slice(1, None)
  mu = np.asarray(mean_logp_BxS, np.float64)[..., window]
  # Var can come out slightly negative from float cancellation; a zero spread is floored.
  sigma = np.sqrt(np.maximum(np.asarray(var_logp_BxS, np.float64)[..., window], 0.0))
  return _lowest_k_mean((logp - mu) / np.maximum(sigma, _SD_FLOOR), k)


def logit_confidence(logp_BxS, max_logit: float = 30.0) -> np.ndarray:
  """Mean over positions 1..S-1 of the logit-scaled token probability, log(p / (1 - p)): [.., B].

  LiRA's preferred statistic: it keeps growing as p -> 1 where log p saturates at 0, and its
  shadow distributions are closer to Gaussian. Natural log; clipped to +-max_logit (p = 1).
  """
  ln_p = np.minimum(_predicted(logp_BxS) * math.log(2.0), 0.0)
  with np.errstate(divide="ignore"):
    logit = ln_p - np.log(-np.expm1(ln_p))
  return np.clip(logit, -max_logit, max_logit).mean(-1)


# ---------------------------------------------------------------------------------------------
# LiRA.


def _shadow_inputs(target_score_B, shadow_scores_MxB, shadow_in_MxB):
  target_B = np.asarray(target_score_B, np.float64)
  shadow_MxB = np.asarray(shadow_scores_MxB, np.float64)
  in_MxB = np.asarray(shadow_in_MxB)
  if shadow_MxB.ndim != 2 or shadow_MxB.shape[0] < 2:
    raise ValueError("LiRA needs >= 2 shadow models: shadow_scores must be [num_shadows >= 2, B], "
                     f"got shape {shadow_MxB.shape}")
  if in_MxB.dtype != bool or in_MxB.shape != shadow_MxB.shape or target_B.shape != shadow_MxB.shape[1:]:
    raise ValueError(f"LiRA: expected target_score [B], shadow_scores [M, B] and a bool shadow_in "
                     f"[M, B]; got {target_B.shape}, {shadow_MxB.shape}, {in_MxB.dtype} "
                     f"{in_MxB.shape}")
  for name, a in (("target_score", target_B), ("shadow_scores", shadow_MxB)):
    if not np.isfinite(a).all():
      raise ValueError(f"LiRA: {name} holds {int((~np.isfinite(a)).sum())} NaN or inf value(s)")
  return target_B, shadow_MxB, in_MxB


def balanced_shadows(shadow_in_MxB, seed) -> np.ndarray:
  """bool [M, B]: the shadows each sample's fits use, so that every sample's IN fit uses the same
  number of shadows (the fewest any sample has IN), and every OUT fit too; which ones are left
  out is drawn at random (seed: anything np.random.default_rng takes).

  Why: in a leave-one-out attack on a stack where every sample is IN for exactly half the models,
  a target's members have one IN shadow fewer than OUT shadows and its non-members one more. Fits
  whose sizes depend on the label score the two classes differently even when the scores carry
  no membership signal (null AUC 0.445 with 8 models, online per-sample; offline, too few
  non-members pass a low-FPR threshold). With equal counts it is 0.5. For that stack this keeps
  num_models/2 - 1 IN and as many OUT shadows a sample.
  """
  in_MxB = np.asarray(shadow_in_MxB)
  if in_MxB.dtype != bool or in_MxB.ndim != 2:
    raise ValueError(f"shadow_in must be a bool [M, B] array, got {in_MxB.dtype} {in_MxB.shape}")
  priority_MxB = np.random.default_rng(seed).random(in_MxB.shape)
  keep_MxB = np.ones(in_MxB.shape, bool)
  for group_MxB in (in_MxB, ~in_MxB):
    keep_k = int(group_MxB.sum(0).min()) if in_MxB.shape[1] else 0
    # Rank of each shadow within its group (others rank after it); keep the keep_k lowest.
    rank_MxB = np.where(group_MxB, priority_MxB, np.inf).argsort(0).argsort(0)
    keep_MxB &= ~group_MxB | (rank_MxB < keep_k)
  return keep_MxB


def _gaussian_fit(shadow_MxB, mask_MxB, global_variance: bool, group: str):
  """Per-sample mean and standard deviation of the shadow scores selected by mask."""
  count_B = mask_MxB.sum(0)
  if (count_B == 0).any():
    first = int(np.argmax(count_B == 0))
    raise ValueError(f"LiRA: {int((count_B == 0).sum())} sample(s) (first: {first}) have no "
                     f"{group} shadow model; use more shadow models")
  mean_B = np.where(mask_MxB, shadow_MxB, 0.0).sum(0) / count_B
  dev2_B = np.where(mask_MxB, (shadow_MxB - mean_B) ** 2, 0.0).sum(0)
  if global_variance:  # pooled within-sample variance: one spread for the whole group
    dof = int((count_B - 1).sum())
    if dof < 1:
      raise ValueError(f"LiRA: too few {group} shadow scores to estimate even a pooled variance")
    sd_B = np.full(mean_B.shape, math.sqrt(dev2_B.sum() / dof))
  else:
    if (count_B < 2).any():
      first = int(np.argmax(count_B < 2))
      raise ValueError(f"LiRA: sample {first} has only {int(count_B[first])} {group} shadow "
                       "model; per-sample variances need >= 2: use more shadow models or "
                       "global_variance=True")
    sd_B = np.sqrt(dev2_B / (count_B - 1))
  return mean_B, np.maximum(sd_B, _SD_FLOOR)


def _used_shadows(in_MxB, used_MxB):
  if used_MxB is None:
    return np.ones(in_MxB.shape, bool)
  used_MxB = np.asarray(used_MxB)
  if used_MxB.dtype != bool or used_MxB.shape != in_MxB.shape:
    raise ValueError(f"LiRA: used_shadows must be a bool array of shadow_in's shape {in_MxB.shape}"
                     f", got {used_MxB.dtype} {used_MxB.shape}")
  return used_MxB


def lira_online(target_score_B, shadow_scores_MxB, shadow_in_MxB,
                global_variance: bool = False, used_shadows_MxB=None) -> np.ndarray:
  """Online LiRA: log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out) per sample, in nats: [B].

  shadow_scores_MxB: the same statistic of every sample under each shadow model; shadow_in_MxB:
  whether the shadow trained on it; used_shadows_MxB (optional, e.g. balanced_shadows): which
  shadows each sample's fits use. Every sample needs IN and OUT shadows (>= 2 each unless
  global_variance).
  """
  target_B, shadow_MxB, in_MxB = _shadow_inputs(target_score_B, shadow_scores_MxB, shadow_in_MxB)
  used_MxB = _used_shadows(in_MxB, used_shadows_MxB)
  mu_in, sd_in = _gaussian_fit(shadow_MxB, in_MxB & used_MxB, global_variance, "IN")
  mu_out, sd_out = _gaussian_fit(shadow_MxB, ~in_MxB & used_MxB, global_variance, "OUT")
  return stats.norm.logpdf(target_B, mu_in, sd_in) - stats.norm.logpdf(target_B, mu_out, sd_out)


def lira_offline(target_score_B, shadow_scores_MxB, shadow_in_MxB,
                 global_variance: bool = False, used_shadows_MxB=None) -> np.ndarray:
  """Offline LiRA: -log P(OUT score >= s), a one-sided test against the OUT fit only: [B]."""
  target_B, shadow_MxB, in_MxB = _shadow_inputs(target_score_B, shadow_scores_MxB, shadow_in_MxB)
  used_MxB = _used_shadows(in_MxB, used_shadows_MxB)
  mu_out, sd_out = _gaussian_fit(shadow_MxB, ~in_MxB & used_MxB, global_variance, "OUT")
  return -stats.norm.logsf((target_B - mu_out) / sd_out)


def lira_leave_one_out(scores_MxB, in_MxB, online: bool = True, global_variance: bool = False,
                       seed: int = 0) -> np.ndarray:
  """LiRA scores [M, B] of a stack: each model attacked with the other M - 1 as its shadows, the
  same number of IN (and of OUT) shadows for every sample (balanced_shadows, seeded by
  [seed, model]). A stack where every sample is IN for half the models needs M >= 6 (2 IN and 2
  OUT shadows a sample), per-sample or pooled variances alike."""
  scores_MxB, in_MxB = np.asarray(scores_MxB, np.float64), np.asarray(in_MxB)
  if scores_MxB.ndim != 2 or scores_MxB.shape[0] < 3:
    raise ValueError("lira_leave_one_out needs >= 3 models (>= 2 shadows each), got scores of "
                     f"shape {scores_MxB.shape}")
  attack = lira_online if online else lira_offline
  rows = []
  for m in range(len(scores_MxB)):
    others = np.arange(len(scores_MxB)) != m
    used = balanced_shadows(in_MxB[others], [int(seed), m])
    rows.append(attack(scores_MxB[m], scores_MxB[others], in_MxB[others], global_variance, used))
  return np.stack(rows)


# ---------------------------------------------------------------------------------------------
# Metrics on (scores, is_member). Public functions validate; the underscored ones assume valid
# float64 scores and bool labels (the bootstrap calls them many times).


def check_scores(scores, labels, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
  """(scores float64 [n], labels bool [n]); ValueError naming the score on NaN/inf scores,
  labels other than 0/1, mismatched shapes or a missing class."""
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  if scores.shape != labels.shape:
    raise ValueError(f"{name}: {scores.size} scores but {labels.size} labels")
  bad = np.flatnonzero(~np.isfinite(scores))
  if bad.size:
    raise ValueError(f"{name}: {bad.size} of {scores.size} scores are NaN or inf (first at index "
                     f"{bad[0]}); no metric is computed on them")
  if labels.dtype != bool:
    if not np.isin(labels, (0, 1)).all():
      raise ValueError(f"{name}: labels must be bool or 0/1, got values {np.unique(labels)[:5]}")
    labels = labels.astype(bool)
  if labels.all() or not labels.any():
    raise ValueError(f"{name}: needs both members and non-members, got {int(labels.sum())} "
                     f"members of {labels.size}")
  return scores, labels


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n, tied values given the mean of the ranks they span."""
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x))
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of starts+1..ends
  return ranks


def _auc(s, y) -> float:
  n_pos, n_neg = y.sum(), (~y).sum()
  rank_sum = _average_ranks(s)[y].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _roc(s, y):
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
  tpr = np.r_[0.0, np.cumsum(y)[last] / y.sum()]
  fpr = np.r_[0.0, np.cumsum(~y)[last] / (~y).sum()]
  return fpr, tpr, np.r_[np.inf, s[last]]


def _f1(tp, fp, fn):
  return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def _f1_median(s, y) -> float:
  pred = s > np.median(s)
  return float(_f1((pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()))


def _best_f1(s, y) -> float:
  fpr, tpr, _ = _roc(s, y)
  tp, fp = tpr * y.sum(), fpr * (~y).sum()
  return float(_f1(tp, fp, y.sum() - tp).max())


def _tpr_at_fpr(s, y, fpr) -> float:
  fprs, tprs, _ = _roc(s, y)
  return float(tprs[fprs <= fpr * (1 + 1e-9)].max())  # (0, 0) always qualifies


def _check_fpr(fpr):
  if not 0 <= fpr <= 1:
    raise ValueError(f"fpr must be in [0, 1], got {fpr}")


def roc_auc(scores, labels, name: str = "scores") -> float:
  """ROC AUC = P(member score > non-member score) + P(tie) / 2, from average ranks."""
  return _auc(*check_scores(scores, labels, name))


def roc_curve(scores, labels, name: str = "scores"):
  """(fpr, tpr, thresholds): member when score >= threshold; thresholds descending from +inf,
  one point per distinct score (a tie moves FPR and TPR together: a diagonal step)."""
  return _roc(*check_scores(scores, labels, name))


def f1_at_median(scores, labels, name: str = "scores") -> float:
  """F1 calling members the scores above the median (ties at the median: non-members)."""
  return _f1_median(*check_scores(scores, labels, name))


def best_f1(scores, labels, name: str = "scores") -> float:
  """The best F1 over thresholds (member when score >= threshold); optimistic."""
  return _best_f1(*check_scores(scores, labels, name))


def tpr_at_fpr(scores, labels, fpr: float, name: str = "scores") -> float:
  """The largest TPR over thresholds whose FPR <= fpr."""
  _check_fpr(fpr)
  return _tpr_at_fpr(*check_scores(scores, labels, name), fpr)


def _bootstrap_indices(y, n_boot: int, seed: int):
  """Seeded resamples that keep the number of members and non-members."""
  rng = np.random.default_rng(seed)
  pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
  for _ in range(n_boot):
    yield np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]


def _check_bootstrap(n_boot, alpha, minimum: int = 1):
  _check_count("n_boot", n_boot, minimum)
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _percentile_ci(values, alpha) -> list[float]:
  return [float(v) for v in np.quantile(values, [alpha / 2, 1 - alpha / 2])]


def bootstrap_ci(metric_fn: Callable, scores, labels, n_boot: int = 200, seed: int = 0,
                 alpha: float = 0.05, name: str = "scores") -> list[float]:
  """[lo, hi]: the (1 - alpha) percentile interval of metric_fn(scores, labels) over stratified
  resamples (members and non-members resampled separately, seeded)."""
  _check_bootstrap(n_boot, alpha)
  s, y = check_scores(scores, labels, name)
  return _percentile_ci([metric_fn(s[i], y[i]) for i in _bootstrap_indices(y, n_boot, seed)], alpha)


def _tpr_key(fpr: float) -> str:
  return f"tpr_at_fpr_{fpr:g}"


def _point_metrics(s, y, fprs) -> dict:
  out = {"auc": _auc(s, y), "f1_median": _f1_median(s, y), "f1_best": _best_f1(s, y)}
  out.update({_tpr_key(f): _tpr_at_fpr(s, y, f) for f in fprs})
  return out


def attack_report(scores, labels, name: str = "scores", fprs: Sequence[float] = DEFAULT_FPRS,
                  n_boot: int = 200, seed: int = 0, alpha: float = 0.05) -> dict:
  """Every metric of one attack with bootstrap CIs (JSON-ready); ValueError on NaN/inf scores.

  Keys: name, n_members, n_nonmembers, fpr_resolution (1 / n_nonmembers), auc, f1_median,
  f1_best, tpr_at_fpr_<fpr> for each fpr, each with <key>_ci = [lo, hi] (None with n_boot=0),
  and alpha, n_boot.
  """
  for f in fprs:
    _check_fpr(f)
  _check_bootstrap(n_boot, alpha, minimum=0)  # 0: point estimates only, no intervals
  s, y = check_scores(scores, labels, name)
  point = _point_metrics(s, y, fprs)
  boots = [_point_metrics(s[i], y[i], fprs) for i in _bootstrap_indices(y, n_boot, seed)
           ] if n_boot else None
  out = {"name": name, "n_members": int(y.sum()), "n_nonmembers": int((~y).sum()),
         "fpr_resolution": 1.0 / int((~y).sum()), "alpha": alpha, "n_boot": n_boot}
  for key, value in point.items():
    out[key] = value
    out[f"{key}_ci"] = _percentile_ci([b[key] for b in boots], alpha) if boots else None
  return out


def plot_roc(curves: Mapping[str, tuple], path, title: str | None = None) -> str:
  """ROC curves {name: (fpr, tpr)} on log-log axes, written to path (Agg, no pyplot state).

  Zeros cannot be drawn on log axes: values are clipped to the smallest positive one shown.
  """
  from matplotlib.figure import Figure  # Figure.savefig renders with Agg without pyplot

  if not curves:
    raise ValueError("plot_roc needs at least one curve")
  positive = [v[v > 0] for fpr, tpr in curves.values() for v in (np.asarray(fpr), np.asarray(tpr))]
  floor = min([1e-3] + [float(v.min()) for v in positive if v.size])
  fig = Figure(figsize=(4.5, 4.5))
  ax = fig.subplots()
  for label, (fpr, tpr) in curves.items():
    ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=label)
  ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
  ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1),
         xlabel="false positive rate", ylabel="true positive rate", title=title or "")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=120)
  return os.fspath(path)


# ---------------------------------------------------------------------------------------------
# The scaling law of membership F1 (Morris et al. 2025).


def law_f1(x, c1, c2, c3):
  """F1 = 1/2 (1 + c1 sigmoid(c2 (x + c3)))."""
  return 0.5 * (1 + c1 * special.expit(c2 * (np.asarray(x, np.float64) + c3)))


def tokens_per_param_x(n_params, dataset_size, seq_len, vocab_size):
  """The working x = S log2(V) N / params, which reproduces the published constants."""
  return seq_len * np.log2(vocab_size) * np.asarray(dataset_size, np.float64) / np.asarray(
      n_params, np.float64)


def capacity_ratio_x(capacity_bits, dataset_size):
  """The printed x = capacity / |D| (bits of capacity per training sequence)."""
  return np.asarray(capacity_bits, np.float64) / np.asarray(dataset_size, np.float64)


def _constants(constants) -> tuple[float, float, float]:
  if isinstance(constants, Mapping):
    missing = [k for k in ("c1", "c2", "c3") if k not in constants]
    if missing:
      raise ValueError(f"constants lack {', '.join(missing)}: got keys {sorted(constants)}")
    return tuple(float(constants[k]) for k in ("c1", "c2", "c3"))
  if len(constants) != 3:
    raise ValueError(f"constants must be (c1, c2, c3) or a dict of them, got {constants!r}")
  return tuple(float(c) for c in constants)


def fit_law(x, f1, p0=None) -> dict:
  """Least-squares fit of the law to points (x, F1), started at the published constants.

  Returns {"c1", "c2", "c3", "stderr": {"c1", "c2", "c3"}, "rmse", "rmse_published",
  "n_points"}; a standard error that cannot be estimated (singular fit) is None. ValueError on
  NaN/inf points or fewer than 4; RuntimeError when the fit does not converge.
  """
  x, f1 = np.asarray(x, np.float64).reshape(-1), np.asarray(f1, np.float64).reshape(-1)
  if x.shape != f1.shape:
    raise ValueError(f"fit_law: {x.size} x values but {f1.size} F1 values")
  if not (np.isfinite(x).all() and np.isfinite(f1).all()):
    raise ValueError("fit_law: x or f1 holds NaN or inf")
  if x.size < 4:
    raise ValueError(f"fit_law: the 3-constant law needs >= 4 points, got {x.size}")
  p0 = _constants(PUBLISHED if p0 is None else p0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optimize.OptimizeWarning)  # singular covariance -> None
    popt, pcov = optimize.curve_fit(law_f1, x, f1, p0=p0, maxfev=20000)
  stderr = np.sqrt(np.diag(pcov))
  names = ("c1", "c2", "c3")
  rmse = lambda c: float(np.sqrt(np.mean((law_f1(x, *c) - f1) ** 2)))
  return {**{k: float(v) for k, v in zip(names, popt)},
          "stderr": {k: float(v) if np.isfinite(v) else None for k, v in zip(names, stderr)},
          "rmse": rmse(popt), "rmse_published": rmse(_constants(PUBLISHED)), "n_points": int(x.size)}


def predict_f1(n_params, dataset_size, seq_len, vocab_size, constants=PUBLISHED):
  """Membership F1 predicted by the law at x = S log2(V) N / params."""
  return law_f1(tokens_per_param_x(n_params, dataset_size, seq_len, vocab_size),
                *_constants(constants))


def law_range(constants=PUBLISHED) -> tuple[float, float]:
  """(F1 at x = 0, F1 as x -> inf): the law's values for x > 0 lie strictly between."""
  c1, c2, c3 = _constants(constants)
  at_inf = 0.5 * (1 + c1) if c2 > 0 else 0.5 if c2 < 0 else float(law_f1(0.0, c1, c2, c3))
  return float(law_f1(0.0, c1, c2, c3)), at_inf


def solve_x(target_f1: float, constants=PUBLISHED) -> float:
  """The x > 0 at which the law gives target_f1 (closed-form inverse of the sigmoid)."""
  c1, c2, c3 = _constants(constants)
  lo, hi = sorted(law_range((c1, c2, c3)))
  if c2 == 0 or not (lo < target_f1 < hi and 0 < target_f1 <= 1):
    raise ValueError(f"target_f1={target_f1} is outside the law's range for x > 0, "
                     f"({lo:.4f}, {min(hi, 1.0):.4f}), with c1={c1}, c2={c2}, c3={c3}")
  fraction = (2 * target_f1 - 1) / c1  # = sigmoid(c2 (x + c3))
  return float(special.logit(fraction) / c2 - c3)


def solve_dataset_size(n_params, target_f1, seq_len, vocab_size, constants=PUBLISHED) -> float:
  """The dataset size N (sequences, not rounded) at which the law predicts target_f1."""
  return solve_x(target_f1, constants) * n_params / (seq_len * math.log2(vocab_size))


def save_constants(path, fit_or_constants, **metadata) -> str:
  """Writes {"c1", "c2", "c3", ...the fit's other fields, ...metadata} as JSON; returns path."""
  c = _constants(fit_or_constants)
  record = dict(fit_or_constants) if isinstance(fit_or_constants, Mapping) else {}
  record.update(c1=c[0], c2=c[1], c3=c[2], **metadata)
  jsonio.write_atomic(os.fspath(path), record)
  return os.fspath(path)


def load_constants(path) -> dict:
  """The record written by `save_constants` (any JSON with numeric c1, c2, c3)."""
  with open(path) as f:
    try:
      record = json.load(f)
    except ValueError as e:  # not JSON (json.JSONDecodeError, UnicodeDecodeError)
      raise ValueError(f"{path}: not a JSON file of constants ({e})") from None
  if not isinstance(record, dict):
    raise ValueError(f"{path}: expected a JSON object with c1, c2, c3")
  try:
    constants = _constants(record)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: {e}") from None
  if not all(math.isfinite(c) for c in constants):
    raise ValueError(f"{path}: c1, c2, c3 must be finite numbers, got {constants}")
  return record


def cli(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m memjax.estimators.membership",
      description="F1 = 1/2 (1 + c1 sigmoid(c2 (x + c3))), x = S log2(V) N / params: predict the "
                  "membership F1 of a model, or solve for the dataset size that gives a target F1.")
  sub = parser.add_subparsers(dest="command", required=True)
  for command, given in (("predict", "dataset_size"), ("solve", "target_f1")):
    p = sub.add_parser(command)
    p.add_argument("--n_params", type=float, required=True)
    p.add_argument(f"--{given}", type=float, required=True)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--constants", default=None, help="JSON from save_constants (default: published)")
  args = parser.parse_args(argv)
  try:
    positive = (("n_params", 0), ("seq_len", 0), ("vocab_size", 1))
    if args.command == "predict":  # solve checks target_f1 against the law's range
      positive += (("dataset_size", 0),)
    for field, least in positive:
      value = getattr(args, field)
      if not (value > least and math.isfinite(value)):
        raise ValueError(f"--{field} must be a finite number > {least}, got {value}")
    constants = load_constants(args.constants) if args.constants else PUBLISHED
    if args.constants and constants.get("x_form", "tokens") != "tokens":
      raise ValueError(
          f"--constants: {args.constants} is a fit with x_form={constants['x_form']!r}; predict "
          "and solve use x = S log2(V) N / params, the x_form 'tokens' fit (law_fit_tokens.json)")
    shape = (args.seq_len, args.vocab_size)
    if args.command == "predict":
      result = {"f1": float(predict_f1(args.n_params, args.dataset_size, *shape, constants))}
    else:
      result = {"dataset_size": solve_dataset_size(args.n_params, args.target_f1, *shape, constants)}
  except (ValueError, OSError) as e:
    print(f"memjax.estimators.membership: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({**vars(args), **result, "constants": dict(zip(("c1", "c2", "c3"),
                                                                  _constants(constants)))}))
  return 0


if __name__ == "__main__":
  sys.exit(cli())
