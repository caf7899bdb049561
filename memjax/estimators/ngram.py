"""Exact n-gram counts of a training corpus, and distributional memorization statistics.

Wang et al. 2024 ("Generalization v.s. Memorization: Tracing Language Models' Capabilities Back
to Pretraining Data", arXiv 2407.14985) relate a model's output probabilities to n-gram
statistics of its pretraining corpus: the Spearman rank correlation between the model's
probabilities and the corpus n-gram probabilities is *distributional memorization*, and the
Kendall tau distance (1 - tau) / 2 is *distributional generalization*. Both are computed on the
same (model, n-gram) pairs, as the authors' analysis code does (a-antoniades/llm-corpus-search,
analysis/plot_mem.py: `kendall_tau_d` on the pairs of the Spearman). The same counts feed the
decoding-dynamics figure of Chen, Han, Miyao 2024 (corpus frequency of the n-gram ending at each
generated position).

Counting method (numpy only, no Python loop over tokens). The corpus is flattened to one int32
token array with document lengths; an n-gram starting at position t is counted only when
t + n <= end of its document, so n-grams never cross document boundaries. Orders are counted
one after another, each n-gram named by a dense integer id:

  order 1:  key(t) = token[t]
  order n:  key(t) = id_{n-1}(t) * V + token[t + n - 1]     (int64, < U_{n-1} * V)

where id_{n-1}(t) is the rank of the (n-1)-gram starting at t among the sorted distinct
(n-1)-grams. A stable argsort of the keys gives the distinct n-grams (`sorted_keys[n-1]`), their
counts, and id_n(t) for the next order. Because ranks keep lexicographic order, the keys sort
exactly as the n-gram rows would under lexicographic order, and any V works (GPT-2's 50257,
where V**5 does not fit 64 bits) as long as U_{n-1} * V < 2**63 (true below ~1e14 tokens). A
query n-gram is looked up the same way, one order at a time, with searchsorted on
`sorted_keys[k-1]` (k = 1..n): an unseen prefix keeps the whole n-gram unseen.

Because the argsort is stable and positions are in document order, positions of one n-gram come
out sorted by document; dropping repeats gives, per distinct n-gram, the sorted list of documents
that contain it (a CSR posting list, `doc_ids[n-1]` / `doc_offsets[n-1]`), which answers
`docs_with_both` exactly by intersecting two lists. Posting lists cost up to one int32 per token
per order; build with `doc_index=False` to skip them.

Stored per order n: keys int64 and counts int32 for the U_n distinct n-grams; with doc_index,
doc ids int32 (at most one per n-gram position) and offsets int32 (U_n + 1). Counts, ids and
offsets switch to int64 above 2**31 - 1 tokens.

Measured build time and memory (this 2-core CPU machine, numpy 2.4, max_n=5, i.i.d. uniform
random tokens with V=50257 in 1,000 documents; the worst case, since nearly every 2- to 5-gram
is distinct, where real text repeats far more and needs less). Other jobs were loading both cores
(load average ~7) during the runs, so wall time was about twice the process CPU time; the build
is single-threaded numpy and dominated by the five stable argsorts of int64 keys.

  tokens   doc_index   wall    CPU     peak RSS (incl. 0.1-0.2 GiB corpus)   index kept
  10M      yes         26 s    14 s    1.40 GiB                              0.78 GiB
  10M      no          32 s    14 s    1.09 GiB                              0.45 GiB
  30M      yes         122 s   59 s    3.95 GiB                              2.32 GiB

Queries: 100k 5-gram counts take ~0.2 s CPU on the 10M index; per-position statistics of a
[1000, 64] token array (n=5) ~1 s. Memory is linear in the tokens (~130 bytes a token at peak
with doc_index, ~105 without) and time slightly more than linear (sorting). Extrapolated, not
measured: 100M such tokens would peak at about 13 GiB with doc_index (about 11 GiB without),
keep an index of about 8 GiB, and take about 3.5-4 minutes of CPU (longer wall time on a busy
machine), so it fits a 24 GiB, 2-core machine. On real text (byte-level Python source), measured
at 10M and 100M tokens against the infini-gram backend (`infini_gram.py`): docs/ngram.md.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np
import scipy.stats

# int32 ids and posting offsets are used while they fit; above this, int64.
_INT32_MAX = np.iinfo(np.int32).max


# ----------------------------------------------------------------------------- corpus input


def _validate_token_array(tokens: np.ndarray, name: str) -> np.ndarray:
  """Checks integer dtype and non-negativity; returns the array unchanged."""
  if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{name}: tokens must be integers, got dtype {tokens.dtype}")
  if tokens.size and tokens.min() < 0:
    raise ValueError(f"{name}: tokens must be non-negative, got {int(tokens.min())}")
  if tokens.size and tokens.max() > _INT32_MAX:
    raise ValueError(f"{name}: token ids must fit int32, got {int(tokens.max())}")
  return tokens


def flatten_corpus(docs) -> tuple[np.ndarray, np.ndarray]:
  """A list of 1-D token arrays or a [num_docs, seq_len] array -> (tokens_T int32, lengths_D)."""
  if isinstance(docs, np.ndarray):
    if docs.ndim != 2:
      raise ValueError(f"docs: an array corpus must be 2-D [num_docs, seq_len], got shape "
                       f"{docs.shape}; pass a list [tokens] for a single document")
    tokens_DxS = _validate_token_array(docs, "docs")
    lengths_D = np.full(docs.shape[0], docs.shape[1], dtype=np.int64)
    tokens_T = tokens_DxS.astype(np.int32, copy=False).reshape(-1)
  else:
    arrays = [np.asarray(d) for d in docs]
    for i, a in enumerate(arrays):
      if a.ndim != 1:
        raise ValueError(f"docs: document {i} must be a 1-D token array, got shape {a.shape}")
      _validate_token_array(a, f"docs[{i}]")
    lengths_D = np.array([a.size for a in arrays], dtype=np.int64)
    tokens_T = (np.concatenate(arrays).astype(np.int32, copy=False) if arrays
                else np.zeros(0, np.int32))
  if tokens_T.size == 0:
    raise ValueError("docs: the corpus is empty (no documents or no tokens)")
  return tokens_T, lengths_D


# ----------------------------------------------------------------------------- counting


def _sorted_groups(keys_P: np.ndarray):
  """Stable sort -> (order_P, sorted_P, is_new_P, group_starts_U); a group = a run of equal keys."""
  small = keys_P.size and keys_P.max() < 2**16
  # numpy's stable argsort is a linear radix sort for 16-bit keys (unigrams of V <= 65536)
  order_P = np.argsort(keys_P.astype(np.uint16) if small else keys_P, kind="stable")
  sorted_P = keys_P[order_P]
  is_new_P = np.empty(sorted_P.size, dtype=bool)
  is_new_P[:1] = True
  np.not_equal(sorted_P[1:], sorted_P[:-1], out=is_new_P[1:])
  group_starts_U = np.flatnonzero(is_new_P)
  return order_P, sorted_P, is_new_P, group_starts_U


def _posting_lists(docs_sorted_P, is_new_P, group_starts_U):
  """Distinct documents per group (sorted, since the sort was stable) as CSR (ids, offsets)."""
  is_posting_P = is_new_P.copy()
  np.logical_or(is_posting_P[1:], docs_sorted_P[1:] != docs_sorted_P[:-1], out=is_posting_P[1:])
  doc_ids = docs_sorted_P[is_posting_P]
  # posting index of each group's first position = postings before it
  posting_rank_P = np.cumsum(is_posting_P, dtype=np.int64) - 1
  offset_dtype = np.int32 if doc_ids.size <= _INT32_MAX else np.int64
  doc_offsets = np.empty(group_starts_U.size + 1, dtype=offset_dtype)
  doc_offsets[:-1] = posting_rank_P[group_starts_U]
  doc_offsets[-1] = doc_ids.size
  return doc_ids, doc_offsets


def _count_orders(tokens_T, lengths_D, vocab_size, max_n, doc_index):
  """All orders 1..max_n: per order sorted keys, counts and (optionally) posting lists."""
  num_tokens = tokens_T.size
  id_dtype = np.int32 if num_tokens <= _INT32_MAX else np.int64
  ends_D = np.cumsum(lengths_D)
  # tokens left in the document from t on, inclusive: an n-gram starts at t iff remaining >= n
  remaining_T = (np.repeat(ends_D, lengths_D) - np.arange(num_tokens)).astype(id_dtype)
  doc_of_T = (np.repeat(np.arange(lengths_D.size, dtype=np.int32), lengths_D)
              if doc_index else None)
  keys, counts, doc_ids, doc_offsets = [], [], [], []
  id_T = None  # id of the (n-1)-gram starting at each position
  for n in range(1, max_n + 1):
    starts_P = np.flatnonzero(remaining_T >= n)
    if n == 1:
      keys_P = tokens_T[starts_P].astype(np.int64)
    else:
      prefix_P = id_T[starts_P].astype(np.int64)
      if keys[-1].size * vocab_size > 2**63 - 1:
        raise ValueError(f"max_n: order {n} keys would overflow int64 (vocab_size={vocab_size})")
      keys_P = prefix_P * vocab_size + tokens_T[starts_P + (n - 1)]
      del prefix_P
    order_P, sorted_P, is_new_P, group_starts_U = _sorted_groups(keys_P)
    del keys_P
    keys.append(sorted_P[group_starts_U])
    counts.append(np.diff(np.append(group_starts_U, sorted_P.size)).astype(id_dtype))
    del sorted_P
    positions_P = starts_P[order_P]
    del order_P, starts_P
    if doc_index:
      ids, offsets = _posting_lists(doc_of_T[positions_P], is_new_P, group_starts_U)
      doc_ids.append(ids)
      doc_offsets.append(offsets)
    if n < max_n:
      group_P = np.cumsum(is_new_P, dtype=id_dtype) - 1
      id_T = np.full(num_tokens, -1, dtype=id_dtype)
      id_T[positions_P] = group_P
      del group_P
    del positions_P, is_new_P, group_starts_U
  return keys, counts, doc_ids, doc_offsets


# ----------------------------------------------------------------------------- queries


def _as_ngram_rows(ngrams, name: str) -> np.ndarray:
  """A [K, n] (or 1-D, one n-gram) int array of query n-grams, validated."""
  rows = np.asarray(ngrams)
  if rows.ndim == 1:
    rows = rows[None, :]
  if rows.ndim != 2:
    raise ValueError(f"{name}: expected a [K, n] array of n-grams, got shape {rows.shape}")
  if rows.shape[1] == 0:
    raise ValueError(f"{name}: n-grams must be non-empty (n >= 1), got n=0")
  if rows.size and not np.issubdtype(rows.dtype, np.integer):
    raise ValueError(f"{name}: tokens must be integers, got dtype {rows.dtype}")
  if rows.size and rows.min() < 0:
    raise ValueError(f"{name}: tokens must be non-negative, got {int(rows.min())}")
  return rows.astype(np.int64, copy=False)


def _find(sorted_keys_U: np.ndarray, query_K: np.ndarray, valid_K: np.ndarray) -> np.ndarray:
  """Index of each valid query in the sorted keys, -1 where absent or not valid."""
  if sorted_keys_U.size == 0:
    return np.full(query_K.shape, -1, dtype=np.int64)
  idx_K = np.searchsorted(sorted_keys_U, query_K)
  idx_K = np.minimum(idx_K, sorted_keys_U.size - 1)
  found_K = valid_K & (sorted_keys_U[idx_K] == query_K)
  return np.where(found_K, idx_K, -1)


def cond_prob_rows(contexts_KxC, tokens_K, denominator: str) -> np.ndarray:
  """The n-gram rows [K, C + 1] (context, then token) of a `cond_probs` query, checked."""
  if denominator not in ("context", "continuation"):
    raise ValueError(f"denominator: must be 'context' or 'continuation', got {denominator!r}")
  tokens_K = np.asarray(tokens_K).reshape(-1)
  contexts_KxC = np.asarray(contexts_KxC)
  if contexts_KxC.ndim != 2 or contexts_KxC.shape[0] != tokens_K.size:
    raise ValueError(f"contexts_KxC: expected shape [{tokens_K.size}, C], "
                     f"got {contexts_KxC.shape}")
  return _as_ngram_rows(
      np.concatenate([contexts_KxC.astype(np.int64), tokens_K.astype(np.int64)[:, None]], 1),
      "contexts_KxC/tokens_K")


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: no element-wise ==
class NgramIndex:
  """Exact counts of all n-grams (n = 1..max_n) of a corpus, with per-n-gram document lists.

  sorted_keys[n-1]: sorted int64 keys of the distinct n-grams (see module docstring);
  key_counts[n-1]: their counts; doc_ids[n-1] / doc_offsets[n-1]: CSR lists of the documents
  containing each (both tuples are empty when built with doc_index=False).
  """
  vocab_size: int
  max_n: int
  num_docs: int
  num_tokens: int
  sorted_keys: tuple
  key_counts: tuple
  doc_ids: tuple
  doc_offsets: tuple

  # --------------------------------------------------------------------------- building

  @classmethod
  def build(cls, docs, max_n: int = 5, vocab_size: int | None = None,
            doc_index: bool = True) -> "NgramIndex":
    """Counts n = 1..max_n of `docs` (a list of 1-D token arrays or a [num_docs, seq_len] array)."""
    tokens_T, lengths_D = flatten_corpus(docs)
    return cls.build_from_flat(tokens_T, lengths_D, max_n, vocab_size, doc_index)

  @classmethod
  def build_from_flat(cls, tokens_T, lengths_D, max_n: int = 5, vocab_size: int | None = None,
                      doc_index: bool = True) -> "NgramIndex":
    """As build, for a concatenated corpus: documents are consecutive runs of tokens_T."""
    tokens_T = _validate_token_array(np.asarray(tokens_T).reshape(-1), "tokens_T")
    lengths_D = np.asarray(lengths_D, dtype=np.int64).reshape(-1)
    if tokens_T.size == 0:
      raise ValueError("tokens_T: the corpus is empty (no tokens)")
    if lengths_D.size and lengths_D.min() < 0:
      raise ValueError("lengths_D: document lengths must be non-negative")
    if lengths_D.sum() != tokens_T.size:
      raise ValueError(f"lengths_D: lengths sum to {int(lengths_D.sum())}, but tokens_T has "
                       f"{tokens_T.size} tokens")
    if not isinstance(max_n, (int, np.integer)) or max_n < 1:
      raise ValueError(f"max_n: must be an integer >= 1, got {max_n!r}")
    max_token = int(tokens_T.max())
    if vocab_size is None:
      vocab_size = max_token + 1
    elif vocab_size <= max_token:
      raise ValueError(f"vocab_size: {vocab_size} is not larger than the largest token {max_token}")
    tokens_T = tokens_T.astype(np.int32, copy=False)
    keys, counts, doc_ids, doc_offsets = _count_orders(
        tokens_T, lengths_D, int(vocab_size), int(max_n), doc_index)
    return cls(vocab_size=int(vocab_size), max_n=int(max_n), num_docs=int(lengths_D.size),
               num_tokens=int(tokens_T.size), sorted_keys=tuple(keys), key_counts=tuple(counts),
               doc_ids=tuple(doc_ids), doc_offsets=tuple(doc_offsets))

  @property
  def has_doc_index(self) -> bool:
    return len(self.doc_ids) == self.max_n

  # --------------------------------------------------------------------------- lookups

  def check_order(self, n: int) -> None:
    """Refuses an order this index cannot answer (n < 1, or above the counted max_n)."""
    if n < 1:
      raise ValueError(f"n: n-grams must be non-empty (n >= 1), got n={n}")
    if n > self.max_n:
      raise ValueError(f"n={n} is larger than the counted order max_n={self.max_n}; "
                       f"rebuild the index with max_n >= {n}")

  _check_order = check_order

  def _prefix_ids(self, rows_KxN: np.ndarray) -> list[np.ndarray]:
    """ids[k][i] = index of the (k+1)-gram prefix of row i in sorted_keys[k], or -1 if unseen."""
    self._check_order(rows_KxN.shape[1])
    in_vocab_KxN = rows_KxN < self.vocab_size  # larger ids would alias other keys
    ids = [_find(self.sorted_keys[0], rows_KxN[:, 0], in_vocab_KxN[:, 0])]
    for k in range(1, rows_KxN.shape[1]):
      valid_K = (ids[-1] >= 0) & in_vocab_KxN[:, k]
      query_K = np.where(valid_K, ids[-1] * self.vocab_size + rows_KxN[:, k], -1)
      ids.append(_find(self.sorted_keys[k], query_K, valid_K))
    return ids

  def _counts_of_ids(self, n: int, ids_K: np.ndarray) -> np.ndarray:
    counts_U = self.key_counts[n - 1]
    if counts_U.size == 0:
      return np.zeros(ids_K.shape, dtype=np.int64)
    return np.where(ids_K >= 0, counts_U[np.maximum(ids_K, 0)], 0).astype(np.int64)

  def counts(self, ngrams_KxN) -> np.ndarray:
    """Corpus counts of K n-grams of one length n, int64 [K]; unseen (or out-of-vocabulary) -> 0."""
    rows_KxN = _as_ngram_rows(ngrams_KxN, "ngrams_KxN")
    ids = self._prefix_ids(rows_KxN)
    return self._counts_of_ids(rows_KxN.shape[1], ids[-1])

  def count(self, ngram: Sequence[int]) -> int:
    """Corpus count of one n-gram (a sequence of token ids)."""
    return int(self.counts(_as_ngram_rows(np.asarray(ngram).reshape(1, -1), "ngram"))[0])

  def total(self, n: int) -> int:
    """Number of n-gram occurrences (positions where an n-gram fits inside its document)."""
    self._check_order(n)
    return int(self.key_counts[n - 1].sum(dtype=np.int64))

  def num_distinct(self, n: int) -> int:
    """Number of distinct n-grams."""
    self._check_order(n)
    return int(self.sorted_keys[n - 1].size)

  def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """All distinct n-grams in lexicographic order, int64 [U, n], and their counts, int64 [U]."""
    self._check_order(n)
    rows_UxN = np.empty((self.sorted_keys[n - 1].size, n), dtype=np.int64)
    ids_U = np.arange(self.sorted_keys[n - 1].size)
    for k in range(n, 1, -1):  # peel off the last token: key = prefix_id * V + token
      key_U = self.sorted_keys[k - 1][ids_U]
      rows_UxN[:, k - 1] = key_U % self.vocab_size
      ids_U = key_U // self.vocab_size
    rows_UxN[:, 0] = self.sorted_keys[0][ids_U]
    return rows_UxN, self.key_counts[n - 1].astype(np.int64)

  # --------------------------------------------------------------------------- probabilities

  def _continuation_counts(self, n: int) -> np.ndarray:
    """For each distinct (n-1)-gram: occurrences followed by a token in the same document."""
    prefix_U = self.sorted_keys[n - 1] // self.vocab_size
    # minlength >= 1: with no (n-1)-gram at all (every document shorter) the lookups of id -1
    # still index a (zero) count, and the probability comes out 0/0 = nan as for "context".
    return np.bincount(prefix_U, weights=self.key_counts[n - 1],
                       minlength=max(1, self.sorted_keys[n - 2].size)).astype(np.int64)

  def cond_probs(self, contexts_KxC, tokens_K, denominator: str = "context") -> np.ndarray:
    """P(token | context) = count(context + token) / count(context) for K rows, float64 [K].

    Context length C = n - 1 (C = 0 gives unigram frequencies count(token) / total(1)).
    denominator="context" divides by every occurrence of the context (the plain n-gram estimate;
    an occurrence at the very end of a document has no next token, so probabilities over the
    vocabulary can sum to slightly less than 1); "continuation" divides by the occurrences that
    are followed by a token, a proper distribution. An unseen context gives 0/0 = nan.
    """
    rows_KxN = cond_prob_rows(contexts_KxC, tokens_K, denominator)
    n = rows_KxN.shape[1]
    ids = self._prefix_ids(rows_KxN)
    numer_K = self._counts_of_ids(n, ids[-1]).astype(np.float64)
    if n == 1:
      denom_K = np.full(numer_K.shape, float(self.total(1)))
    elif denominator == "context":
      denom_K = self._counts_of_ids(n - 1, ids[-2]).astype(np.float64)
    else:
      follow_U = self._continuation_counts(n)
      denom_K = np.where(ids[-2] >= 0, follow_U[np.maximum(ids[-2], 0)], 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(denom_K > 0, numer_K / denom_K, np.nan)

  def cond_prob(self, context: Sequence[int], token: int, denominator: str = "context") -> float:
    """P(token | context) for one context of n - 1 tokens (see cond_probs); nan if 0/0."""
    context_1xC = np.asarray(context, dtype=np.int64).reshape(1, -1)
    return float(self.cond_probs(context_1xC, [token], denominator)[0])

  # --------------------------------------------------------------------------- documents

  def _docs_containing(self, ngram: Sequence[int], name: str) -> np.ndarray:
    if not self.has_doc_index:
      raise ValueError(f"{name}: this index was built with doc_index=False; rebuild with "
                       "doc_index=True to query documents")
    rows_1xN = _as_ngram_rows(np.asarray(ngram).reshape(1, -1), name)
    n = rows_1xN.shape[1]
    gid = int(self._prefix_ids(rows_1xN)[-1][0])
    if gid < 0:
      return np.zeros(0, dtype=np.int32)
    offsets = self.doc_offsets[n - 1]
    return self.doc_ids[n - 1][offsets[gid]:offsets[gid + 1]]

  def docs_with(self, ngram: Sequence[int]) -> np.ndarray:
    """Sorted ids of the documents that contain the n-gram."""
    return self._docs_containing(ngram, "ngram").copy()

  def doc_count(self, ngram: Sequence[int]) -> int:
    """Number of documents that contain the n-gram."""
    return int(self._docs_containing(ngram, "ngram").size)

  def docs_with_both(self, ngram_a: Sequence[int], ngram_b: Sequence[int]) -> int:
    """Number of documents containing both n-grams (which may differ in length)."""
    docs_a = self._docs_containing(ngram_a, "ngram_a")
    docs_b = self._docs_containing(ngram_b, "ngram_b")
    return int(np.intersect1d(docs_a, docs_b, assume_unique=True).size)

  # --------------------------------------------------------------------------- persistence

  def save(self, path: str) -> None:
    """Writes the index to one .npz file (no pickles)."""
    arrays = {"meta": np.array([self.vocab_size, self.max_n, self.num_docs, self.num_tokens,
                                int(self.has_doc_index)], dtype=np.int64)}
    for i in range(self.max_n):
      arrays[f"keys_{i + 1}"] = self.sorted_keys[i]
      arrays[f"counts_{i + 1}"] = self.key_counts[i]
      if self.has_doc_index:
        arrays[f"doc_ids_{i + 1}"] = self.doc_ids[i]
        arrays[f"doc_offsets_{i + 1}"] = self.doc_offsets[i]
    np.savez(path, **arrays)

  @classmethod
  def load(cls, path: str) -> "NgramIndex":
    """Reads an index written by save."""
    with np.load(path, allow_pickle=False) as f:
      vocab_size, max_n, num_docs, num_tokens, has_docs = (int(v) for v in f["meta"])
      orders = range(1, max_n + 1)
      return cls(vocab_size=vocab_size, max_n=max_n, num_docs=num_docs, num_tokens=num_tokens,
                 sorted_keys=tuple(f[f"keys_{n}"] for n in orders),
                 key_counts=tuple(f[f"counts_{n}"] for n in orders),
                 doc_ids=tuple(f[f"doc_ids_{n}"] for n in orders) if has_docs else (),
                 doc_offsets=tuple(f[f"doc_offsets_{n}"] for n in orders) if has_docs else ())


# ----------------------------------------------------------------------------- backends

BACKENDS = ("exact", "infini_gram")


def corpus_counts(docs, max_n: int, vocab_size: int, backend: str = "exact", index_dir: str = "",
                  cache_dir: str = "", tokenizer: str = ""):
  """The n-gram counts of a corpus through one backend, both with NgramIndex's query interface
  (counts, cond_probs, total(1), docs_with_both; the position_* functions take either).

  "exact": an in-memory NgramIndex of orders 1..max_n (no document lists). "infini_gram": the
  infini-gram index at index_dir, or, with index_dir empty, one built from `docs` under
  cache_dir/infini_gram/<hash of the tokens> (reused when it exists). Counts are identical.
  """
  if backend == "exact":
    return NgramIndex.build(docs, max_n=max_n, vocab_size=vocab_size, doc_index=False)
  if backend != "infini_gram":
    raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
  from memjax.estimators import infini_gram
  if not index_dir:
    tokens_T, lengths_D = flatten_corpus(docs)
    index_dir, _ = infini_gram.cached_index(tokens_T, lengths_D, vocab_size, cache_dir, tokenizer)
  return infini_gram.InfiniGramCounts(index_dir, vocab_size, tokenizer)


# ----------------------------------------------------------------------------- along sequences


def _ngrams_ending_at(tokens_BxS: np.ndarray, n: int) -> np.ndarray:
  """[B * (S - n + 1), n] windows: row (b, t - n + 1) is tokens[b, t - n + 1 : t + 1]."""
  windows = np.lib.stride_tricks.sliding_window_view(tokens_BxS, n, axis=1)
  return windows.reshape(-1, n)


def _validate_sequences(index, tokens_BxS, n: int) -> np.ndarray:
  tokens_BxS = np.asarray(tokens_BxS)
  if tokens_BxS.ndim != 2:
    raise ValueError(f"tokens_BxS: expected a 2-D [B, S] array, got shape {tokens_BxS.shape}")
  if tokens_BxS.size and not np.issubdtype(tokens_BxS.dtype, np.integer):
    raise ValueError(f"tokens_BxS: tokens must be integers, got dtype {tokens_BxS.dtype}")
  if tokens_BxS.size and tokens_BxS.min() < 0:
    raise ValueError(f"tokens_BxS: tokens must be non-negative, got {int(tokens_BxS.min())}")
  index.check_order(n)
  return tokens_BxS.astype(np.int64, copy=False)


def position_ngram_stats(index: NgramIndex, tokens_BxS, n: int,
                         denominator: str = "context") -> tuple[np.ndarray, np.ndarray]:
  """n-gram statistics at each position of [B, S] sequences (e.g. generated continuations).

  Returns (cond_prob_BxS, count_BxS), both float64 [B, S]: at t >= n - 1, the n-gram model's
  P(tokens[t] | tokens[t-n+1 : t]) (as in NgramIndex.cond_probs) and the corpus count of the
  n-gram tokens[t-n+1 : t+1]; nan at t < n - 1 where no n-gram ends (and the probability is nan
  where the context is unseen). Counts are floats so that undefined positions can be nan; they
  are exact below 2**53.
  """
  tokens_BxS = _validate_sequences(index, tokens_BxS, n)
  b, s = tokens_BxS.shape
  prob_BxS = np.full((b, s), np.nan)
  count_BxS = np.full((b, s), np.nan)
  if s < n or b == 0:
    return prob_BxS, count_BxS
  rows_KxN = _ngrams_ending_at(tokens_BxS, n)
  prob_BxS[:, n - 1:] = index.cond_probs(rows_KxN[:, :-1], rows_KxN[:, -1],
                                         denominator).reshape(b, s - n + 1)
  count_BxS[:, n - 1:] = index.counts(rows_KxN).reshape(b, s - n + 1)
  return prob_BxS, count_BxS


def position_cond_probs(index: NgramIndex, tokens_BxS, n: int,
                        denominator: str = "context") -> np.ndarray:
  """float64 [B, S]: corpus n-gram P(tokens[t] | previous n - 1 tokens); nan where undefined."""
  return position_ngram_stats(index, tokens_BxS, n, denominator)[0]


def position_counts(index: NgramIndex, tokens_BxS, n: int) -> np.ndarray:
  """float64 [B, S]: corpus count of the n-gram ending at each position; nan at t < n - 1."""
  tokens_BxS = _validate_sequences(index, tokens_BxS, n)
  b, s = tokens_BxS.shape
  count_BxS = np.full((b, s), np.nan)
  if s >= n and b > 0:
    rows_KxN = _ngrams_ending_at(tokens_BxS, n)
    count_BxS[:, n - 1:] = index.counts(rows_KxN).reshape(b, s - n + 1)
  return count_BxS


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass(frozen=True)
class RankCorrelation:
  """A rank correlation over (model, n-gram) pairs.

  statistic: Spearman rho or Kendall tau-b; nan when undefined (defined=False), i.e. fewer than
  3 usable pairs or a constant input. n_pairs: pairs used; n_ignored: pairs dropped because either
  value was nan.
  """
  method: str
  statistic: float
  p_value: float
  n_pairs: int
  n_ignored: int
  defined: bool

  def as_dict(self) -> dict:
    return {self.method: self.statistic, "p_value": self.p_value, "n_pairs": self.n_pairs,
            "n_ignored": self.n_ignored, "defined": self.defined}


MIN_PAIRS = 3


def _paired_finite(model_prob, ngram_prob) -> tuple[np.ndarray, np.ndarray, int]:
  """Flattened pairs with neither value nan, and how many were dropped."""
  model = np.asarray(model_prob, dtype=np.float64).reshape(-1)
  ngram = np.asarray(ngram_prob, dtype=np.float64).reshape(-1)
  if model.shape != ngram.shape:
    raise ValueError(f"model_prob/ngram_prob: shapes differ, {np.shape(model_prob)} vs "
                     f"{np.shape(ngram_prob)}")
  keep = ~(np.isnan(model) | np.isnan(ngram))
  return model[keep], ngram[keep], int(keep.size - keep.sum())


def _rank_correlation(method: str, test, model_prob, ngram_prob) -> RankCorrelation:
  model, ngram, n_ignored = _paired_finite(model_prob, ngram_prob)
  undefined = RankCorrelation(method, math.nan, math.nan, int(model.size), n_ignored, False)
  # a constant side has no ranking; scipy would warn and return nan
  if model.size < MIN_PAIRS or np.all(model == model[0]) or np.all(ngram == ngram[0]):
    return undefined
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
    result = test(model, ngram)
  statistic, p_value = float(result.statistic), float(result.pvalue)
  if math.isnan(statistic):
    return undefined
  return RankCorrelation(method, statistic, p_value, int(model.size), n_ignored, True)


def distributional_memorization(model_prob, ngram_prob) -> RankCorrelation:
  """Spearman rank correlation of model probabilities with corpus n-gram probabilities.

  Wang et al. 2024's distributional memorization. Pairs where either value is nan are ignored;
  with fewer than 3 pairs left (or a constant side) the result is nan with defined=False.
  """
  return _rank_correlation("spearman", scipy.stats.spearmanr, model_prob, ngram_prob)


def distributional_generalization(model_prob, ngram_prob) -> RankCorrelation:
  """Kendall tau-b of model probabilities with n-gram probabilities (same nan handling).

  Wang et al. 2024's distributional generalization is its distance, `kendall_tau_distance`; the
  caller chooses the pairs (the distributional experiment passes the same pairs as to the
  Spearman, as the authors do).
  """
  return _rank_correlation("kendall_tau", scipy.stats.kendalltau, model_prob, ngram_prob)


def kendall_tau_distance(tau: float) -> float:
  """(1 - tau) / 2: the fraction of discordant pairs (without ties), 0 when the model ranks items
  exactly as the n-gram model does, 1/2 when unrelated, 1 when reversed. nan stays nan."""
  return (1.0 - tau) / 2.0
