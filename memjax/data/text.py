"""Text datasets: documents -> tokens -> deduplicated S-token sequences -> seeded disjoint pools.

`build_text_dataset` is the one entry point. It

1. checks every setting cheaply (sequence length, pool sizes, source paths, tokenizer file or BPE
   vocabulary size), so bad input fails with one clear message before anything is built or trained;
2. gets the tokenizer: loads a tokenizer.json, trains a byte-level BPE on the corpus (cached under
   `cache_dir`, keyed by the source fingerprint and the BPE settings), or uses raw bytes;
3. tokenizes the documents in batches, cuts each into non-overlapping `seq_len`-token sequences
   (the remainder of each document is dropped, sequences never span documents) and removes exact
   duplicate sequences, keeping the first occurrence of each in corpus order;
4. caches the sequences on disk as `tokens.npy` [num_sequences, seq_len] (uint16 when the
   vocabulary fits, else int32) plus `manifest.json`, in a directory named by the hash of the
   source fingerprint, tokenizer fingerprint and seq_len. A later call with the same source and
   tokenizer memory-maps it (np.load(mmap_mode='r')); a changed source or tokenizer gets a new entry;
5. draws the pools from a permutation seeded by `seed`: first the held-out pool (non-members), then
   the reference pool, then the training pool. Pools are disjoint; a model with N members takes the
   first N of `train_idx`, so members for a smaller N are a subset of those for a larger one, and the
   held-out pool does not change with the training pool size. `pool_split="document"` draws
   whole documents instead (see `split_pools`), so that no document has sequences in two pools;
6. saves the tokenizer (and a `text_dataset.json` summary) into the run's workdir.

The trainer keeps `tokens` on the device and gathers batches by index (see DESIGN.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import warnings
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from memjax.engine import jsonio
from memjax.data import corpus as corpus_lib
from memjax.data import tokenize as tokenize_lib
from memjax.data.corpus import SourceConfig
from memjax.data.tokenize import TextTokenizer, TokenizerConfig

# Bump when tokenizing, cutting or deduplication changes, so old cache entries are not reused.
PIPELINE_VERSION = 1
DEFAULT_SEQ_LEN = 64
MIN_SEQ_LEN = 2
_ENCODE_BATCH_DOCUMENTS = 256
_TOKENS_FILENAME = "tokens.npy"
_DOC_IDS_FILENAME = "doc_ids.npy"
_MANIFEST_FILENAME = "manifest.json"
_WORKDIR_SUMMARY_FILENAME = "text_dataset.json"

# "sequence": pools drawn row by row; "document": whole documents, none split between pools.
POOL_SPLITS = ("sequence", "document")

__all__ = [
    "POOL_SPLITS", "PoolSizes", "SourceConfig", "TextDataset", "TokenizerConfig",
    "build_text_dataset", "deduplicate_sequences", "describe_overlap", "get_tokenizer",
    "pool_summary", "split_pools", "token_dtype", "write_workdir_summary",
    "tokenize_into_sequences", "validate_text_settings",
]


@dataclasses.dataclass(frozen=True)
class PoolSizes:
  """Numbers of sequences in each pool. train=None takes every sequence the others leave."""
  train: int | None = None
  heldout: int = 0
  reference: int = 0


@dataclasses.dataclass
class TextDataset:
  """Deduplicated token sequences and the seeded pools drawn from them.

  Attributes:
    tokens: [num_sequences, seq_len] uint16 or int32 token ids (memory-mapped when cached).
    seq_len: S, the tokens in a sequence.
    vocab_size: V of the tokenizer (ids are in [0, V)).
    tokenizer: the TextTokenizer that made the tokens.
    doc_ids: [num_sequences] int32, the document (in corpus order) each sequence was cut from;
      a sequence repeated in several documents keeps its first one. None when a cache entry
      written before document ids were kept is reused by a split by sequence.
    train_idx, heldout_idx, reference_idx: int32 row indices into `tokens`, disjoint.
    pool_split: how the pools were drawn, one of POOL_SPLITS.
    num_duplicates_dropped: exact duplicate sequences removed.
    num_documents, num_chars: documents and characters the tokens came from.
    manifest: the cache manifest (fingerprints and counts).
    cache_path: the cache entry directory, or None without a cache_dir.
    from_cache: whether the tokens were loaded from an existing cache entry.
  """
  tokens: np.ndarray
  seq_len: int
  vocab_size: int
  tokenizer: TextTokenizer
  doc_ids: np.ndarray | None
  train_idx: np.ndarray
  heldout_idx: np.ndarray
  reference_idx: np.ndarray
  pool_split: str
  num_duplicates_dropped: int
  num_documents: int
  num_chars: int
  manifest: dict[str, Any]
  cache_path: str | None
  from_cache: bool

  @property
  def num_sequences(self) -> int:
    return int(self.tokens.shape[0])

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str | list[str]:
    """Text of one sequence [S] (a string) or of a batch [B, S] (a list of strings)."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
      return self.tokenizer.decode(tokens.tolist())
    return [self.tokenizer.decode(row.tolist()) for row in tokens.reshape(-1, tokens.shape[-1])]


