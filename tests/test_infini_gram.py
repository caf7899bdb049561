"""The infini-gram backend against the exact index: equal counts, probabilities, documents and
correlations on small corpora; the built index is reused; each bad index gives its one line."""

import os
import shutil

import ml_collections
import numpy as np
import pytest

pytest.importorskip("infini_gram.engine")

from memjax import config as config_lib
from memjax.estimators import infini_gram as ig
from memjax.estimators import ngram
from memjax.experiments import distributional


def _corpus(vocab, num_docs, seed=0):
  rng = np.random.default_rng(seed)
  # few distinct tokens, so that n-grams repeat; an empty document and one shorter than n too
  docs = [rng.integers(0, min(vocab, 6), rng.integers(0, 30)) for _ in range(num_docs)]
  docs[0] = np.zeros(0, np.int64)
  docs[-1] = np.array([1, 2, 1, 2])  # the corpus ends with a context: "continuation" must see it
  if vocab > 6:
    docs[1] = np.array([vocab - 1, 3, vocab - 1])  # the largest id, just below the separator
  return docs


def _queries(exact, vocab, n, rng):
  seen = exact.ngrams(n)[0]
  return np.concatenate([seen, rng.integers(0, min(vocab, 6), (100, n)),
                         np.full((1, n), vocab - 1), np.full((1, n), vocab + 3)])


@pytest.mark.parametrize("vocab", [7, 255, 65535])  # u8, u8's largest, u16's largest
def test_counts_probs_and_documents_equal_the_exact_index(tmp_path, vocab):
  docs = _corpus(vocab, 60)
  exact = ngram.NgramIndex.build(docs, max_n=5, vocab_size=vocab)
  counts = ngram.corpus_counts(docs, 5, vocab, "infini_gram", cache_dir=str(tmp_path))
  assert counts.info.token_dtype == ("u8" if vocab <= 255 else "u16")
  assert counts.total(1) == exact.total(1) and counts.num_docs == len(docs)
  rng = np.random.default_rng(1)
  for n in range(1, 6):
    rows = _queries(exact, vocab, n, rng)
    np.testing.assert_array_equal(counts.counts(rows), exact.counts(rows))
    for den in ("context", "continuation"):
      np.testing.assert_array_equal(counts.cond_probs(rows[:, :-1], rows[:, -1], den),
                                    exact.cond_probs(rows[:, :-1], rows[:, -1], den))
  for a, b in [([1], [2]), ([1, 2], [2, 1]), ([3], [4, 5]), ([1, 2, 1, 2], [0])]:
    np.testing.assert_array_equal(counts.docs_with(a), exact.docs_with(a))
    assert counts.docs_with_both(a, b) == exact.docs_with_both(a, b)
  # memjax's batched suffix-array search gives what the engine's own count gives
  engine = ig.InfiniGramCounts(counts.index_dir, vocab, queries="engine")
  rows = _queries(exact, vocab, 3, rng)
  np.testing.assert_array_equal(engine.counts(rows), counts.counts(rows))
  np.testing.assert_array_equal(engine.cond_probs(rows[:, :-1], rows[:, -1], "continuation"),
                                counts.cond_probs(rows[:, :-1], rows[:, -1], "continuation"))


def test_spearman_and_kendall_rows_are_identical(tmp_path):
  docs = np.random.default_rng(2).integers(0, 12, (80, 16))
  exact = ngram.NgramIndex.build(docs, max_n=4, vocab_size=12, doc_index=False)
  counts = ngram.corpus_counts(docs, 4, 12, "infini_gram", cache_dir=str(tmp_path))
  tokens_BxS = np.concatenate([docs[:20], np.random.default_rng(3).integers(0, 12, (20, 16))])
  logp_BxS = np.random.default_rng(4).normal(-3, 1, tokens_BxS.shape)
  for den in ("context", "continuation"):
    rows_exact = distributional.correlation_rows(logp_BxS, tokens_BxS, exact, (1, 2, 3, 4), 2, den)
    rows_ig = distributional.correlation_rows(logp_BxS, tokens_BxS, counts, (1, 2, 3, 4), 2, den)
    assert rows_ig == rows_exact
  np.testing.assert_array_equal(ngram.position_counts(counts, tokens_BxS, 3),
                                ngram.position_counts(exact, tokens_BxS, 3))


