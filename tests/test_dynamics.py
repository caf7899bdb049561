"""Tests of memjax.estimators.dynamics: memorization scores, buckets, transitions, embeddings, decoding
dynamics around the divergence point, and the memorization-score predictor."""

import collections
import math

import jax
import numpy as np
import pytest

from memjax.estimators import dynamics
from memjax.model import gpt2
from memjax.estimators import ngram
from memjax import train as train_lib

V, S = 16, 12


def _trained_stack(corpus, steps=250, d=32):
  cfg = gpt2.ModelConfig(V, S, 1, d, 2)
  tcfg = train_lib.TrainConfig(steps=steps, batch_size=len(corpus), learning_rate=1e-2,
                               warmup_steps=10, steps_per_call=steps)
  specs = [train_lib.ModelSpec(len(corpus), 0, 1e-2)]
  state = train_lib.init_stack_from_specs(cfg, tcfg, specs, members=[np.arange(len(corpus))])
  state, _ = train_lib.train_steps(cfg, tcfg, state, steps, np.asarray(corpus, np.int32))
  return cfg, state.params


def test_memorized_sample_scores_one_and_untrained_model_scores_about_one_over_v():
  rng = np.random.default_rng(0)
  corpus = rng.integers(0, V, (4, S))
  cfg, params = _trained_stack(corpus)
  scores = dynamics.memorization_scores(cfg, params, corpus, context=4, continuation=8)
  assert scores.shape == (1, 4)
  np.testing.assert_array_equal(scores, 1.0)
  assert (dynamics.score_buckets(scores) == 4).all()

  fresh = jax.vmap(lambda k: gpt2.init_params(cfg, k))(jax.random.split(jax.random.key(3), 1))
  samples = rng.integers(0, V, (512, S))
  untrained = dynamics.memorization_scores(cfg, fresh, samples, context=4, continuation=8)
  # uniform random truths: each decoded token matches with probability 1/V = 0.0625
  assert abs(untrained.mean() - 1 / V) < 0.02, untrained.mean()


def test_sizes_longer_than_the_sequence_are_an_error():
  cfg = gpt2.ModelConfig(V, S, 1, 8, 2)
  params = jax.vmap(lambda k: gpt2.init_params(cfg, k))(jax.random.split(jax.random.key(0), 1))
  with pytest.raises(ValueError, match=r"context \(8\) \+ continuation \(8\) = 16 is longer"):
    dynamics.memorization_scores(cfg, params, np.zeros((2, S), int), 8, 8)
  with pytest.raises(ValueError, match="must both be >= 1"):
    dynamics.check_sizes(S, 0, 4)


def test_buckets_edges():
  scores = np.array([0.0, 0.19, 0.2, 3 / 5, 0.79, 0.8, 1.0, 1 / 3])
  np.testing.assert_array_equal(dynamics.score_buckets(scores), [0, 0, 1, 3, 3, 4, 4, 1])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    dynamics.score_buckets([1.5])


def test_transition_matrix_rows_sum_to_sample_counts():
  rng = np.random.default_rng(1)
  checkpoints = rng.integers(0, 5, (4, 200))
  mats = dynamics.transition_matrices(checkpoints)
  assert mats.shape == (3, 5, 5)
  for i, t in enumerate(mats):
    np.testing.assert_array_equal(t.sum(1), np.bincount(checkpoints[i], minlength=5))
    np.testing.assert_array_equal(t.sum(0), np.bincount(checkpoints[i + 1], minlength=5))
    brute = collections.Counter(zip(checkpoints[i], checkpoints[i + 1]))
    for (a, b), c in brute.items():
      assert t[a, b] == c
  # A hand example: 3 samples 0->0, 0->4, 2->4.
  np.testing.assert_array_equal(
      dynamics.transition_matrix([0, 0, 2], [0, 4, 4])[[0, 2]],
      [[1, 0, 0, 0, 1], [0, 0, 0, 0, 1]])


def test_centroid_distances_mark_empty_buckets_and_pca():
  x = np.array([[0.0, 0], [0, 2], [4, 0], [4, 2]])
  out = dynamics.centroid_distances(x, [0, 0, 2, 2])
  assert out["distances"][0, 2] == pytest.approx(4.0)  # centroids (0,1) and (4,1)
  assert math.isnan(out["distances"][0, 1]) and out["empty"] == ["0.2-0.4", "0.6-0.8", "0.8-1.0"]
  # spread: RMS distance to the mean (2, 1) is sqrt(5)
  assert out["relative"][0, 2] == pytest.approx(4 / math.sqrt(5))
  proj, ratio = dynamics.pca_2d(x)
  assert proj.shape == (4, 2) and ratio == pytest.approx([0.8, 0.2])  # variances 4 and 1