# ---------------------------------------------------------------------------------------------
# The entry point.


def build_text_dataset(
    source: SourceConfig,
    tokenizer: TokenizerConfig,
    seq_len: int = DEFAULT_SEQ_LEN,
    pool_sizes: PoolSizes = PoolSizes(),
    seed: int = 0,
    cache_dir: str | None = None,
    workdir: str | None = None,
    pool_split: str = "sequence",
) -> TextDataset:
  """Builds (or loads from cache_dir) the tokenized, deduplicated dataset and its seeded pools.

  Raises FileNotFoundError or ValueError, naming the setting to change, for: missing files or
  globs matching nothing, an empty corpus, a corpus too small for the pools, a tokenizer file that
  does not load, a BPE vocabulary size out of range, seq_len < 2, pool_split not in POOL_SPLITS.
  """
  validate_text_settings(source, tokenizer, seq_len, pool_sizes, seed, pool_split)
  source_fingerprint = corpus_lib.source_fingerprint(source)  # Fails fast on missing files.
  text_tokenizer = get_tokenizer(source, tokenizer, cache_dir, source_fingerprint)
  tokens_NxS, doc_ids, manifest, cache_path, from_cache = _cached_sequences(
      source, source_fingerprint, text_tokenizer, seq_len, cache_dir,
      need_doc_ids=pool_split == "document")
  train_idx, heldout_idx, reference_idx = split_pools(
      tokens_NxS.shape[0], pool_sizes, seed, doc_ids if pool_split == "document" else None)
  dataset = TextDataset(
      tokens=tokens_NxS, seq_len=seq_len, vocab_size=text_tokenizer.vocab_size,
      tokenizer=text_tokenizer, doc_ids=doc_ids, train_idx=train_idx, heldout_idx=heldout_idx,
      reference_idx=reference_idx, pool_split=pool_split,
      num_duplicates_dropped=manifest["num_duplicates_dropped"],
      num_documents=manifest["num_documents"], num_chars=manifest["num_chars"],
      manifest=manifest, cache_path=cache_path, from_cache=from_cache)
  if workdir is not None:
    _save_to_workdir(dataset, pool_sizes, seed, workdir)
  return dataset


