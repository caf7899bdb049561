"""Tests of memjax.estimators.ngram: exact n-gram counts, n-gram probabilities, document co-occurrence,
per-position statistics along sequences, and the distributional rank correlations."""

import collections
import itertools
import math

import numpy as np
import pytest

from memjax.estimators import ngram

GPT2_VOCAB = 50257


def _brute_counts(docs, n):
  """Counter of n-gram tuples inside each document (never across documents)."""
  counter = collections.Counter()
  for doc in docs:
    doc = [int(t) for t in doc]
    for t in range(len(doc) - n + 1):
      counter[tuple(doc[t:t + n])] += 1
  return counter


def _random_docs(rng, num_docs, vocab, max_len):
  lengths = rng.integers(0, max_len + 1, num_docs)
  lengths[:3] = [0, 1, 2]  # documents shorter than most orders
  return [rng.integers(0, vocab, length) for length in lengths]


def _assert_counts_match(index, docs, max_n):
  for n in range(1, max_n + 1):
    expected = _brute_counts(docs, n)
    rows_UxN, counts_U = index.ngrams(n)
    got = {tuple(int(t) for t in row): int(c) for row, c in zip(rows_UxN, counts_U)}
    assert got == expected, f"n={n}"
    # lexicographic order of the distinct n-grams
    assert [tuple(r) for r in rows_UxN.tolist()] == sorted(expected)
    assert index.total(n) == sum(expected.values())
    assert index.num_distinct(n) == len(expected)
    # batched queries agree too
    queries_KxN = np.array(list(expected), dtype=np.int64).reshape(-1, n)
    np.testing.assert_array_equal(index.counts(queries_KxN), [expected[q] for q in expected])


def test_counts_match_brute_force_and_never_cross_documents():
  rng = np.random.default_rng(0)
  docs = _random_docs(rng, num_docs=40, vocab=5, max_len=30)
  index = ngram.NgramIndex.build(docs, max_n=5)
  _assert_counts_match(index, docs, 5)

  # n-grams of the concatenated stream that straddle a boundary and occur in no document
  stream = np.concatenate(docs)
  crossing = []
  for n in range(2, 6):
    inside = _brute_counts(docs, n)
    for t in range(stream.size - n + 1):
      gram = tuple(int(x) for x in stream[t:t + n])
      if gram not in inside:
        crossing.append(gram)
  assert len(crossing) > 10  # the check below has something to catch
  for gram in crossing:
    assert index.count(gram) == 0, gram


def test_two_dimensional_corpus_equals_list_of_rows():
  rng = np.random.default_rng(1)
  tokens_DxS = rng.integers(0, 6, (12, 9)).astype(np.uint16)
  from_array = ngram.NgramIndex.build(tokens_DxS, max_n=4)
  from_list = ngram.NgramIndex.build(list(tokens_DxS), max_n=4)
  _assert_counts_match(from_array, list(tokens_DxS), 4)
  for n in range(1, 5):
    np.testing.assert_array_equal(from_array.sorted_keys[n - 1], from_list.sorted_keys[n - 1])
    np.testing.assert_array_equal(from_array.key_counts[n - 1], from_list.key_counts[n - 1])


def test_gpt2_vocabulary():
  rng = np.random.default_rng(2)
  # a few ids from the top and bottom of the GPT-2 vocabulary, so that n-grams repeat
  common = np.array([0, 1, 30000, GPT2_VOCAB - 2, GPT2_VOCAB - 1])
  docs = [np.where(rng.random(length) < 0.8, rng.choice(common, length),
                   rng.integers(0, GPT2_VOCAB, length))
          for length in rng.integers(5, 60, 30)]
  index = ngram.NgramIndex.build(docs, max_n=6, vocab_size=GPT2_VOCAB)
  assert index.vocab_size == GPT2_VOCAB
  _assert_counts_match(index, docs, 6)

  # a token id >= V must not alias another key (prefix_id * V + token)
  unigrams, _ = index.ngrams(1)
  bigrams, bigram_counts = index.ngrams(2)
  j = int(np.flatnonzero(bigrams[:, 0] != unigrams[0, 0])[0])
  first, second = bigrams[j]
  previous_unigram = unigrams[int(np.searchsorted(unigrams[:, 0], first)) - 1, 0]
  assert bigram_counts[j] > 0
  assert index.count([previous_unigram, second + GPT2_VOCAB]) == 0
  assert index.count([GPT2_VOCAB + 5]) == 0

  # the vocabulary size is inferred from the largest token when not given
  inferred = ngram.NgramIndex.build(docs, max_n=2)
  assert inferred.vocab_size == max(int(d.max()) for d in docs) + 1