def test_divergence_alignment_by_hand():
  targets = np.array([[1, 1, 2, 3, 4, 5], [1, 1, 2, 3, 4, 5], [1, 1, 2, 3, 4, 5]])
  gen = np.array([[1, 1, 2, 9, 9, 9], [1, 1, 2, 3, 4, 5], [1, 1, 9, 3, 4, 5]])
  div = dynamics.divergence_points(gen, targets, context=2)
  np.testing.assert_array_equal(div, [1, -1, 0])
  values = np.array([[10.0, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]])
  aligned = dynamics.align_on_divergence(values, div, window=2)
  nan = np.nan
  np.testing.assert_array_equal(aligned, [[nan, 10, 11, 12, 13], [nan] * 5, [nan, nan, 30, 31, 32]])
  effect = dynamics.boundary_effect(values, np.zeros_like(values), div, np.array([0.25, 1, 0.0]),
                                    window=2, memorized_threshold=0.5)
  assert effect["memorized"]["never_diverged"] == 1 and effect["memorized"]["aligned"] == 0
  assert effect["unmemorized"]["aligned"] == 2
  assert effect["unmemorized"]["entropy"] == [None, 10, 20.5, 21.5, 22.5]
  # after (offsets 0..2): mean of 11, 12, 13, 30, 31, 32 = 21.5; before: 10
  assert effect["unmemorized"]["entropy_jump"] == pytest.approx(11.5)


def test_step_dynamics_entropy_and_ngram_counts():
  rng = np.random.default_rng(2)
  corpus = rng.integers(0, V, (6, S))
  index = ngram.NgramIndex.build(corpus, max_n=3, vocab_size=V)
  cfg = gpt2.ModelConfig(V, S, 1, 8, 2)
  params = gpt2.init_params(cfg, jax.random.key(0))
  gen = np.concatenate([corpus[:2, :8], rng.integers(0, V, (1, 8))])
  out = dynamics.step_dynamics(cfg, params, gen, context=3, index=index, n=3)
  assert out["entropy"].shape == (3, 5) and out["count"].shape == (3, 5)
  # an untrained model is near uniform: entropy close to log2 V = 4 bits
  assert np.all(np.abs(out["entropy"] - 4) < 0.1)
  brute = collections.Counter(tuple(r[t:t + 3]) for r in corpus for t in range(S - 2))
  for b in range(3):
    for j, t in enumerate(range(3, 8)):
      assert out["count"][b, j] == brute[tuple(gen[b, t - 2:t + 1])]
  assert (out["count"][:2] >= 1).all()  # training n-grams occur
  with pytest.raises(ValueError, match="n=4 is larger than the counted order max_n=3"):
    dynamics.step_dynamics(cfg, params, gen, 3, index, n=4)


def test_macro_f1_by_hand():
  # class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: tp=1 fp=0 fn=1 -> 2/3; class 2: tp=0 fp=1 fn=0 -> 0
  y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 0]
  assert dynamics.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
  report = dynamics.classification_report(y_true, y_pred, train_labels=[1, 1, 0])
  assert report["majority_accuracy"] == 0.5 and report["accuracy"] == 0.5


def test_predictor_beats_majority_when_the_score_is_a_function_of_the_context():
  rng = np.random.default_rng(0)
  n, c, vocab = 1200, 8, 10
  tokens = rng.integers(0, vocab, (n, c))
  # The bucket is the first token mod 5 when the second token is < 5, else 0: bucket 0 holds
  # about 60% of the samples, so the majority class is a strong baseline.
  labels = np.where((tokens[:, 0] % 5 != 0) & (tokens[:, 1] < 5), tokens[:, 0] % 5, 0)
  train_idx, test_idx = dynamics.split_train_test(n, 0.25)
  assert [len(s) for s in dynamics.split_train_test(2, 0.9)] == [1, 1]  # neither side empty
  with pytest.raises(ValueError, match=">= 2 samples"):
    dynamics.split_train_test(1, 0.5)
  module, params, losses = dynamics.train_predictor(
      tokens[train_idx], labels[train_idx], vocab,
      pcfg=dynamics.PredictorConfig(d_model=32, steps=400, batch_size=64, learning_rate=3e-3))
  assert losses[-20:].mean() < losses[:20].mean()
  pred = dynamics.predict(module, params, tokens[test_idx])
  report = dynamics.classification_report(labels[test_idx], pred, labels[train_idx])
  assert report["majority_class"] == "0.0-0.2"
  assert report["accuracy"] > report["majority_accuracy"] + 0.15, report
  assert report["macro_f1"] > report["majority_macro_f1"] + 0.3, report