def validate_text_settings(source: SourceConfig, tokenizer: TokenizerConfig, seq_len: int,
                           pool_sizes: PoolSizes, seed: int = 0,
                           pool_split: str = "sequence") -> None:
  """The checks that need no tokenizing: call early to fail before any compile.

  Besides the values themselves it checks that the source files and the tokenizer file exist;
  whether a TFDS dataset is prepared, and whether a tokenizer file loads, is checked by
  build_text_dataset before it reads any document.
  """
  if not isinstance(seq_len, (int, np.integer)) or seq_len < MIN_SEQ_LEN:
    raise ValueError(f"seq_len must be an integer >= {MIN_SEQ_LEN} (a sequence needs a token to "
                     f"predict from and one to predict), got {seq_len!r}.")
  _validate_pool_sizes(pool_sizes)
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  if pool_split not in POOL_SPLITS:
    raise ValueError(f"pool_split must be one of {', '.join(POOL_SPLITS)}, got {pool_split!r}.")
  corpus_lib.validate_source_config(source)
  tokenize_lib.validate_tokenizer_config(tokenizer)
  if source.kind in corpus_lib.FILE_EXTENSIONS:
    corpus_lib.resolve_paths(source.paths, corpus_lib.FILE_EXTENSIONS[source.kind])


def _validate_pool_sizes(pool_sizes: PoolSizes) -> None:
  if pool_sizes.train is not None and pool_sizes.train < 1:
    raise ValueError(f"pool_sizes.train must be None (all remaining) or >= 1, got "
                     f"{pool_sizes.train}.")
  for name in ("heldout", "reference"):
    if getattr(pool_sizes, name) < 0:
      raise ValueError(f"pool_sizes.{name} must be >= 0, got {getattr(pool_sizes, name)}.")


# ---------------------------------------------------------------------------------------------
# Tokenizer.


def get_tokenizer(source: SourceConfig, cfg: TokenizerConfig, cache_dir: str | None = None,
                  source_fingerprint: dict[str, Any] | None = None) -> TextTokenizer:
  """Loads, trains (or reuses a cached training of) the tokenizer cfg describes."""
  tokenize_lib.validate_tokenizer_config(cfg)
  if cfg.kind == "file":
    return tokenize_lib.load_tokenizer_file(cfg.path)
  if cfg.kind == "bytes":
    return tokenize_lib.byte_tokenizer()
  return _trained_bpe(source, cfg, cache_dir, source_fingerprint)


class CacheWriteError(OSError):
  """An OSError while writing under the cache directory (`cache_dir`): not the corpus's fault."""

  def __init__(self, error: OSError, cache_dir: str):
    super().__init__(error.errno, error.strerror, error.filename)
    self.cache_dir = cache_dir
    # numpy's "N requested and M written" (a full disk) has no errno, strerror or filename, and
    # a write to an open file (ENOSPC) no filename.
    self.reason = error.strerror or str(error) or type(error).__name__
    if error.strerror and error.filename:
      self.reason += f": {error.filename!r}"


@contextlib.contextmanager
def _writing_cache(cache_dir: str):
  try:
    yield
  except CacheWriteError:
    raise
  except OSError as e:
    raise CacheWriteError(e, cache_dir) from e


def _trained_bpe(source: SourceConfig, cfg: TokenizerConfig, cache_dir: str | None,
                 source_fingerprint: dict[str, Any] | None) -> TextTokenizer:
  if source_fingerprint is None:
    source_fingerprint = corpus_lib.source_fingerprint(source)
  cached_path = None
  if cache_dir is not None:
    key = _hash_json({"pipeline_version": PIPELINE_VERSION, "source": source_fingerprint,
                      "bpe": dataclasses.asdict(cfg)})
    cached_path = os.path.join(cache_dir, f"bpe-{key[:16]}", tokenize_lib.HF_TOKENIZER_FILENAME)
    if os.path.isfile(cached_path):
      try:
        return _load_cached_bpe(cached_path)
      except ValueError as e:  # damaged (a cut copy, a full disk): train again and overwrite it
        warnings.warn(f"the cached BPE {cached_path} does not load ({e.__cause__ or e}); "
                      "training it again")
  documents = _nonempty_documents(source)
  trained = tokenize_lib.train_byte_level_bpe(documents, cfg)
  if cached_path is not None:
    with _writing_cache(cache_dir):
      trained.save_to_workdir(os.path.dirname(cached_path))
  return trained


