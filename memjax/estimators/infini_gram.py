"""Corpus-scale n-gram counts through infini-gram (Liu et al. 2024, arXiv 2401.17377).

The exact `ngram.NgramIndex` holds every distinct n-gram in memory (~130 bytes a token at peak);
infini-gram answers the same queries from a suffix array on disk, memory-mapped, at any n. This
module reads and writes the index format of the `infini-gram` wheel (2.6.0, format "v4"):

  tokenized.N   the shard's documents, each prefixed by a separator of all 0xFF bytes (one token
                of the token width: u8 0xFF, u16 0xFFFF, u32 0xFFFFFFFF), little-endian tokens
  offset.N      u64 byte offset of each document's separator in tokenized.N
  table.N       the suffix array: one little-endian pointer (a byte offset into tokenized.N) per
                token, ceil(log2(bytes of tokenized.N) / 8) bytes each, in suffix order
  metadata.N / metaoff.N (optional) per-document metadata; not read here

The engine loads every file of the directory whose name holds "tokenized", "table", "offset",
"metadata" or "metaoff", so memjax's own description is `memjax_ngram.json` (none of those words).

Agreement with the exact backend. The separator id is the largest id of the token width, which no
token of the model's vocabulary may take (the vocabulary must be <= that id), and a query never
holds it, so a match can never span two documents: infini-gram's count of an n-gram is the exact
backend's count (n-grams never cross document boundaries there either). The other statistics:

  total(1)                       count([]) - count([sep])   (the empty query counts every position)
  P(tok | ctx), "context"        count(ctx + tok) / count(ctx)
  P(tok | ctx), "continuation"   count(ctx + tok) / (count(ctx) - count(ctx + [sep]) - shards whose
                                 last document ends with ctx)   (occurrences followed by a token)
  documents with an n-gram       the engine's suffix-array range of the n-gram (`find`), its
                                 pointers read from table.N, mapped to documents by offset.N

Counts are searched in the suffix array itself, all queries of a call at once (`_SuffixArray`, a
vectorized binary search over the memory-mapped table.N and tokenized.N, comparing bytes as the
engine does); `queries="engine"` sends each distinct n-gram to the engine's `count` instead (the
same numbers, measured ~13x slower: the engine starts threads on every call). Documents come from
the engine's `find`.

infini-gram's own co-occurrence query (`find_cnf`) counts pairs of matches within max_diff_tokens,
subsampled above max_clause_freq, not documents; it is not used. Enumerating the distinct n-grams
(`ngrams`, `num_distinct`) is not something a suffix array answers cheaply and is refused.

Building (`build_index`): memjax writes tokenized.0 and offset.0 itself and runs the wheel's
builder (`python -m infini_gram.indexing`, which skips its own tokenization when those files
exist and builds table.0 with the wheel's rust_indexing binary), into a temporary directory beside
the destination that is renamed into place when complete: a killed or failed build leaves nothing
that looks like an index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

FORMAT = "infini_gram_v4"
MANIFEST = "memjax_ngram.json"
TOKEN_DTYPES = {"u8": np.uint8, "u16": np.uint16, "u32": np.uint32}
_SHARD_FILE = re.compile(r"^(tokenized|table|offset|metadata|metaoff)\.(\d+)$")
_ENGINE_WORDS = ("tokenized", "table", "offset", "metadata", "metaoff")
_HACK_BYTES = 100_000  # the builder's part overlap; below ~2x this its parallel split fails
_CHECKED_OFFSETS = 4096  # documents whose separator is checked, per shard (first and last ones)
_SAMPLE_TOKENS = 1 << 20  # tokens read per shard to check the vocabulary


class IndexFormatError(ValueError):
  """A missing, damaged or foreign infini-gram index, or one that does not fit the model."""


def available() -> bool:
  """Whether the infini-gram wheel (its engine) can be imported."""
  import importlib.util
  try:
    return importlib.util.find_spec("infini_gram.engine") is not None
  except ImportError:  # no infini_gram package at all
    return False


def separator_id(token_dtype: str) -> int:
  """The document separator: the largest id of the token width (all 0xFF bytes)."""
  return int(np.iinfo(TOKEN_DTYPES[token_dtype]).max)


def token_dtype_for(vocab_size: int) -> str:
  """The narrowest token width whose ids below the separator hold the whole vocabulary."""
  for name in TOKEN_DTYPES:
    if vocab_size <= separator_id(name):
      return name
  raise IndexFormatError(f"vocab_size: {vocab_size} tokens do not fit infini-gram's u32 ids")


# ----------------------------------------------------------------------------- inspecting


@dataclasses.dataclass(frozen=True)
class IndexInfo:
  """What an index directory holds, read from its files (and its manifest, if any)."""
  index_dir: str
  token_dtype: str
  shards: int
  num_tokens: int  # corpus tokens, separators not counted
  num_docs: int
  manifest: dict


def _fail(index_dir, message):
  raise IndexFormatError(f"{index_dir}: {message}")


def _shard_numbers(index_dir: str) -> list[int]:
  """Shard numbers, refusing layouts the engine would misread."""
  names = os.listdir(index_dir)
  found = {}
  for name in names:
    m = _SHARD_FILE.match(name)
    if m:
      found.setdefault(int(m.group(2)), set()).add(m.group(1))
    elif name in ("tokenized", "table", "offset"):
      _fail(index_dir, f"unnumbered {name!r}: an index of another infini-gram version (v6 "
                       "layout); memjax reads v4 indexes (tokenized.N, table.N, offset.N)")
    elif any(word in name for word in _ENGINE_WORDS):
      _fail(index_dir, f"stray file {name!r}: the engine would load it as part of the index; "
                       "remove it (a half-written build?)")
  if not found:
    _fail(index_dir, "no infini-gram index here (no tokenized.N, table.N, offset.N files)")
  shards = sorted(found)
  if shards != list(range(len(shards))):
    _fail(index_dir, f"shards {shards} are not numbered 0..{len(shards) - 1}: a shard is missing")
  with_meta = [s for s in shards if "metadata" in found[s]]
  for s in shards:
    for kind in ("tokenized", "table", "offset"):
      if kind not in found[s]:
        _fail(index_dir, f"shard {s} has no {kind}.{s} (a damaged or half-written index)")
    if with_meta and ("metadata" not in found[s] or "metaoff" not in found[s]):
      _fail(index_dir, f"shard {s} lacks metadata.{s} or metaoff.{s} while other shards have "
                       "them (shards of different builds)")
  return shards


def _pointer_bytes(ds_bytes: int) -> int:
  """Bytes per suffix-array pointer, as the builder chooses them."""
  return max(1, int(math.ceil(math.log2(ds_bytes) / 8)))


def _shard_width(index_dir, s) -> int:
  """The token width (bytes) that makes table.s the suffix array of tokenized.s."""
  ds_bytes = os.path.getsize(os.path.join(index_dir, f"tokenized.{s}"))
  sa_bytes = os.path.getsize(os.path.join(index_dir, f"table.{s}"))
  if ds_bytes == 0:
    _fail(index_dir, f"tokenized.{s} is empty (a damaged index)")
  for width in (1, 2, 4):
    if ds_bytes % width == 0 and sa_bytes == ds_bytes // width * _pointer_bytes(ds_bytes):
      return width
  _fail(index_dir, f"table.{s} ({sa_bytes:,} bytes) is not the suffix array of tokenized.{s} "
                   f"({ds_bytes:,} bytes) at any token width: damaged, or another infini-gram "
                   "version")


def _check_offsets(index_dir, s, dtype) -> int:
  """offset.s: sorted, starting at 0, each pointing at a separator; returns the document count."""
  od_bytes = os.path.getsize(os.path.join(index_dir, f"offset.{s}"))
  if od_bytes == 0 or od_bytes % 8:
    _fail(index_dir, f"offset.{s} ({od_bytes} bytes) is not a list of u64 offsets (damaged)")
  offsets = np.memmap(os.path.join(index_dir, f"offset.{s}"), np.uint64, "r")
  tokens = np.memmap(os.path.join(index_dir, f"tokenized.{s}"), dtype, "r")
  width = np.dtype(dtype).itemsize
  picks = np.unique(np.r_[np.arange(min(offsets.size, _CHECKED_OFFSETS)),
                          np.arange(max(0, offsets.size - _CHECKED_OFFSETS), offsets.size)])
  at = np.asarray(offsets[picks], np.uint64)
  bad = (int(offsets[0]) != 0 or np.any(np.diff(at.astype(np.int64)) <= 0)
         or np.any(at % width) or int(at.max()) >= tokens.size * width)
  if bad or np.any(tokens[(at // width).astype(np.int64)] != np.iinfo(dtype).max):
    _fail(index_dir, f"offset.{s} does not point at the document separators of tokenized.{s} "
                     "(damaged, or another version)")
  return int(offsets.size)


def inspect_index(index_dir: str) -> IndexInfo:
  """Reads an index's layout and checks it is whole, before the engine maps it (whose own checks
  are C++ asserts that abort the process)."""
  if not os.path.isdir(index_dir):
    _fail(index_dir, "no such directory")
  shards = _shard_numbers(index_dir)
  widths = [_shard_width(index_dir, s) for s in shards]
  if len(set(widths)) > 1:
    _fail(index_dir, f"shards have token widths {widths} bytes: shards of different builds")
  token_dtype = {1: "u8", 2: "u16", 4: "u32"}[widths[0]]
  dtype = TOKEN_DTYPES[token_dtype]
  num_docs = sum(_check_offsets(index_dir, s, dtype) for s in shards)
  ds_tokens = sum(os.path.getsize(os.path.join(index_dir, f"tokenized.{s}")) // widths[0]
                  for s in shards)
  manifest = _read_manifest(index_dir)
  if manifest and manifest.get("format") != FORMAT:
    _fail(index_dir, f"{MANIFEST} says format {manifest.get('format')!r}; memjax reads {FORMAT}")
  if manifest and manifest.get("token_dtype") != token_dtype:
    _fail(index_dir, f"{MANIFEST} says {manifest.get('token_dtype')} tokens, the files hold "
                     f"{token_dtype}: damaged")
  return IndexInfo(index_dir, token_dtype, len(shards), ds_tokens - num_docs, num_docs, manifest)


def _read_manifest(index_dir) -> dict:
  path = os.path.join(index_dir, MANIFEST)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    _fail(index_dir, f"{MANIFEST} is unreadable ({e}); damaged")
  if not isinstance(manifest, dict):
    _fail(index_dir, f"{MANIFEST} is not a JSON object; damaged")
  return manifest


def check_fits(info: IndexInfo, vocab_size: int, tokenizer: str = "") -> None:
  """The model's token ids and the index's must agree: a vocabulary wider than the index's ids
  (below its separator), an index whose manifest names another tokenizer, or index tokens
  outside the vocabulary (read from the start of each shard) are errors."""
  sep = separator_id(info.token_dtype)
  if vocab_size > sep:
    _fail(info.index_dir, f"a vocabulary of {vocab_size:,} tokens does not fit the index's "
                          f"{info.token_dtype} ids (ids below the separator {sep:,})")
  recorded = info.manifest.get("tokenizer", "")
  if tokenizer and recorded and recorded != tokenizer:
    _fail(info.index_dir, f"built with tokenizer {recorded!r}, the model uses {tokenizer!r}")
  if info.manifest.get("vocab_size", vocab_size) > vocab_size:
    _fail(info.index_dir, f"built for a vocabulary of {info.manifest['vocab_size']:,} tokens, "
                          f"the model has {vocab_size:,}: another tokenizer")
  dtype = TOKEN_DTYPES[info.token_dtype]
  for s in range(info.shards):
    head = np.memmap(os.path.join(info.index_dir, f"tokenized.{s}"), dtype, "r")[:_SAMPLE_TOKENS]
    ids = head[head != sep]
    if ids.size and int(ids.max()) >= vocab_size:
      _fail(info.index_dir, f"tokenized.{s} holds token id {int(ids.max()):,}, outside the "
                            f"model's vocabulary of {vocab_size:,}: another tokenizer")


# ----------------------------------------------------------------------------- building


def corpus_key(tokens_T: np.ndarray, lengths_D: np.ndarray, vocab_size: int) -> str:
  """A hash of the corpus (tokens, document lengths, vocabulary): the cache key of its index."""
  h = hashlib.sha256(f"{FORMAT}:{vocab_size}:{tokens_T.size}:".encode())
  h.update(np.ascontiguousarray(lengths_D, np.int64).tobytes())
  h.update(np.ascontiguousarray(tokens_T, np.int32).tobytes())
  return h.hexdigest()[:24]


def write_tokenized(out_dir, tokens_T, lengths_D, token_dtype, shard: int = 0) -> None:
  """tokenized.N and offset.N (N = shard): each document prefixed by the separator, and where
  each starts. Shards written this way become an index with the wheel's builder (docs/ngram.md)."""
  dtype = TOKEN_DTYPES[token_dtype]
  lengths_D = np.asarray(lengths_D, np.int64)
  starts_D = np.concatenate([[0], np.cumsum(lengths_D + 1)[:-1]])  # separator positions
  out_P = np.empty(tokens_T.size + lengths_D.size, dtype)
  is_sep_P = np.zeros(out_P.size, bool)
  is_sep_P[starts_D] = True
  out_P[is_sep_P] = separator_id(token_dtype)
  out_P[~is_sep_P] = tokens_T
  out_P.tofile(os.path.join(out_dir, f"tokenized.{shard}"))
  (starts_D * np.dtype(dtype).itemsize).astype(np.uint64).tofile(
      os.path.join(out_dir, f"offset.{shard}"))