def test_shards_of_one_index_count_as_one_corpus(tmp_path):
  docs = _corpus(9, 40, seed=5)
  halves = (docs[:20], docs[20:])
  joined = tmp_path / "joined"
  joined.mkdir()
  for s, part in enumerate(halves):
    built = ig.build_index(*ngram.flatten_corpus(part), 9, str(tmp_path / f"part{s}"))
    for kind in ("tokenized", "table", "offset"):
      os.rename(os.path.join(built, f"{kind}.0"), joined / f"{kind}.{s}")
  counts = ig.InfiniGramCounts(str(joined), 9)
  exact = ngram.NgramIndex.build(docs, max_n=3, vocab_size=9)
  rows = exact.ngrams(3)[0]
  np.testing.assert_array_equal(counts.counts(rows), exact.counts(rows))
  np.testing.assert_array_equal(counts.cond_probs(rows[:, :-1], rows[:, -1], "continuation"),
                                exact.cond_probs(rows[:, :-1], rows[:, -1], "continuation"))
  np.testing.assert_array_equal(counts.docs_with([1, 2]), exact.docs_with([1, 2]))


def test_the_built_index_is_reused(tmp_path):
  tokens_T, lengths_D = ngram.flatten_corpus(_corpus(7, 10))
  first, built = ig.cached_index(tokens_T, lengths_D, 7, str(tmp_path))
  mtime = os.stat(os.path.join(first, "table.0")).st_mtime_ns
  again, built_again = ig.cached_index(tokens_T, lengths_D, 7, str(tmp_path))
  assert built and not built_again and again == first
  assert os.stat(os.path.join(first, "table.0")).st_mtime_ns == mtime
  other, _ = ig.cached_index(tokens_T[::-1].copy(), lengths_D, 7, str(tmp_path))
  assert other != first  # other tokens, another index
  assert sorted(os.listdir(tmp_path / "infini_gram")) == sorted(
      [os.path.basename(first), os.path.basename(other)])  # no temporary directory left


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
  def fail(*args):
    raise ig.IndexFormatError("the infini-gram builder failed (exit 1): test")
  monkeypatch.setattr(ig, "_run_builder", fail)
  with pytest.raises(ig.IndexFormatError, match="builder failed"):
    ig.cached_index(*ngram.flatten_corpus(_corpus(7, 5)), 7, str(tmp_path))
  assert os.listdir(tmp_path / "infini_gram") == []


def test_a_build_that_another_process_finished_first_keeps_that_index(tmp_path):
  # Two processes of a multi-process run build the same corpus's index at once: the second
  # rename finds the first's index in place and keeps it.
  tokens_T, lengths_D = ngram.flatten_corpus(_corpus(7, 20))
  first = ig.build_index(tokens_T, lengths_D, 7, str(tmp_path / "index"))
  with open(os.path.join(first, ig.MANIFEST)) as f:
    manifest = f.read()
  assert ig.build_index(tokens_T, lengths_D, 7, first) == first
  with open(os.path.join(first, ig.MANIFEST)) as f:
    assert f.read() == manifest
  assert os.listdir(tmp_path) == ["index"]  # the second build's temporary directory is gone


@pytest.fixture(scope="module")
def good_index(tmp_path_factory):
  root = tmp_path_factory.mktemp("good")
  return ig.build_index(*ngram.flatten_corpus(_corpus(300, 30)), 300, str(root / "index"),
                        tokenizer="memjax bpe, V=300")


def _damaged(good_index, tmp_path, change):
  bad = tmp_path / "bad"
  shutil.copytree(good_index, bad)
  change(bad)
  return str(bad)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 3)


@pytest.mark.parametrize("change, message", [
    (lambda d: os.remove(d / "table.0"), "shard 0 has no table.0 .a damaged or half-written"),
    (lambda d: _truncate(d / "table.0"), "table.0 .* is not the suffix array of tokenized.0"),
    (lambda d: (d / "table.0.tmp").write_bytes(b""), "stray file 'table.0.tmp'"),
    (lambda d: os.rename(d / "table.0", d / "table"), "unnumbered 'table': .*another infini-gram"),
    (lambda d: [os.rename(d / f"{k}.0", d / f"{k}.1") for k in ("tokenized", "table", "offset")],
     r"shards \[1\] are not numbered 0..0"),
    (lambda d: (d / "offset.0").write_bytes(np.array([0, 5], np.uint64).tobytes()),
     "offset.0 does not point at the document separators"),
    (lambda d: (d / ig.MANIFEST).write_text('{"format": "infini_gram_v5", "token_dtype": "u16"}'),
     "says format 'infini_gram_v5'"),
    (lambda d: (d / ig.MANIFEST).write_text("{not json"), "memjax_ngram.json is unreadable"),
])
def test_a_damaged_or_foreign_index_names_its_problem(good_index, tmp_path, change, message):
  bad = _damaged(good_index, tmp_path, change)
  with pytest.raises(ig.IndexFormatError, match=message):
    ig.InfiniGramCounts(bad, 300)