def _load_cached_bpe(path: str) -> TextTokenizer:
  loaded = tokenize_lib.load_tokenizer_file(path)
  loaded.kind = "bpe"
  return loaded


# ---------------------------------------------------------------------------------------------
# Documents -> sequences.


def _nonempty_documents(source: SourceConfig) -> Iterator[str]:
  """The source's documents; raises a ValueError at once if it holds no text at all."""
  documents = corpus_lib.iter_documents(source)
  first = next(documents, None)
  if first is None:
    raise ValueError(f"the {corpus_lib.describe_source(source)} holds no text (no non-empty "
                     "document); point the source at a corpus with text.")
  return itertools.chain([first], documents)


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 halves host and device memory whenever the ids fit."""
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def tokenize_into_sequences(documents: Iterable[str], tokenizer: TextTokenizer, seq_len: int,
                            batch_documents: int = _ENCODE_BATCH_DOCUMENTS,
                            ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
  """Batch-encodes documents and cuts each into non-overlapping seq_len-token rows.

  Returns tokens_NxS (in corpus order, not deduplicated), doc_ids_N (the index of the document
  each row was cut from, int32) and counts of documents, characters and tokens read.
  """
  dtype = token_dtype(tokenizer.vocab_size)
  chunks_of_rows: list[np.ndarray] = []
  chunks_of_doc_ids: list[np.ndarray] = []
  counts = {"num_documents": 0, "num_chars": 0, "num_tokens": 0}
  documents = iter(documents)
  while batch := list(itertools.islice(documents, batch_documents)):
    counts["num_documents"] += len(batch)
    counts["num_chars"] += sum(len(document) for document in batch)
    for ids in tokenizer.encode_batch(batch):
      bad = ids[(ids < 0) | (ids >= tokenizer.vocab_size)]
      if bad.size:
        raise ValueError(f"the tokenizer gave id {int(bad[0])}, outside its vocabulary of "
                         f"{tokenizer.vocab_size} ids; check the tokenizer file")
      counts["num_tokens"] += len(ids)
      rows = _cut_into_rows(ids, seq_len).astype(dtype)
      chunks_of_rows.append(rows)
      chunks_of_doc_ids.append(np.full(rows.shape[0], len(chunks_of_doc_ids), np.int32))
  tokens_NxS = (np.concatenate(chunks_of_rows) if chunks_of_rows
                else np.zeros((0, seq_len), dtype=dtype))
  doc_ids_N = (np.concatenate(chunks_of_doc_ids) if chunks_of_doc_ids
               else np.zeros((0,), np.int32))
  return tokens_NxS, doc_ids_N, counts


def _cut_into_rows(ids: np.ndarray, seq_len: int) -> np.ndarray:
  """[num_whole_rows, seq_len]; the tail shorter than seq_len is dropped."""
  num_rows = len(ids) // seq_len
  return ids[:num_rows * seq_len].reshape(num_rows, seq_len)


def deduplicate_sequences(tokens_NxS: np.ndarray) -> tuple[np.ndarray, int]:
  """Drops exact duplicate rows, keeping each row's first occurrence, in the original order."""
  kept_rows = _first_occurrences(tokens_NxS)
  return tokens_NxS[kept_rows], int(tokens_NxS.shape[0] - kept_rows.shape[0])


def _first_occurrences(tokens_NxS: np.ndarray) -> np.ndarray:
  """Sorted indices of the first occurrence of each distinct row."""
  if tokens_NxS.shape[0] == 0:
    return np.zeros((0,), np.int64)
  _, first_occurrence = np.unique(tokens_NxS, axis=0, return_index=True)
  return np.sort(first_occurrence)