def _run_builder(tmp_dir, token_dtype, ds_bytes) -> None:
  """The wheel's builder on tokenized.0 (its tokenization step skips existing files)."""
  import resource
  empty = os.path.join(tmp_dir, "no_data")  # the builder insists on a data_dir
  os.makedirs(empty)
  cpus = 1 if ds_bytes < 2 * _HACK_BYTES else min(2, os.cpu_count() or 1)
  mem_gib = max(1, int(ds_bytes * 12 / 2**30) + 1)
  nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
  nofile = 4096 if nofile == resource.RLIM_INFINITY else min(nofile, 4096)
  cmd = [sys.executable, "-m", "infini_gram.indexing", "--data_dir", empty, "--save_dir", tmp_dir,
         "--token_dtype", token_dtype, "--cpus", str(cpus), "--mem", str(mem_gib),
         "--ulimit", str(nofile)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  os.rmdir(empty)
  if proc.returncode or not os.path.exists(os.path.join(tmp_dir, "table.0")):
    tail = " ".join((proc.stdout + proc.stderr).split()[-30:])
    raise IndexFormatError(f"the infini-gram builder failed (exit {proc.returncode}): {tail}")


def build_index(tokens_T, lengths_D, vocab_size: int, index_dir: str, tokenizer: str = "") -> str:
  """Builds the index of a corpus at index_dir (which must not exist), atomically."""
  tokens_T = np.asarray(tokens_T).reshape(-1)
  token_dtype = token_dtype_for(vocab_size)
  if token_dtype == "u32":  # measured: the wheel's u32 make-part allocates 32 GiB up front
    raise IndexFormatError(f"vocab_size: memjax builds u8/u16 indexes (vocabularies up to 65,535 "
                           f"tokens); {vocab_size:,} needs u32, whose builder in infini-gram "
                           "2.6.0 allocates 32 GiB; build it elsewhere and give ngram.index_dir")
  parent = os.path.dirname(os.path.abspath(index_dir))
  os.makedirs(parent, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=".building-", dir=parent)
  try:
    write_tokenized(tmp_dir, tokens_T, lengths_D, token_dtype)
    _run_builder(tmp_dir, token_dtype, os.path.getsize(os.path.join(tmp_dir, "tokenized.0")))
    manifest = {"format": FORMAT, "token_dtype": token_dtype, "vocab_size": int(vocab_size),
                "tokenizer": tokenizer, "num_tokens": int(tokens_T.size),
                "num_docs": int(np.size(lengths_D)),
                "corpus_key": corpus_key(tokens_T, np.asarray(lengths_D), vocab_size)}
    with open(os.path.join(tmp_dir, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
    try:
      os.rename(tmp_dir, index_dir)
    except OSError:
      if not os.path.isfile(os.path.join(index_dir, MANIFEST)):
        raise
      # Another process of a multi-process run built it meanwhile (the same tokens: the same
      # index): keep theirs.
      shutil.rmtree(tmp_dir, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  return index_dir


def cached_index(tokens_T, lengths_D, vocab_size: int, cache_dir: str,
                 tokenizer: str = "") -> tuple[str, bool]:
  """(index dir, built now?): the corpus's index under cache_dir/infini_gram/<hash>, built once."""
  tokens_T = np.asarray(tokens_T).reshape(-1)
  key = corpus_key(tokens_T, np.asarray(lengths_D), vocab_size)
  index_dir = os.path.join(cache_dir, "infini_gram", key)
  if os.path.isdir(index_dir):
    return index_dir, False
  return build_index(tokens_T, lengths_D, vocab_size, index_dir, tokenizer), True


# ----------------------------------------------------------------------------- queries


QUERY_PATHS = ("numpy", "engine")


class _SuffixArray:
  """Counts in one shard by binary search of its suffix array, many queries at once (numpy).

  The engine's `count` does the same search for one query per call, starting threads each time
  (measured: 0.1-0.3 ms a call on the loaded 2-core machine, whatever the index size); this runs
  the ~log2(tokens) steps for all queries together, comparing bytes as the engine does: the
  suffix array is sorted by the little-endian bytes of tokenized.N, not by token value."""

  def __init__(self, index_dir: str, s: int, dtype):
    self.ds = np.memmap(os.path.join(index_dir, f"tokenized.{s}"), np.uint8, "r")
    self.ptr_bytes = _pointer_bytes(self.ds.size)
    self.sa_RxP = np.memmap(os.path.join(index_dir, f"table.{s}"), np.uint8, "r").reshape(
        -1, self.ptr_bytes)
    self.dtype = dtype

  def _pointers(self, ranks_K):
    raw_KxP = self.sa_RxP[ranks_K]
    padded_Kx8 = np.zeros((ranks_K.size, 8), np.uint8)
    padded_Kx8[:, :self.ptr_bytes] = raw_KxP
    return padded_Kx8.view("<u8").reshape(-1).astype(np.int64)

  def _compare(self, ranks_K, query_KxB):
    """Sign of (suffix at rank, cut to B bytes) vs query: -1 less, 0 equal, 1 greater."""
    at_KxB = self._pointers(ranks_K)[:, None] + np.arange(query_KxB.shape[1])
    past_end_KxB = at_KxB >= self.ds.size  # a suffix cut by the end sorts first, as a prefix
    suffix_KxB = self.ds[np.minimum(at_KxB, self.ds.size - 1)].astype(np.int16)
    suffix_KxB[past_end_KxB] = -1
    differ_KxB = suffix_KxB != query_KxB
    first_K = differ_KxB.argmax(axis=1)
    k = np.arange(ranks_K.size)
    sign_K = np.sign(suffix_KxB[k, first_K] - query_KxB[k, first_K])
    return np.where(differ_KxB.any(axis=1), sign_K, 0)

  def _bound(self, query_KxB, upper: bool):
    """Per query, the first rank whose suffix is >= (upper: >) the query."""
    lo_K = np.zeros(query_KxB.shape[0], np.int64)
    hi_K = np.full(query_KxB.shape[0], self.sa_RxP.shape[0], np.int64)
    active_K = lo_K < hi_K
    while active_K.any():
      idx = np.flatnonzero(active_K)
      mid_A = (lo_K[idx] + hi_K[idx]) // 2
      cmp_A = self._compare(mid_A, query_KxB[idx])
      right_A = cmp_A <= 0 if upper else cmp_A < 0
      lo_K[idx] = np.where(right_A, mid_A + 1, lo_K[idx])
      hi_K[idx] = np.where(right_A, hi_K[idx], mid_A)
      active_K = lo_K < hi_K
    return lo_K

  def counts(self, rows_KxN, chunk: int = 1 << 16):
    out_K = np.zeros(rows_KxN.shape[0], np.int64)
    for i in range(0, rows_KxN.shape[0], chunk):
      query_KxB = np.ascontiguousarray(rows_KxN[i:i + chunk].astype(self.dtype)).view(
          np.uint8).reshape(min(chunk, rows_KxN.shape[0] - i), -1).astype(np.int16)
      out_K[i:i + chunk] = self._bound(query_KxB, True) - self._bound(query_KxB, False)
    return out_K


class InfiniGramCounts:
  """The query interface of `ngram.NgramIndex` (counts, cond_probs, total, documents), answered
  from an infini-gram index on disk: counts by a batched search of its suffix array (or the
  engine's `count`, queries="engine"), documents by the engine's `find`. Any order n works."""

  def __init__(self, index_dir: str, vocab_size: int, tokenizer: str = "",
               queries: str = "numpy"):
    from infini_gram.engine import InfiniGramEngine
    if queries not in QUERY_PATHS:
      raise ValueError(f"queries: must be one of {', '.join(QUERY_PATHS)}, got {queries!r}")
    self.queries, self._shards = queries, {}
    self.info = inspect_index(index_dir)
    check_fits(self.info, vocab_size, tokenizer)
    self.index_dir, self.vocab_size = index_dir, int(vocab_size)
    self.max_n = sys.maxsize
    self.sep = separator_id(self.info.token_dtype)
    self.num_docs, self.num_tokens = self.info.num_docs, self.info.num_tokens
    # the queries used here do not read eos_token_id (the separator is fixed by the width)
    self._engine = InfiniGramEngine(index_dir=index_dir, eos_token_id=0, vocab_size=self.sep,
                                    token_dtype=self.info.token_dtype)

  def check_order(self, n: int) -> None:
    if n < 1:
      raise ValueError(f"n: n-grams must be non-empty (n >= 1), got n={n}")

  _check_order = check_order

  def _count_rows(self, rows_KxN: np.ndarray) -> np.ndarray:
    """Counts of K rows (ids checked); a row holding an id outside the vocabulary counts 0."""
    from memjax.estimators import ngram as ngram_lib
    rows_KxN = ngram_lib._as_ngram_rows(rows_KxN, "ngrams_KxN")
    out_K = np.zeros(rows_KxN.shape[0], np.int64)
    in_vocab_K = (rows_KxN < self.vocab_size).all(axis=1)
    out_K[in_vocab_K] = self._raw_counts(rows_KxN[in_vocab_K])
    return out_K

  def _raw_counts(self, rows_KxN: np.ndarray) -> np.ndarray:
    """Counts of rows of ids <= the separator, each distinct row searched once."""
    if rows_KxN.shape[0] == 0:
      return np.zeros(0, np.int64)
    uniq_UxN, inverse_K = np.unique(rows_KxN, axis=0, return_inverse=True)
    if self.queries == "engine":
      count = self._engine.engine.count  # the C++ call: the wrapper's checks cost more than it
      counts_U = np.array([count(input_ids=r.tolist()).count for r in uniq_UxN], np.int64)
    else:
      counts_U = sum(self._shard(s).counts(uniq_UxN) for s in range(self.info.shards))
    return counts_U[inverse_K.reshape(-1)]

  def _shard(self, s: int) -> "_SuffixArray":
    if s not in self._shards:
      self._shards[s] = _SuffixArray(self.index_dir, s, TOKEN_DTYPES[self.info.token_dtype])
    return self._shards[s]

  def counts(self, ngrams_KxN) -> np.ndarray:
    """Corpus counts of K n-grams of one length n, int64 [K]; unseen (or out-of-vocabulary) -> 0."""
    from memjax.estimators import ngram as ngram_lib
    return self._count_rows(ngram_lib._as_ngram_rows(ngrams_KxN, "ngrams_KxN"))

  def count(self, ngram) -> int:
    return int(self.counts(np.asarray(ngram).reshape(1, -1))[0])

  def total(self, n: int) -> int:
    """Number of n-gram occurrences inside documents: sum over documents of max(0, len - n + 1)."""
    self.check_order(n)
    if n == 1:
      return self.num_tokens
    raise ValueError(f"total: the infini-gram backend gives total(1) only, not total({n})")

  def num_distinct(self, n: int) -> int:
    raise ValueError("num_distinct: the infini-gram backend cannot enumerate distinct n-grams; "
                     "use ngram.backend='exact'")

  def ngrams(self, n: int):
    raise ValueError("ngrams: the infini-gram backend cannot enumerate distinct n-grams; "
                     "use ngram.backend='exact'")

  def _ends_of_shards(self, context_KxC: np.ndarray) -> np.ndarray:
    """Per row, how many shards end with it (an occurrence that no token follows)."""
    dtype = TOKEN_DTYPES[self.info.token_dtype]
    c = context_KxC.shape[1]
    ends_K = np.zeros(context_KxC.shape[0], np.int64)
    for s in range(self.info.shards):
      tail_C = np.asarray(np.memmap(os.path.join(self.index_dir, f"tokenized.{s}"), dtype,
                                    "r")[-c:], np.int64)
      if tail_C.size == c:  # the separator in the tail never equals a context token
        ends_K += (context_KxC == tail_C).all(axis=1)
    return ends_K

  def cond_probs(self, contexts_KxC, tokens_K, denominator: str = "context") -> np.ndarray:
    """P(token | context) as `NgramIndex.cond_probs` (same denominators; nan where 0/0)."""
    from memjax.estimators import ngram as ngram_lib
    rows_KxN = ngram_lib.cond_prob_rows(contexts_KxC, tokens_K, denominator)
    numer_K = self._count_rows(rows_KxN).astype(np.float64)
    if rows_KxN.shape[1] == 1:
      denom_K = np.full(numer_K.shape, float(self.total(1)))
    else:
      context_KxC = rows_KxN[:, :-1]
      denom_K = self._count_rows(context_KxC).astype(np.float64)
      if denominator == "continuation":
        # the separator is outside the vocabulary, so count it through the engine directly
        with_sep = np.concatenate([context_KxC, np.full((context_KxC.shape[0], 1), self.sep)], 1)
        denom_K -= self._count_with_sep(with_sep) + self._ends_of_shards(context_KxC)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(denom_K > 0, numer_K / denom_K, np.nan)

  def _count_with_sep(self, rows_KxN: np.ndarray) -> np.ndarray:
    """Counts of contexts followed by the separator (a document's end), int64 [K]."""
    out_K = np.zeros(rows_KxN.shape[0], np.int64)
    in_vocab_K = (rows_KxN[:, :-1] < self.vocab_size).all(axis=1)
    out_K[in_vocab_K] = self._raw_counts(rows_KxN[in_vocab_K])
    return out_K

  def cond_prob(self, context, token: int, denominator: str = "context") -> float:
    context_1xC = np.asarray(context, dtype=np.int64).reshape(1, -1)
    return float(self.cond_probs(context_1xC, [token], denominator)[0])

  # --------------------------------------------------------------------------- documents

  def docs_with(self, ngram) -> np.ndarray:
    """Sorted ids of the documents that contain the n-gram (ids run over shards in order)."""
    row = np.asarray(ngram, np.int64).reshape(-1)
    if row.size == 0:
      raise ValueError("ngram: n-grams must be non-empty (n >= 1), got n=0")
    if (row < 0).any() or (row >= self.vocab_size).any():
      return np.zeros(0, np.int64)
    found = self._engine.engine.find(input_ids=row.tolist())
    docs, base = [], 0
    for s, (lo, hi) in enumerate(found.segment_by_shard):
      offsets = np.memmap(os.path.join(self.index_dir, f"offset.{s}"), np.uint64, "r")
      if hi > lo:
        docs.append(base + np.searchsorted(offsets, self._pointers(s, lo, hi), "right") - 1)
      base += offsets.size
    return np.unique(np.concatenate(docs)) if docs else np.zeros(0, np.int64)

  def _pointers(self, s: int, lo: int, hi: int) -> np.ndarray:
    """Byte offsets into tokenized.s of suffix-array ranks [lo, hi): little-endian pointers."""
    ds_bytes = os.path.getsize(os.path.join(self.index_dir, f"tokenized.{s}"))
    width = _pointer_bytes(ds_bytes)
    table = np.memmap(os.path.join(self.index_dir, f"table.{s}"), np.uint8, "r")
    raw_RxW = np.asarray(table[lo * width:hi * width]).reshape(-1, width)
    padded_Rx8 = np.zeros((raw_RxW.shape[0], 8), np.uint8)
    padded_Rx8[:, :width] = raw_RxW
    return np.sort(padded_Rx8.view("<u8").reshape(-1))

  def doc_count(self, ngram) -> int:
    return int(self.docs_with(ngram).size)

  def docs_with_both(self, ngram_a, ngram_b) -> int:
    """Number of documents containing both n-grams (which may differ in length)."""
    return int(np.intersect1d(self.docs_with(ngram_a), self.docs_with(ngram_b)).size)