def test_cond_prob_by_hand():
  docs = [np.array([1, 2, 1, 3]), np.array([1, 2])]
  index = ngram.NgramIndex.build(docs, max_n=3)
  # count(1)=3, count(2)=2, count(3)=1, total(1)=6
  # count(1 2)=2, count(1 3)=1, count(2 1)=1, count(1 2 1)=1
  assert index.cond_prob([], 1) == pytest.approx(3 / 6)
  assert index.cond_prob([1], 2) == pytest.approx(2 / 3)
  assert index.cond_prob([1], 3) == pytest.approx(1 / 3)
  # "2" occurs twice, but the second one ends its document
  assert index.cond_prob([2], 1) == pytest.approx(1 / 2)
  assert index.cond_prob([2], 1, denominator="continuation") == pytest.approx(1.0)
  assert index.cond_prob([1, 2], 1) == pytest.approx(1 / 2)
  assert index.cond_prob([1], 1) == 0.0  # seen context, unseen continuation
  assert math.isnan(index.cond_prob([4], 1))  # unseen context: 0/0
  assert math.isnan(index.cond_prob([3, 1], 2, denominator="continuation"))

  contexts_Kx1 = np.array([[1], [1], [2], [4], [1]])
  tokens_K = np.array([2, 3, 1, 1, 1])
  np.testing.assert_allclose(index.cond_probs(contexts_Kx1, tokens_K),
                             [2 / 3, 1 / 3, 1 / 2, np.nan, 0.0])


def test_continuation_probabilities_sum_to_one():
  rng = np.random.default_rng(3)
  docs = _random_docs(rng, num_docs=20, vocab=4, max_len=15)
  index = ngram.NgramIndex.build(docs, max_n=3)
  contexts, _ = index.ngrams(2)
  contexts_KxC = np.repeat(contexts, 4, axis=0)
  tokens_K = np.tile(np.arange(4), contexts.shape[0])
  probs = index.cond_probs(contexts_KxC, tokens_K, denominator="continuation").reshape(-1, 4)
  followed = np.isfinite(probs).all(axis=1)
  assert followed.any()
  np.testing.assert_allclose(probs[followed].sum(axis=1), 1.0)


def test_conditional_probabilities_without_any_context_occurrence_are_undefined():
  index = ngram.NgramIndex.build([[0]], max_n=3, vocab_size=2)  # no 2-gram anywhere
  for denominator in ("context", "continuation"):
    assert np.isnan(index.cond_probs([[0, 0]], [0], denominator)).all()


def test_docs_with_both_matches_brute_force():
  rng = np.random.default_rng(4)
  docs = _random_docs(rng, num_docs=30, vocab=4, max_len=12)
  index = ngram.NgramIndex.build(docs, max_n=3)

  def contains(doc, gram):
    return any(tuple(int(x) for x in doc[t:t + len(gram)]) == gram
               for t in range(len(doc) - len(gram) + 1))

  grams = [g for n in (1, 2, 3) for g in itertools.product(range(4), repeat=n)]
  grams = [grams[i] for i in rng.choice(len(grams), 25, replace=False)] + [(9,), (0, 9)]
  nonzero = 0
  for a, b in itertools.product(grams, repeat=2):
    expected = sum(contains(doc, a) and contains(doc, b) for doc in docs)
    assert index.docs_with_both(a, b) == expected, (a, b)
    nonzero += expected > 0
  assert nonzero > 20
  for a in grams:
    expected_docs = [i for i, doc in enumerate(docs) if contains(doc, a)]
    np.testing.assert_array_equal(index.docs_with(a), expected_docs)
    assert index.doc_count(a) == len(expected_docs)

  without = ngram.NgramIndex.build(docs, max_n=3, doc_index=False)
  with pytest.raises(ValueError, match="doc_index"):
    without.docs_with_both((0,), (1,))