def test_an_index_of_another_tokenizer_or_vocabulary_is_refused(good_index, tmp_path):
  with pytest.raises(ig.IndexFormatError, match="built with tokenizer 'memjax bpe, V=300', the "
                                                "model uses 'tokenizer.json sha256:ab'"):
    ig.InfiniGramCounts(good_index, 300, tokenizer="tokenizer.json sha256:ab")
  with pytest.raises(ig.IndexFormatError, match="a vocabulary of 70,000 tokens does not fit the "
                                                "index's u16 ids"):
    ig.InfiniGramCounts(good_index, 70000)
  with pytest.raises(ig.IndexFormatError, match="built for a vocabulary of 300 tokens"):
    ig.InfiniGramCounts(good_index, 200)
  no_manifest = _damaged(good_index, tmp_path, lambda d: os.remove(d / ig.MANIFEST))
  with pytest.raises(ig.IndexFormatError, match="holds token id 299, outside the model's "
                                                "vocabulary of 10"):
    ig.InfiniGramCounts(no_manifest, 10)


def test_what_the_engine_cannot_answer_is_refused(good_index):
  counts = ig.InfiniGramCounts(good_index, 300)
  with pytest.raises(ValueError, match="num_distinct: the infini-gram backend cannot enumerate"):
    counts.num_distinct(2)
  with pytest.raises(ValueError, match="total: the infini-gram backend gives total.1. only"):
    counts.total(2)
  with pytest.raises(ig.IndexFormatError, match="vocab_size: memjax builds u8/u16 indexes"):
    ig.build_index(np.array([1, 2]), [2], 70000, "/tmp/never")


def _ngram_config(backend, index_dir=""):
  config = ml_collections.ConfigDict()
  config.ngram = ml_collections.ConfigDict({"backend": backend, "index_dir": index_dir})
  return config


def test_config_errors_name_the_field(good_index, tmp_path):
  assert config_lib.ngram_settings(ml_collections.ConfigDict(), 300) == config_lib.NgramSettings()
  assert config_lib.ngram_settings(_ngram_config("infini_gram", good_index), 300).index_dir
  cases = [
      (_ngram_config("suffix"), "config.ngram.backend: must be one of exact, infini_gram, got "
                                "'suffix'"),
      (_ngram_config("exact", good_index), "config.ngram.index_dir: ngram.backend='exact' counts "
                                           "in memory and reads no index"),
      (_ngram_config("infini_gram", str(tmp_path / "none")), "config.ngram.index_dir: .*none: no "
                                                              "such directory"),
      (_ngram_config("infini_gram", str(tmp_path)), "config.ngram.index_dir: .*no infini-gram "
                                                    "index here"),
  ]
  for config, message in cases:
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.ngram_settings(config, 300)
  with pytest.raises(config_lib.ConfigError, match="config.ngram.index_dir: memjax builds u8/u16"):
    config_lib.ngram_settings(_ngram_config("infini_gram"), 70000)


def test_an_unwritable_cache_is_a_config_error(tmp_path):
  from memjax.experiments import dynamics as dx
  blocker = tmp_path / "a_file"
  blocker.write_text("")  # a cache "directory" that is a file: nothing can be made under it
  settings = distributional.DistributionalSettings(
      data=dx.DataSettings("synthetic", (), "text", (), 0, "bytes", 8, 4, 4, 0, 0, str(blocker)),
      num_heads=1, layers=1, d_model=(8,), dataset_sizes=(4,), train=None, orders=(2,), max_n=3,
      eval_samples=1, context=0, batch_size=1, denominator="context", quiet=True,
      ngram=config_lib.NgramSettings("infini_gram", ""))
  with pytest.raises(config_lib.ConfigError, match="config.data.cache_dir: cannot write the "
                                                   "infini-gram index under"):
    dx.ngram_counts(settings, np.ones((4, 4), np.int32), 8, str(tmp_path))