def _build_sequences(source: SourceConfig, tokenizer: TextTokenizer, seq_len: int,
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
  documents = _nonempty_documents(source)
  tokens_NxS, doc_ids_N, counts = tokenize_into_sequences(documents, tokenizer, seq_len)
  if tokens_NxS.shape[0] == 0:
    raise ValueError(
        f"no document of the {corpus_lib.describe_source(source)} is {seq_len} tokens long, so "
        f"it gives no sequence ({counts['num_documents']} documents, {counts['num_tokens']} "
        "tokens); lower seq_len or use a corpus with longer documents.")
  kept_rows = _first_occurrences(tokens_NxS)
  unique_NxS = tokens_NxS[kept_rows]
  counts.update(num_sequences_before_dedup=int(tokens_NxS.shape[0]),
                num_sequences=int(unique_NxS.shape[0]),
                num_duplicates_dropped=int(tokens_NxS.shape[0] - unique_NxS.shape[0]))
  return unique_NxS, doc_ids_N[kept_rows], counts


# ---------------------------------------------------------------------------------------------
# Cache.


def _cached_sequences(source: SourceConfig, source_fingerprint: dict[str, Any],
                      tokenizer: TextTokenizer, seq_len: int, cache_dir: str | None,
                      need_doc_ids: bool = False,
                      ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], str | None, bool]:
  """(tokens_NxS, doc_ids_N, manifest, cache entry path, whether it was reused)."""
  cache_key = {"pipeline_version": PIPELINE_VERSION, "source": source_fingerprint,
               "tokenizer_sha256": tokenizer.fingerprint, "seq_len": int(seq_len)}
  entry_path = None
  if cache_dir is not None:
    entry_path = os.path.join(cache_dir, f"text-{_hash_json(cache_key)[:16]}")
    cached = _load_cache_entry(entry_path, cache_key, need_doc_ids)
    if cached is not None:
      return (*cached, entry_path, True)
  tokens_NxS, doc_ids_N, counts = _build_sequences(source, tokenizer, seq_len)
  manifest = {"key": cache_key, "tokenizer_kind": tokenizer.kind,
              "vocab_size": tokenizer.vocab_size, "seq_len": int(seq_len),
              "dtype": tokens_NxS.dtype.name, **counts}
  manifest = json.loads(json.dumps(manifest))  # The same types as a manifest read from disk.
  if entry_path is not None:
    with _writing_cache(cache_dir):
      _save_cache_entry(entry_path, tokens_NxS, doc_ids_N, manifest)
    tokens_NxS = np.load(os.path.join(entry_path, _TOKENS_FILENAME), mmap_mode="r")
  return tokens_NxS, doc_ids_N, manifest, entry_path, False


def _load_cache_entry(entry_path: str, cache_key: dict[str, Any], need_doc_ids: bool = False,
                      ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]] | None:
  """The cached tokens, document ids and manifest if the entry is complete and made from the
  same inputs. An entry without document ids (written before they were kept) serves a split by
  sequence as it is (doc ids None), and is made again for a split by document: the same tokens,
  so the manifest key and every model trained on them stay valid."""
  manifest_path = os.path.join(entry_path, _MANIFEST_FILENAME)
  tokens_path = os.path.join(entry_path, _TOKENS_FILENAME)
  doc_ids_path = os.path.join(entry_path, _DOC_IDS_FILENAME)
  if not (os.path.isfile(manifest_path) and os.path.isfile(tokens_path)):
    return None
  if need_doc_ids and not os.path.isfile(doc_ids_path):
    return None
  try:
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
    # Round-trip the key through json so tuples compare equal to the lists stored.
    if not isinstance(manifest, dict) or manifest.get("key") != json.loads(json.dumps(cache_key)):
      return None
    tokens_NxS = np.load(tokens_path, mmap_mode="r")
    doc_ids_N = np.load(doc_ids_path) if os.path.isfile(doc_ids_path) else None
  except (OSError, ValueError, EOFError) as e:
    # A damaged entry (a cut copy, a full disk) is built again and overwritten, rather than
    # failing every later run with an error that does not name the cache.
    warnings.warn(f"the cache entry {entry_path} does not load ({e}); building it again")
    return None
  if (tokens_NxS.shape != (manifest["num_sequences"], manifest["seq_len"])
      or (doc_ids_N is not None and doc_ids_N.shape != (manifest["num_sequences"],))):
    return None
  return tokens_NxS, doc_ids_N, manifest