@pytest.mark.parametrize("denominator", ["context", "continuation"])
def test_position_stats_match_brute_force_loop(denominator):
  rng = np.random.default_rng(5)
  docs = _random_docs(rng, num_docs=25, vocab=5, max_len=20)
  index = ngram.NgramIndex.build(docs, max_n=4)
  tokens_BxS = rng.integers(0, 6, (4, 11))  # token 5 never occurs in the corpus
  for n in range(1, 5):
    gram_counts = _brute_counts(docs, n)
    context_counts = _brute_counts(docs, n - 1)
    if denominator == "continuation":  # only contexts followed by a token in their document
      context_counts = collections.Counter()
      for gram, c in gram_counts.items():
        context_counts[gram[:-1]] += c
    expected_prob = np.full(tokens_BxS.shape, np.nan)
    expected_count = np.full(tokens_BxS.shape, np.nan)
    for b in range(tokens_BxS.shape[0]):
      for t in range(n - 1, tokens_BxS.shape[1]):
        gram = tuple(int(x) for x in tokens_BxS[b, t - n + 1:t + 1])
        denom = index.total(1) if n == 1 else context_counts[gram[:-1]]
        expected_count[b, t] = gram_counts[gram]
        if denom:
          expected_prob[b, t] = gram_counts[gram] / denom
    prob_BxS, count_BxS = ngram.position_ngram_stats(index, tokens_BxS, n, denominator)
    np.testing.assert_allclose(prob_BxS, expected_prob, err_msg=f"n={n}")
    np.testing.assert_array_equal(count_BxS, expected_count, err_msg=f"n={n}")
    np.testing.assert_array_equal(ngram.position_counts(index, tokens_BxS, n), expected_count)
    np.testing.assert_allclose(ngram.position_cond_probs(index, tokens_BxS, n, denominator),
                               expected_prob)
  # sequences shorter than n: nothing is defined
  prob, count = ngram.position_ngram_stats(index, tokens_BxS[:, :2], 3)
  assert np.isnan(prob).all() and np.isnan(count).all()


def test_spearman_and_kendall_by_hand():
  model_prob = [0.01, 0.02, 0.2, 0.5, 0.9]  # ranks 1 2 3 4 5
  ngram_prob = [0.3, 0.1, 0.4, 0.6, 0.61]   # ranks 2 1 3 4 5
  # Spearman: d = (-1, 1, 0, 0, 0), sum d^2 = 2, rho = 1 - 6*2 / (5*(25-1)) = 1 - 12/120 = 0.9.
  # p-value (t-test): t = rho*sqrt(3/(1-rho^2)) = 3.5762 with 3 df, whose CDF is
  # 1/2 + (x/(1+x^2) + atan(x))/pi with x = t/sqrt(3); two-sided p = 0.0373861.
  mem = ngram.distributional_memorization(model_prob, ngram_prob)
  assert mem.statistic == pytest.approx(0.9)
  assert mem.p_value == pytest.approx(0.0373861, abs=1e-6)
  x = 0.9 * math.sqrt(3 / 0.19) / math.sqrt(3)
  assert mem.p_value == pytest.approx(2 * (0.5 - (x / (1 + x * x) + math.atan(x)) / math.pi))
  assert (mem.n_pairs, mem.n_ignored, mem.defined) == (5, 0, True)
  assert mem.as_dict()["spearman"] == mem.statistic

  # Kendall: of the 10 pairs only (1st, 2nd) is discordant: tau = (9 - 1)/10 = 0.8.
  # Exact p: permutations of 5 with <= 1 inversion: 1 + 4 = 5 of 120; two-sided 10/120 = 1/12.
  gen = ngram.distributional_generalization(model_prob, ngram_prob)
  assert gen.statistic == pytest.approx(0.8)
  assert gen.p_value == pytest.approx(1 / 12)
  assert gen.as_dict()["kendall_tau"] == gen.statistic
  # the authors' distributional generalization: 1 discordant pair of 10
  assert ngram.kendall_tau_distance(gen.statistic) == pytest.approx(0.1)
  assert math.isnan(ngram.kendall_tau_distance(math.nan))

  # reversed order: both are -1
  assert ngram.distributional_memorization(model_prob, -np.array(model_prob)).statistic == (
      pytest.approx(-1.0))
  assert ngram.distributional_generalization(model_prob, -np.array(model_prob)).statistic == (
      pytest.approx(-1.0))