def _save_cache_entry(entry_path: str, tokens_NxS: np.ndarray, doc_ids_N: np.ndarray,
                      manifest: dict[str, Any]) -> None:
  """Arrays first, manifest last, each by rename: an entry with a manifest is complete."""
  os.makedirs(entry_path, exist_ok=True)
  for name, array in ((_TOKENS_FILENAME, tokens_NxS), (_DOC_IDS_FILENAME, doc_ids_N)):
    path = os.path.join(entry_path, name)
    with jsonio.swapped_in(path, f"{path}.tmp{os.getpid()}") as tmp:
      with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
  jsonio.write_atomic(os.path.join(entry_path, _MANIFEST_FILENAME), manifest)


# ---------------------------------------------------------------------------------------------
# Pools.


def split_pools(num_sequences: int, pool_sizes: PoolSizes, seed: int,
                doc_ids: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train_idx, heldout_idx, reference_idx): disjoint int32 row indices drawn by the seed.

  Without doc_ids the pools are drawn row by row. With doc_ids (a document id per row) they are
  drawn by document: in a seeded order, documents go to the held-out pool until their rows fill
  it, then to the reference pool. Each pool is a seeded sample of its documents' rows (so its
  first rows come from many documents); the excess, less than one document's worth, is left
  unused, and no document has rows in two pools. The training pool is drawn from the rows of the
  remaining documents.
  """
  _validate_pool_sizes(pool_sizes)
  if doc_ids is not None:
    return _split_pools_by_document(np.asarray(doc_ids), pool_sizes, seed)
  num_fixed = pool_sizes.heldout + pool_sizes.reference
  num_train = num_sequences - num_fixed if pool_sizes.train is None else pool_sizes.train
  num_requested = num_fixed + max(num_train, 1)
  if num_train < 1 or num_requested > num_sequences:
    raise ValueError(
        f"the corpus has {num_sequences} distinct sequences, but the pools ask for "
        f"{num_requested} (train {pool_sizes.train if pool_sizes.train is not None else 'rest'}, "
        f"heldout {pool_sizes.heldout}, reference {pool_sizes.reference}, train at least 1); "
        "lower the pools, lower seq_len or use a larger corpus.")
  permutation = np.random.default_rng(seed).permutation(num_sequences).astype(np.int32)
  heldout_end = pool_sizes.heldout
  reference_end = heldout_end + pool_sizes.reference
  heldout_idx = permutation[:heldout_end]
  reference_idx = permutation[heldout_end:reference_end]
  train_idx = permutation[reference_end:reference_end + num_train]
  return train_idx, heldout_idx, reference_idx


def _split_pools_by_document(doc_ids_N: np.ndarray, pool_sizes: PoolSizes, seed: int,
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  docs, doc_of_row = np.unique(doc_ids_N, return_inverse=True)
  rank_of_doc = np.empty(len(docs), np.int64)
  rank_of_doc[rng.permutation(len(docs))] = np.arange(len(docs))
  rows_by_rank = np.argsort(rank_of_doc[doc_of_row], kind="stable")  # rows, documents in order
  rows_per_rank = np.bincount(rank_of_doc[doc_of_row], minlength=len(docs))
  rows_before_rank = np.concatenate([[0], np.cumsum(rows_per_rank)])

  def whole_documents(first_rank: int, size: int) -> int:
    """The rank after the fewest documents from first_rank that hold `size` rows."""
    if size == 0 or first_rank > len(docs):  # nothing to take, or nothing left to take from
      return first_rank
    return int(np.searchsorted(rows_before_rank, rows_before_rank[first_rank] + size))

  heldout_end = whole_documents(0, pool_sizes.heldout)
  reference_end = whole_documents(heldout_end, pool_sizes.reference)
  num_left = len(doc_ids_N) - int(rows_before_rank[min(reference_end, len(docs))])
  num_train = num_left if pool_sizes.train is None else pool_sizes.train
  if reference_end > len(docs) or num_left < max(num_train, 1):
    raise ValueError(
        f"split by document, the corpus's {len(doc_ids_N)} distinct sequences from {len(docs)} "
        f"documents do not hold the pools (heldout {pool_sizes.heldout}, reference "
        f"{pool_sizes.reference}, train "
        f"{pool_sizes.train if pool_sizes.train is not None else 'rest, at least 1'}): the "
        f"held-out and reference pools take {min(reference_end, len(docs))} whole documents and "
        f"leave {max(num_left, 0)} sequences; lower the pools, use a larger corpus or split by "
        "sequence.")

  def pool(first_rank: int, end_rank: int, size: int) -> np.ndarray:
    rows = rows_by_rank[rows_before_rank[first_rank]:rows_before_rank[end_rank]]
    return rng.permutation(rows)[:size].astype(np.int32)

  heldout_idx = pool(0, heldout_end, pool_sizes.heldout)
  reference_idx = pool(heldout_end, reference_end, pool_sizes.reference)
  train_idx = pool(reference_end, len(docs), num_train)
  return train_idx, heldout_idx, reference_idx


def _window_hashes(tokens_NxS: np.ndarray, span: int) -> np.ndarray:
  """uint64 polynomial hash of every `span`-token window of every row: [N, S - span + 1]."""
  tokens = np.asarray(tokens_NxS).astype(np.uint64)
  num_windows = tokens.shape[1] - span + 1
  hashes = np.zeros((tokens.shape[0], num_windows), np.uint64)
  base = np.uint64(1_000_003)
  for j in range(span):  # arithmetic mod 2^64; a collision between distinct spans is ~2^-64
    hashes = hashes * base + tokens[:, j:j + num_windows]
  return hashes


def span_overlap(tokens_NxS: np.ndarray, query_idx: np.ndarray, pool_idx: np.ndarray,
                 span: int, chunk_rows: int = 8192) -> float:
  """Fraction of the query rows that share at least one contiguous `span`-token window (at any
  position) with some row of the pool.

  Pools are disjoint by sequence and exact duplicates are dropped, but a document repeated at
  another token alignment, or boilerplate shared by documents, still puts member text into
  held-out sequences; this says how much (used for text_dataset.json).
  """
  if not 1 <= span <= tokens_NxS.shape[1]:
    raise ValueError(f"span must be in [1, {tokens_NxS.shape[1]}], got {span}")
  if len(query_idx) == 0:
    return float("nan")
  query_hashes = _window_hashes(tokens_NxS[np.sort(query_idx)], span)
  unique_hashes = np.unique(query_hashes)  # sorted once; each pool chunk is looked up in it
  seen = np.zeros(unique_hashes.shape, bool)
  pool_idx = np.sort(pool_idx)
  for start in range(0, len(pool_idx), chunk_rows):  # bounded memory for a large pool
    pool_hashes = _window_hashes(tokens_NxS[pool_idx[start:start + chunk_rows]], span).ravel()
    at = np.minimum(np.searchsorted(unique_hashes, pool_hashes), unique_hashes.size - 1)
    seen[at[unique_hashes[at] == pool_hashes]] = True
  found = seen[np.searchsorted(unique_hashes, query_hashes)]
  return float(found.any(axis=1).mean())


# ---------------------------------------------------------------------------------------------
# Workdir and helpers.


def _save_to_workdir(dataset: TextDataset, pool_sizes: PoolSizes, seed: int, workdir: str) -> None:
  write_workdir_summary(workdir, dataset, pool_sizes, seed, dataset.train_idx, dataset.heldout_idx,
                        dataset.reference_idx, dataset.pool_split)


def write_workdir_summary(workdir: str, dataset: TextDataset, pool_sizes: PoolSizes, seed: int,
                          train_idx: np.ndarray, heldout_idx: np.ndarray,
                          reference_idx: np.ndarray, pool_split: str,
                          source_description: str | None = None) -> dict[str, Any]:
  """Saves the tokenizer and text_dataset.json (enough to rebuild the same dataset and pools,
  and how much held-out text the training pool shares) into workdir; returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  tokenizer_path = dataset.tokenizer.save_to_workdir(workdir)
  path = os.path.join(workdir, _WORKDIR_SUMMARY_FILENAME)
  summary = {"manifest": json.loads(json.dumps(dataset.manifest)), "seed": int(seed),
             "pool_sizes": dataclasses.asdict(pool_sizes),
             **pool_summary(dataset.doc_ids, train_idx, heldout_idx, reference_idx, pool_split),
             "tokenizer_file": os.path.basename(tokenizer_path), "cache_path": dataset.cache_path}
  if source_description is not None:
    summary["source"] = source_description
  summary["heldout_overlap_with_train_pool"] = _heldout_overlap(
      dataset.tokens, train_idx, heldout_idx, summary, path)
  jsonio.write_atomic(path, summary)
  return summary


def _heldout_overlap(tokens_NxS: np.ndarray, train_idx: np.ndarray, heldout_idx: np.ndarray,
                     summary: dict[str, Any], path: str) -> dict[str, float]:
  """{span_<k>: fraction of held-out sequences sharing k tokens with the training pool}, for k =
  S/4 and S/2; reused from the summary at `path` when it describes the same dataset and pools (it
  takes about a minute a span for a pool of millions of sequences)."""
  # Disjoint pools can still share text (a document repeated at another alignment, shared
  # boilerplate): the held-out baseline of test loss, extraction and membership is only as
  # clean as this.
  seq_len = tokens_NxS.shape[1]
  spans = sorted({max(1, seq_len // 4), max(1, seq_len // 2)})
  try:
    with open(path, encoding="utf-8") as f:
      before = json.load(f)
  except (OSError, ValueError):
    before = {}
  before.setdefault("pool_split", "sequence")  # written before the split could be chosen
  same = all(before.get(k) == summary[k] for k in ("manifest", "seed", "pool_sizes", "pool_split"))
  stored = before.get("heldout_overlap_with_train_pool") or {}
  if same and set(stored) == {f"span_{k}" for k in spans}:
    return {f"span_{k}": stored[f"span_{k}"] for k in spans}  # shortest span first, as computed
  return {f"span_{k}": span_overlap(tokens_NxS, heldout_idx, train_idx, k) for k in spans}


def describe_overlap(overlap: dict[str, float]) -> str:
  """'29.9% (16 tokens), 8.7% (32 tokens)' from a heldout_overlap_with_train_pool entry."""
  return ", ".join(f"{v:.1%} ({k.removeprefix('span_')} tokens)" for k, v in overlap.items())


def pool_summary(doc_ids_N: np.ndarray | None, train_idx: np.ndarray, heldout_idx: np.ndarray,
                 reference_idx: np.ndarray, pool_split: str) -> dict[str, Any]:
  """Sizes of the pools in sequences and in documents (for text_dataset.json; documents None
  when a cache entry from before document ids were kept was reused)."""
  pools = {"train": train_idx, "heldout": heldout_idx, "reference": reference_idx}
  return {"pool_split": pool_split,
          **{f"num_{name}": int(len(idx)) for name, idx in pools.items()},
          "documents": None if doc_ids_N is None else
          {name: int(np.unique(doc_ids_N[idx]).size) for name, idx in pools.items()}}


def _hash_json(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