def test_rank_correlations_ignore_nan_pairs():
  model_prob = [0.01, np.nan, 0.02, 0.2, 0.7, 0.5, 0.9]
  ngram_prob = [0.3, 0.2, 0.1, 0.4, np.nan, 0.6, 0.61]
  # after dropping the two nan pairs this is the 5-pair example above
  mem = ngram.distributional_memorization(model_prob, ngram_prob)
  gen = ngram.distributional_generalization(np.array(model_prob)[None], np.array(ngram_prob)[None])
  assert (mem.statistic, mem.n_pairs, mem.n_ignored) == (pytest.approx(0.9), 5, 2)
  assert (gen.statistic, gen.n_pairs, gen.n_ignored) == (pytest.approx(0.8), 5, 2)

  for fn in (ngram.distributional_memorization, ngram.distributional_generalization):
    few = fn([0.1, np.nan, 0.3, 0.2], [0.2, 0.5, np.nan, 0.1])  # 2 usable pairs
    assert not few.defined and math.isnan(few.statistic) and math.isnan(few.p_value)
    assert (few.n_pairs, few.n_ignored) == (2, 2)
    constant = fn([0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5])
    assert not constant.defined and math.isnan(constant.statistic)
    with pytest.raises(ValueError, match="model_prob"):
      fn([0.1, 0.2, 0.3], [0.1, 0.2])


def test_order_larger_than_max_n_names_n():
  index = ngram.NgramIndex.build([np.array([1, 2, 3, 4, 5, 6, 7])], max_n=5)
  with pytest.raises(ValueError, match=r"\bn=6\b.*max_n=5"):
    index.count([1, 2, 3, 4, 5, 6])
  with pytest.raises(ValueError, match=r"\bn=6\b.*max_n=5"):
    index.counts(np.ones((3, 6), dtype=np.int64))
  with pytest.raises(ValueError, match=r"\bn=6\b"):
    index.cond_prob([1, 2, 3, 4, 5], 6)
  with pytest.raises(ValueError, match=r"\bn=6\b"):
    index.total(6)
  with pytest.raises(ValueError, match=r"\bn=6\b"):
    ngram.position_ngram_stats(index, np.ones((2, 8), dtype=np.int64), 6)


def test_input_errors_name_the_argument():
  index = ngram.NgramIndex.build([np.array([1, 2, 3])], max_n=2)
  with pytest.raises(ValueError, match="ngram.*non-empty"):
    index.count([])
  with pytest.raises(ValueError, match="ngrams_KxN.*non-empty"):
    index.counts(np.zeros((4, 0), dtype=np.int64))
  with pytest.raises(ValueError, match="ngram.*non-negative"):
    index.count([1, -2])
  with pytest.raises(ValueError, match="tokens_BxS.*non-negative"):
    ngram.position_counts(index, np.array([[1, -1]]), 1)
  for empty in ([], [np.array([], dtype=np.int64)], np.zeros((0, 4), dtype=np.int32)):
    with pytest.raises(ValueError, match="docs.*empty"):
      ngram.NgramIndex.build(empty, max_n=2)
  with pytest.raises(ValueError, match=r"docs\[1\].*non-negative"):
    ngram.NgramIndex.build([np.array([1, 2]), np.array([3, -4])], max_n=2)
  with pytest.raises(ValueError, match="docs.*non-negative"):
    ngram.NgramIndex.build(np.array([[1, 2], [3, -4]]), max_n=2)
  with pytest.raises(ValueError, match="docs.*integers"):
    ngram.NgramIndex.build([np.array([1.0, 2.0])], max_n=2)
  with pytest.raises(ValueError, match="max_n"):
    ngram.NgramIndex.build([np.array([1, 2])], max_n=0)
  with pytest.raises(ValueError, match="vocab_size"):
    ngram.NgramIndex.build([np.array([1, 2])], max_n=2, vocab_size=2)


def test_save_and_load_round_trip(tmp_path):
  rng = np.random.default_rng(6)
  docs = _random_docs(rng, num_docs=10, vocab=5, max_len=20)
  for doc_index in (True, False):
    index = ngram.NgramIndex.build(docs, max_n=4, doc_index=doc_index)
    path = str(tmp_path / f"index_{doc_index}.npz")
    index.save(path)
    loaded = ngram.NgramIndex.load(path)
    assert loaded.has_doc_index == doc_index
    _assert_counts_match(loaded, docs, 4)
    if doc_index:
      assert loaded.docs_with_both((0,), (1, 2)) == index.docs_with_both((0,), (1, 2))
