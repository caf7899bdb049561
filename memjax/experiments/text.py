"""Text memorization (Morris et al. 2025, section 5): real corpora, reference models, double
descent, extraction and which samples are memorized.

`python -m memjax.main --config=configs/text.py --workdir=runs/text` runs it:

1. Data: `data.build_text_dataset` reads the corpus, tokenizes it (trained BPE, a tokenizer.json,
   or bytes), cuts S-token sequences, drops exact duplicates and caches them; the pools are then
   drawn by `data.seed`: held-out (non-members: test loss, extraction), reference (set aside) and
   the training pool of P sequences.
2. Models: for every shape (layers x d_model x precision) one stack holds a model for each
   dataset size N of the grid and each seed, plus the shape's *reference*: the same shape trained
   on the whole training pool (N = P, the first seed). A model with seed s and N members trains on
   the first N of a permutation of the training pool seeded by (data.seed, s), so within a seed a
   smaller training set is a subset of a larger one, and the reference holds every one of them.
3. Scores: every model scores its own members and the held-out test set with the likelihood
   kernel; the references score the whole training pool (their members).
4. References: per shape, `same_size` is its full-pool model; the `oracle` is the full-pool model,
   over all shapes, with the lowest held-out loss (the best compressor of the data). For a model
   and each reference, per training sample x,

       mem(x) = max(0, log2 p(x | model) - log2 p(x | reference))

   summed over the model's members (mem_bits_same_size, mem_bits_oracle; the unclipped sums
   too); ref_bits = -sum log2 p(x | reference) is the dataset size in bits under that reference.
   `reference.primary` picks the one reported as mem_bits / dataset_bits.
5. Double descent: train and test loss against dataset_bits / capacity, capacity =
   reference.alpha x parameters (or, with alpha = 0, the shape's measured maximum memorization).
6. Extraction (`extraction.py`): greedy continuation from prefixes of extraction.prefix_lengths
   tokens of each model's own members (the first extraction.member_samples of them) and of
   extraction.nonmember_samples held-out sequences; exact-match rate and token-match fraction.
7. TF-IDF (`tfidf.py`, IDF over the training pool's sequences) of each member against its
   memorization: Spearman correlation per model, and the top memorized samples as text.

Outputs in the workdir: results.jsonl (one row per model), summary.json, figures,
top_memorized.txt, text_dataset.json + the tokenizer, and text_stacks/ (per stack: the scores and,
with sweep.save_params, the trained parameters). A rerun skips every stack whose scores are there
(and does not retrain a stack whose parameters are there) and rebuilds the rows, summary and
figures.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from memjax import config as config_lib
from memjax import report
from memjax import schema
from memjax.estimators import extraction
from memjax.engine import checkpoint
from memjax.engine import jsonio
from memjax.engine import params_store
from memjax.engine import run as run_lib
from memjax import likelihood
from memjax.model import gpt2
from memjax.engine import sweep
from memjax.estimators import tfidf as tfidf_lib
from memjax import train as train_lib
from memjax.config import ConfigError
from memjax.data import corpus as corpus_lib
from memjax.data import text as text_lib
from memjax.data import tokenize as tokenize_lib
from memjax.train import ModelSpec, TrainConfig

REFERENCES = ("same_size", "oracle")
DEFAULT_ALPHA = 3.6
# Bump when what is stored per stack changes, so old files are not reused.
_STACK_FORMAT = 1

Field = config_lib.Field
SCHEMA = schema.Schema((
    config_lib.experiment_field("text"), config_lib.QUIET,
    Field("data.source", "str", "where the documents come from", allowed=corpus_lib.SOURCE_KINDS),
    Field("data.paths", "paths", "txt/jsonl/parquet: files, directories or globs"),
    Field("data.text_field", "str", "jsonl key, parquet column or TFDS feature of the text"),
    Field("data.txt_split", "str", "txt: a document a file, or one between blank lines",
          allowed=corpus_lib.TXT_SPLITS),
    Field("data.tfds_name", "str", "tfds: the dataset, e.g. wiki40b/en (prepared; no download)"),
    Field("data.tfds_split", "str", "tfds: the split", allow_empty=False),
    Field("data.tfds_data_dir", "path", "tfds: where it is prepared"),
    Field("data.doc_packages", "strs", "stdlib_docs: packages read after the standard library"),
    Field("data.max_documents", "int", "documents read at most; 0: all", minimum=0),
    Field("data.tokenizer", "str", "a BPE trained on the corpus, a tokenizer.json, or bytes",
          allowed=tokenize_lib.TOKENIZER_KINDS),
    Field("data.tokenizer_path", "path", "tokenizer=file: the tokenizer.json"),
    Field("data.vocab_size", "int", f"tokenizer=bpe: tokens to train ({tokenize_lib.MIN_BPE_VOCAB}"
          f"..{tokenize_lib.MAX_BPE_VOCAB})", minimum=0),
    Field("data.bpe_min_frequency", "int", "tokenizer=bpe: a pair must occur this often to be "
          "merged"),
    Field("data.bpe_max_train_chars", "int", "tokenizer=bpe: characters it trains on; 0: all",
          minimum=0),
    Field("data.seq_len", "int", "S, tokens a sequence", minimum=2, maximum=65536),
    Field("data.train_pool", "int", "the references' full training set; 0: all the other pools "
          "leave", minimum=0),
    Field("data.heldout_pool", "int", "non-members: test loss and extraction"),
    Field("data.reference_pool", "int", "set aside (reference models of other experiments)",
          minimum=0),
    config_lib.POOL_SPLIT,
    Field("data.seed", "int", "draws the pools and, with each model's seed, its members",
          minimum=0),
    Field("data.cache_dir", "path", "the dataset cache; empty: <workdir>/cache"),
    config_lib.NUM_HEADS,
    Field("sweep.layers", "ints", "numbers of layers to sweep"),
    Field("sweep.d_model", "ints", "widths to sweep"),
    Field("sweep.precisions", "strs", "fp32, bf16 or bf16-mixed, a stack each",
          allowed=config_lib.PRECISIONS),
    Field("sweep.dataset_sizes", "ints", "N, members of a model; each shape also trains its "
          "reference on the whole pool"),
    Field("sweep.seeds", "ints", "seeds (init and members), one model each", minimum=0),
    Field("sweep.models_per_stack", "int",
          "models trained as one stack; 0: as many of a shape as fit the devices", minimum=0),
    Field("sweep.save_params", "bool", "keep trained parameters in <workdir>/text_stacks"),
    *config_lib.TRAIN_FIELDS,
    Field("eval.batch_size", "int", "sequences a scoring call"),
    Field("eval.test_size", "int", "held-out sequences for the test loss"),
    Field("reference.primary", "str", "the reference of mem_bits and dataset_bits",
          allowed=REFERENCES),
    Field("reference.alpha", "float", "capacity = alpha x params; 0: measured, the shape's "
          "largest memorization", strict=False),
    Field("extraction.prefix_lengths", "ints", "prefix tokens to continue greedily, each < "
          "data.seq_len; empty: no extraction", allow_empty=True),
    Field("extraction.member_samples", "int", "each model's own members, at most", minimum=0),
    Field("extraction.nonmember_samples", "int", "held-out sequences", minimum=0),
    Field("extraction.batch_size", "int", "prefixes a decoding call"),
    Field("analysis.top_k", "int", "top memorized samples a shape in top_memorized.txt",
          minimum=0),
))


@dataclasses.dataclass(frozen=True)
class TextSettings:
  source: text_lib.SourceConfig
  tokenizer: text_lib.TokenizerConfig
  seq_len: int
  train_pool: int | None  # None: every sequence the other pools leave
  heldout_pool: int
  reference_pool: int
  pool_split: str  # "sequence" or "document" (text_lib.POOL_SPLITS)
  data_seed: int
  cache_dir: str  # "": <workdir>/cache
  num_heads: int
  layers: tuple
  d_model: tuple
  precisions: tuple
  dataset_sizes: tuple
  seeds: tuple
  models_per_stack: int  # 0: a shape's models in stacks as large as fit the device memory
  save_params: bool
  train: TrainConfig
  eval_batch_size: int
  test_size: int
  reference_primary: str
  alpha: float  # 0: capacity measured as the shape's largest memorization
  prefix_lengths: tuple
  member_samples: int
  nonmember_samples: int
  extraction_batch_size: int
  top_k: int
  quiet: bool


# ---------------------------------------------------------------------------------------------
# Validation.


_fail = config_lib._fail


def validate(config) -> TextSettings:
  """Check a text config and turn it into settings; raises ConfigError naming the field.

  Checks every value and the files that can be checked without reading them (source paths,
  tokenizer file); the checks that need the corpus (its size against the pools and N) run right
  after the dataset is built, before anything is trained.
  """
  v = schema.read(config, SCHEMA)
  config_lib.refuse_unused_paths(config, v["data.source"],
                                 file_kinds=tuple(corpus_lib.FILE_EXTENSIONS))
  _check_source(v)
  _check_tokenizer(v)
  config_lib.check_divisible(v["sweep.d_model"], v["model.num_heads"])
  _check_pools(v)
  vocab, max_chars = v["data.vocab_size"], v["data.bpe_max_train_chars"]
  return TextSettings(
      source=text_lib.SourceConfig(
          kind=v["data.source"], paths=v["data.paths"], text_field=v["data.text_field"],
          txt_split=v["data.txt_split"], name=v["data.tfds_name"] or None,
          split=v["data.tfds_split"], data_dir=v["data.tfds_data_dir"] or None,
          doc_packages=v["data.doc_packages"], max_documents=v["data.max_documents"] or None),
      tokenizer=text_lib.TokenizerConfig(
          kind=v["data.tokenizer"], path=v["data.tokenizer_path"] or None,
          vocab_size=vocab if v["data.tokenizer"] == "bpe" else None,
          min_frequency=v["data.bpe_min_frequency"], max_train_chars=max_chars or None),
      seq_len=v["data.seq_len"], train_pool=v["data.train_pool"] or None,
      heldout_pool=v["data.heldout_pool"], reference_pool=v["data.reference_pool"],
      pool_split=v["data.pool_split"], data_seed=v["data.seed"], cache_dir=v["data.cache_dir"],
      num_heads=v["model.num_heads"], layers=v["sweep.layers"], d_model=v["sweep.d_model"],
      precisions=v["sweep.precisions"], dataset_sizes=tuple(sorted(v["sweep.dataset_sizes"])),
      seeds=v["sweep.seeds"], models_per_stack=v["sweep.models_per_stack"],
      save_params=v["sweep.save_params"], train=config_lib.train_settings(v),
      eval_batch_size=v["eval.batch_size"], test_size=v["eval.test_size"],
      reference_primary=v["reference.primary"], alpha=v["reference.alpha"],
      prefix_lengths=tuple(sorted(v["extraction.prefix_lengths"])),
      member_samples=v["extraction.member_samples"],
      nonmember_samples=v["extraction.nonmember_samples"],
      extraction_batch_size=v["extraction.batch_size"], top_k=v["analysis.top_k"],
      quiet=v["quiet"])


def _check_source(v):
  """A file source needs files that exist and the field of the text; tfds a dataset name."""
  kind, paths = v["data.source"], v["data.paths"]
  if kind in corpus_lib.FILE_EXTENSIONS:
    if not paths:
      _fail("data.paths", f"data.source={kind!r} reads files: give files, directories or globs")
    if not v["data.text_field"] and kind != "txt":
      _fail("data.text_field", f"data.source={kind!r} needs the field that holds the text")
    try:
      corpus_lib.resolve_paths(paths, corpus_lib.FILE_EXTENSIONS[kind])
    except FileNotFoundError as e:
      _fail("data.paths", str(e))
  if kind == "tfds":
    if not v["data.tfds_name"]:
      _fail("data.tfds_name", "data.source='tfds' needs the dataset name, e.g. 'wiki40b/en'")
    if not v["data.text_field"]:
      _fail("data.text_field", "data.source='tfds' needs the feature that holds the text")


def _check_tokenizer(v):
  tok_kind, tok_path, vocab = v["data.tokenizer"], v["data.tokenizer_path"], v["data.vocab_size"]
  if tok_kind == "file":
    if not tok_path:
      _fail("data.tokenizer_path", "data.tokenizer='file' needs the path of a tokenizer.json")
    if not os.path.isfile(tok_path):
      _fail("data.tokenizer_path", f"the tokenizer file {tok_path!r} does not exist; fix the path")
  if tok_kind == "bpe" and not (tokenize_lib.MIN_BPE_VOCAB <= vocab <= tokenize_lib.MAX_BPE_VOCAB):
    _fail("data.vocab_size",
          f"a byte-level BPE needs {tokenize_lib.MIN_BPE_VOCAB} (256 bytes + 1 merge) to "
          f"{tokenize_lib.MAX_BPE_VOCAB} tokens, got {vocab}; change it, or set "
          "data.tokenizer='bytes' (V=256)")


def _check_pools(v):
  """N, the test set and the extraction non-members fit their pools; prefixes the sequence."""
  train_pool, heldout = v["data.train_pool"], v["data.heldout_pool"]
  largest = max(v["sweep.dataset_sizes"])
  if train_pool and largest > train_pool:
    _fail("sweep.dataset_sizes", f"dataset size {largest} is larger than the training pool "
                                 f"data.train_pool={train_pool}; lower it or raise the pool")
  if v["eval.test_size"] > heldout:
    _fail("eval.test_size", f"{v['eval.test_size']} test sequences do not fit the held-out pool "
                            f"data.heldout_pool={heldout}; lower it or raise the pool")
  prefixes = v["extraction.prefix_lengths"]
  for p in prefixes:
    if p >= v["data.seq_len"]:
      _fail("extraction.prefix_lengths",
            f"each prefix must be shorter than data.seq_len={v['data.seq_len']}, got {p}")
  nonmembers = v["extraction.nonmember_samples"]
  if prefixes and nonmembers > heldout:  # without prefixes nothing is extracted
    _fail("extraction.nonmember_samples",
          f"{nonmembers} non-members do not fit the held-out pool data.heldout_pool={heldout}; "
          "lower it or raise the pool")


# ---------------------------------------------------------------------------------------------
# Data.

def _data_error(settings: TextSettings, error: Exception) -> ConfigError:
  return config_lib.data_error(error, settings.source.kind in corpus_lib.FILE_EXTENSIONS)


@dataclasses.dataclass
class Data:
  dataset: text_lib.TextDataset
  train_idx: np.ndarray  # the training pool: row indices into dataset.tokens, [P]
  heldout_idx: np.ndarray
  reference_idx: np.ndarray
  identity: str  # hash of the tokens and pools, part of every model key


def load_data(settings: TextSettings, workdir: str) -> Data:
  """Build (or load from the cache) the dataset and draw the pools; ConfigError on bad input."""
  cache_dir = settings.cache_dir or os.path.join(workdir, "cache")
  try:
    dataset = text_lib.build_text_dataset(
        settings.source, settings.tokenizer, settings.seq_len, text_lib.PoolSizes(),
        settings.data_seed, cache_dir=cache_dir, pool_split=settings.pool_split)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise _data_error(settings, e) from e
  check_dataset(settings, dataset)
  pools = text_lib.PoolSizes(train=settings.train_pool, heldout=settings.heldout_pool,
                             reference=settings.reference_pool)
  by_document = settings.pool_split == "document"
  try:
    train_idx, heldout_idx, reference_idx = text_lib.split_pools(
        dataset.num_sequences, pools, settings.data_seed,
        dataset.doc_ids if by_document else None)
  except ValueError as e:  # only a split by document gets past check_dataset
    _fail("data.pool_split", str(e))
  if by_document and settings.dataset_sizes[-1] > train_idx.size:  # whole documents left fewer
    _fail("sweep.dataset_sizes",
          f"dataset size {settings.dataset_sizes[-1]:,} is larger than the training pool: split "
          f"by document, the held-out and reference pools take whole documents and leave "
          f"{train_idx.size:,} sequences; lower the dataset sizes or the pools, or use a larger "
          "corpus")
  identity = {"dataset": dataset.manifest["key"], "pools": dataclasses.asdict(pools),
              "seed": settings.data_seed, "members": "perm(data.seed, seed)[:N]"}
  if by_document:  # only then: models of runs split by sequence keep their keys
    identity["pool_split"] = "document"
  identity = _hash(identity)
  summary = text_lib.write_workdir_summary(
      workdir, dataset, pools, settings.data_seed, train_idx, heldout_idx, reference_idx,
      settings.pool_split, corpus_lib.describe_source(settings.source))
  logging.info("held-out sequences sharing a span with the training pool: %s",
               text_lib.describe_overlap(summary["heldout_overlap_with_train_pool"]))
  return Data(dataset, train_idx, heldout_idx, reference_idx, identity)


def check_dataset(settings: TextSettings, dataset: text_lib.TextDataset):
  """The checks that need the corpus: pools and dataset sizes against its sequences."""
  n = dataset.num_sequences
  fixed = settings.heldout_pool + settings.reference_pool
  where = (f"the corpus ({corpus_lib.describe_source(settings.source)}) has {n:,} distinct "
           f"sequences of {settings.seq_len} tokens")
  if settings.train_pool is not None and settings.train_pool + fixed > n:
    _fail("data.train_pool",
          f"{where}, but data.train_pool + data.heldout_pool + data.reference_pool = "
          f"{settings.train_pool:,} + {settings.heldout_pool:,} + {settings.reference_pool:,}; "
          "lower them, lower data.seq_len or use a larger corpus")
  available = n - fixed
  if available < 1:
    _fail("data.heldout_pool",
          f"{where}, and data.heldout_pool + data.reference_pool = {fixed:,} leave none to "
          "train on; lower them or use a larger corpus")
  if settings.train_pool is None and settings.dataset_sizes[-1] > available:
    _fail("sweep.dataset_sizes",
          f"dataset size {settings.dataset_sizes[-1]:,} is larger than the training pool: {where}"
          f", {available:,} left after the held-out and reference pools; lower the dataset sizes "
          "or the pools, or use a larger corpus")
  if dataset.vocab_size < 2:
    _fail("data.tokenizer", f"the tokenizer has {dataset.vocab_size} tokens; a model needs >= 2")


# ---------------------------------------------------------------------------------------------
# Plan: shapes, models, stacks.


@dataclasses.dataclass(frozen=True)
class Member:
  """One model of the sweep."""
  shape: gpt2.ModelConfig
  spec: ModelSpec
  is_reference: bool  # the shape's full-pool model
  in_grid: bool  # its N is one of sweep.dataset_sizes

  @property
  def name(self):
    s = self.shape
    return (f"L{s.layers} d{s.d_model} {s.precision} N={self.spec.dataset_size} "
            f"seed={self.spec.seed}")


def shape_label(shape):
  return f"L{shape.layers} d{shape.d_model} {shape.precision}"


def model_shapes(settings, vocab_size):
  return [gpt2.ModelConfig(vocab_size, settings.seq_len, l, d, settings.num_heads, p)
          for p in settings.precisions for l in settings.layers for d in settings.d_model]


def shape_members(settings, shape, pool_size):
  """The grid (N x seeds) and the full-pool reference of one shape; the reference comes first."""
  lr = settings.train.learning_rate
  ref = ModelSpec(pool_size, settings.seeds[0], lr)
  members = [Member(shape, ref, True, pool_size in settings.dataset_sizes)]
  for seed in settings.seeds:
    for n in settings.dataset_sizes:
      spec = ModelSpec(n, seed, lr)
      if spec != ref:
        members.append(Member(shape, spec, False, True))
  return members


def member_positions(settings, pool_size, seed, n):
  """Positions in the training pool of a model's N members: perm(data.seed, seed)[:N]."""
  rng = np.random.default_rng([settings.data_seed, seed])
  return rng.permutation(pool_size)[:n].astype(np.int32)


def model_key(member, tcfg, data_identity):
  """A stable id of everything that determines a trained model: shape, N, seed, training, data."""
  return sweep.model_key(member.shape, member.spec, tcfg, extra=("text", data_identity))


def _hash(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _stacks(settings, members):
  """A shape's models cut into stacks: of sweep.models_per_stack, or (0) as many as fit the
  local devices' memory by the engine's estimate (sweep.models_that_fit)."""
  size = settings.models_per_stack or min(len(members), sweep.models_that_fit(
      members[0].shape, settings.train, settings.eval_batch_size, jax.local_devices()))
  return [members[i:i + size] for i in range(0, len(members), size)]


# ---------------------------------------------------------------------------------------------
# Training and scoring one stack.


def score_members(cfg, params_M, member_rows, corpus_NxS, batch, vocab_chunk, progress=None):
  """log2 p of each model's own members: a list of [N_m] float64 arrays (sequence sums).

  Windows of `batch` member positions are scored by the models that still have members there
  (the largest N first), so no model scores padding beyond its N.
  """
  sizes = np.array([len(r) for r in member_rows])
  order = np.argsort(-sizes, kind="stable")
  out = [np.zeros(n, np.float64) for n in sizes]
  batch = max(1, min(batch, int(sizes.max())))
  current_k, params_k = None, None
  for start in range(0, int(sizes.max()), batch):
    k = int((sizes > start).sum())
    if k != current_k:
      idx = jnp.asarray(order[:k])
      params_k = jax.tree.map(lambda a: a[idx], params_M)
      current_k = k
    positions = np.arange(start, start + batch)
    rows_KxB = np.stack([member_rows[i][np.minimum(positions, sizes[i] - 1)] for i in order[:k]])
    tokens_KxBxS = jnp.take(corpus_NxS, jnp.asarray(rows_KxB), axis=0).astype(jnp.int32)
    logp = likelihood.stack_token_logprobs(cfg, params_k, tokens_KxBxS, vocab_chunk)
    seq_KxB = np.asarray(logp.sum(-1), np.float64)
    for j, i in enumerate(order[:k]):
      stop = min(start + batch, sizes[i])
      out[i][start:stop] = seq_KxB[j, :stop - start]
    if progress is not None:
      progress(int(sum(min(batch, sizes[i] - start) for i in order[:k])))
  return out


def score_shared(cfg, params_M, rows, corpus_NxS, batch, vocab_chunk):
  """log2 p [M, len(rows)] (sequence sums) of shared rows under every model."""
  m = jax.tree.leaves(params_M)[0].shape[0]
  out = np.zeros((m, len(rows)), np.float64)
  if len(rows) == 0:
    return out
  batch = max(1, min(batch, len(rows)))
  for start in range(0, len(rows), batch):
    stop = min(start + batch, len(rows))
    idx = rows[np.minimum(np.arange(start, start + batch), len(rows) - 1)]
    tokens_BxS = jnp.take(corpus_NxS, jnp.asarray(idx), axis=0).astype(jnp.int32)
    logp = likelihood.shared_token_logprobs(cfg, params_M, tokens_BxS, vocab_chunk)
    out[:, start:stop] = np.asarray(logp.sum(-1), np.float64)[:, :stop - start]
  return out


def _load_trained(stack_dir, template_fn, label):
  """(steps, diverged, params) of a stack trained by an earlier run, or None: none stored, or a
  stored file that does not load (reported; the stack is trained again). `template_fn()` gives
  parameters of the structure and dtypes stored (of any model count)."""
  params_path = stack_dir + ".params.npz"
  if not os.path.exists(params_path):
    return None
  try:
    with np.load(stack_dir + ".train_state.npz") as meta:
      steps_M, diverged_M = meta["steps"], meta["diverged"]
    return steps_M, diverged_M, params_store.read_stack(params_path, template_fn())
  except Exception as e:  # noqa: BLE001 - a truncated zip, a missing array, a foreign file
    logging.warning("%s: the stored parameters %s do not load (%s); training the stack again",
                    label, params_path, e)
    return None


def run_stack(settings, data, stack, corpus_NxS, stack_dir, label):
  """Train (or load the stored parameters of) one stack and score it.

  Returns (arrays, whether it was trained now); the arrays are also saved in stack_dir.
  """
  shape, tcfg = stack[0].shape, settings.train
  pool_size = data.train_idx.size
  positions = [member_positions(settings, pool_size, m.spec.seed, m.spec.dataset_size)
               for m in stack]
  member_rows = [data.train_idx[p] for p in positions]
  specs = [m.spec for m in stack]
  params_path = stack_dir + ".params.npz"
  start = time.time()
  n = len(stack)
  stored = _load_trained(stack_dir, lambda: train_lib.init_stack_from_specs(
      shape, tcfg, specs[:1], member_rows[:1]).params, label)
  trained = stored is None
  if not trained:
    steps_M, diverged_M, params_M = stored
    logging.info("%s: loaded trained parameters from %s", label, params_path)
  else:
    keys = [model_key(m, tcfg, data.identity) for m in stack]
    stack_run = run_lib.train_stack(shape, tcfg, specs, stack_dir + ".checkpoints", keys,
                                    label=label, quiet=settings.quiet, members=member_rows,
                                    corpus_NxS=corpus_NxS)
    state = stack_run.state
    params_M = run_lib.own_models(state.params, n)
    steps_M = np.asarray(state.step_M)[:n]
    diverged_M = np.asarray(state.diverged_M)[:n]
    if settings.save_params:
      jsonio.savez_atomic(stack_dir + ".train_state.npz", steps=steps_M, diverged=diverged_M)
      params_store.write_stack(params_path, params_M)
  train_s = time.time() - start

  vocab_chunk = tcfg.vocab_chunk
  total = sum(len(r) for r in member_rows)
  with tqdm(total=total, desc=f"score {label}", unit="seq", disable=settings.quiet,
            leave=False) as bar:
    member_logp = score_members(shape, params_M, member_rows, corpus_NxS,
                                settings.eval_batch_size, vocab_chunk, bar.update)
  test_rows = data.heldout_idx[:settings.test_size]
  test_logp = score_shared(shape, params_M, test_rows, corpus_NxS, settings.eval_batch_size,
                           vocab_chunk)

  arrays = {
      "format": np.int32(_STACK_FORMAT),
      "steps": np.asarray(steps_M, np.int64), "diverged": np.asarray(diverged_M, bool),
      "member_logp": np.concatenate(member_logp),
      "member_sizes": np.array([len(r) for r in member_rows], np.int64),
      "test_logp": test_logp,
  }
  if settings.prefix_lengths:
    tokens_np = data.dataset.tokens
    cap = settings.member_samples
    count_M = np.array([min(cap, len(r)) for r in member_rows], np.int64)
    ext_kwargs = dict(batch_size=settings.extraction_batch_size, vocab_chunk=vocab_chunk)
    nonmember_rows = data.heldout_idx[:settings.nonmember_samples]
    work = len(settings.prefix_lengths) * n * (cap + len(nonmember_rows))
    with tqdm(total=work, desc=f"extract {label}", unit="seq", disable=settings.quiet,
              leave=False) as bar:
      progress = lambda k: bar.update(k * n)
      if cap:
        rows_MxC = np.stack([r[np.minimum(np.arange(cap), len(r) - 1)] for r in member_rows])
        members_ext = extraction.extract(shape, params_M, tokens_np[rows_MxC],
                                         settings.prefix_lengths, progress=progress,
                                         **ext_kwargs)
      if len(nonmember_rows):
        test_ext = extraction.extract(shape, params_M, tokens_np[nonmember_rows],
                                      settings.prefix_lengths, progress=progress, **ext_kwargs)
    arrays["ext_member_count"] = count_M
    for p in settings.prefix_lengths:
      for split, ext in (("train", members_ext if cap else None),
                         ("test", test_ext if len(nonmember_rows) else None)):
        for score in ("exact", "token_match"):
          arrays[f"ext_{split}_{score}_p{p}"] = (ext[p][score] if ext is not None
                                                 else np.zeros((n, 0)))
  arrays["wall_s"] = np.float64(time.time() - start)
  arrays["train_s"] = np.float64(train_s)
  jsonio.savez_atomic(stack_dir + ".scores.npz", **arrays)
  return arrays, trained


def _load_scores(path):
  """A stack's stored scores, or None: of another format, or a file that does not load
  (reported; the stack is scored again)."""
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # noqa: BLE001 - a truncated zip, a foreign file
    logging.warning("the stored scores %s do not load (%s); scoring the stack again", path, e)
    return None
  if int(arrays.get("format", -1)) != _STACK_FORMAT:
    return None
  return arrays


def _score_settings(settings):
  """Everything besides the models that the stored scores depend on."""
  return {"test_size": settings.test_size, "prefix_lengths": settings.prefix_lengths,
          "member_samples": settings.member_samples,
          "nonmember_samples": settings.nonmember_samples, "format": _STACK_FORMAT}


# ---------------------------------------------------------------------------------------------
# Analysis: references, memorization, rows, summary.


@dataclasses.dataclass
class Scored:
  member: Member
  key: str
  positions: np.ndarray  # pool positions of its members
  member_logp: np.ndarray  # [N] log2 p of each member (sequence sums, bits)
  test_logp: np.ndarray  # [test_size]
  steps: int
  diverged: bool
  extraction: dict  # prefix -> split -> score -> per-sample array
  stack_wall_s: float


def _finite(x):
  x = float(x)
  return x if math.isfinite(x) else None


def _loss_nats(seq_logp, cfg):
  """Mean cross-entropy in nats per predicted token (positions 1..S-1), like the train loss."""
  if seq_logp.size == 0:
    return float("nan")
  predicted = -(seq_logp + math.log2(cfg.vocab_size))  # drop position 0's log2 V
  return float(predicted.mean() / (cfg.seq_len - 1) * math.log(2))


def analyze(settings, data, scored):
  """Rows (one per model) and the summary, from the scores of every stack."""
  refs, oracle, pool_logp, test_loss = _references(data, scored)
  pool_tfidf, pool_idf = _pool_tfidf(data)
  rows, per_sample = [], {}
  for s in scored:
    row, mem_samples = _row(settings, data, s, test_loss[id(s)]), {}
    row.update(_against_references(settings, s, {"same_size": refs[s.member.shape],
                                                  "oracle": oracle}, pool_logp, mem_samples))
    primary = mem_samples[settings.reference_primary]
    # Which samples: TF-IDF of each member against its memorization (under the primary reference).
    tf = pool_tfidf[s.positions]
    row["mean_tfidf"] = _finite(tf.mean())
    row.update(_spearman(tf, primary, "tfidf_spearman"))
    # Rarity alone (the mean idf of the tokens, without term frequency).
    row.update(_spearman(pool_idf[s.positions], primary, "idf_spearman"))
    rows.append(row)
    per_sample[s.key] = {"mem": primary, "tfidf": tf, "idf": pool_idf[s.positions]}
  capacity = _capacity(settings, rows)
  for row in rows:
    cap = capacity["by_shape"].get(_shape_of_row(row))
    row["capacity_bits"] = cap
    row["capacity_source"] = capacity["source"]
    row["dataset_bits_over_capacity"] = (row["dataset_bits"] / cap
                                         if cap and row["dataset_bits"] is not None else None)
  summary = _summary(settings, data, rows, refs, oracle, test_loss, capacity)
  return rows, summary, per_sample


def _references(data, scored):
  """Each shape's full-pool reference, the oracle (the reference of lowest test loss, None if
  every one diverged), each reference's log2 p over the pool, and every model's test loss."""
  pool_size = data.train_idx.size
  by_shape = collections.defaultdict(list)
  for s in scored:
    by_shape[s.member.shape].append(s)
  refs = {shape: next(s for s in group if s.member.is_reference)
          for shape, group in by_shape.items()}
  pool_logp = {}
  for shape, ref in refs.items():
    lp = np.full(pool_size, np.nan)
    lp[ref.positions] = ref.member_logp
    pool_logp[shape] = lp
  test_loss = {id(s): _loss_nats(s.test_logp, s.member.shape) for s in scored}
  candidates = [r for r in refs.values() if not r.diverged and math.isfinite(test_loss[id(r)])]
  oracle = min(candidates, key=lambda r: test_loss[id(r)]) if candidates else None
  if oracle is None:
    logging.warning("every full-pool reference model diverged: no oracle reference")
  return refs, oracle, pool_logp, test_loss


def _pool_tfidf(data):
  """Each training-pool sequence's mean TF-IDF and mean IDF (IDF over the pool)."""
  # In batches of rows, so a pool of millions of sequences needs little host memory.
  pool_size = data.train_idx.size
  tokens = data.dataset.tokens
  batches = [np.sort(data.train_idx[i:i + 65536]) for i in range(0, pool_size, 65536)]
  df = sum(tfidf_lib.document_frequency(tokens[b], data.dataset.vocab_size) for b in batches)
  idf = tfidf_lib.idf_from_document_frequency(df, pool_size)
  pool_tfidf = np.zeros(pool_size)
  pool_idf = np.zeros(pool_size)
  for i in range(0, pool_size, 65536):
    rows = np.asarray(tokens[data.train_idx[i:i + 65536]])
    pool_tfidf[i:i + 65536] = tfidf_lib.sample_tfidf(rows, idf)
    pool_idf[i:i + 65536] = tfidf_lib.mean_idf(rows, idf)
  return pool_tfidf, pool_idf


def _row(settings, data, s, test_loss):
  """A model's row without what its references give."""
  cfg, spec = s.member.shape, s.member.spec
  row = {
      "experiment": "text", "key": s.key, "name": s.member.name,
      "layers": cfg.layers, "d_model": cfg.d_model, "heads": cfg.num_heads,
      "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len, "precision": cfg.precision,
      "n_params": gpt2.n_params(cfg), "dataset_size": spec.dataset_size,
      "seed": spec.seed, "learning_rate": spec.learning_rate, "steps": s.steps,
      "batch_size": settings.train.batch_size,
      "role": "reference" if s.member.is_reference else "sweep",
      "is_reference": s.member.is_reference, "in_grid": s.member.in_grid,
      "status": "diverged" if s.diverged else "ok",
      "train_loss": _finite(_loss_nats(s.member_logp, cfg)),
      "test_loss": _finite(test_loss),
      "reference": settings.reference_primary,
  }
  row["extraction"] = {
      str(p): {f"{split}_{score}": _finite(np.mean(s.extraction[p][split][score]))
               if s.extraction[p][split][score].size else None
               for split in ("train", "test") for score in ("exact", "token_match")}
      for p in s.extraction}
  row["train"] = config_lib.to_jsonable(settings.train)
  row["data"] = {"source": settings.source.kind, "tokenizer": settings.tokenizer.kind,
                 "train_pool": int(data.train_idx.size),
                 "heldout_pool": int(data.heldout_idx.size), "pool_split": settings.pool_split,
                 "test_size": settings.test_size, "seed": settings.data_seed}
  row["device"] = jax.local_devices()[0].device_kind
  row["wall_s_per_stack"] = s.stack_wall_s
  return row


def _against_references(settings, s, ref_of, pool_logp, mem_samples):
  """A model's memorization against each reference (`ref_of`: name -> reference or None), and
  the primary one's as mem_bits; fills mem_samples[name] with the per-sample bits."""
  out = {}
  for name, ref in ref_of.items():
    if ref is None:
      out.update({f"reference_{name}": None, f"ref_bits_{name}": None,
                  f"mem_bits_{name}": None, f"mem_bits_unclipped_{name}": None})
      mem_samples[name] = np.full(s.member_logp.shape, np.nan)
      continue
    ref_lp = pool_logp[ref.member.shape][s.positions]
    diff = s.member_logp - ref_lp
    mem_samples[name] = np.maximum(0.0, diff)
    out.update({f"reference_{name}": ref.member.name,
                f"ref_bits_{name}": _finite(-ref_lp.sum()),
                f"mem_bits_{name}": _finite(mem_samples[name].sum()),
                f"mem_bits_unclipped_{name}": _finite(diff.sum())})
  primary = settings.reference_primary
  out["reference_name"] = out[f"reference_{primary}"]
  out["ref_bits"] = out[f"ref_bits_{primary}"]
  out["dataset_bits"] = out["ref_bits"]  # the training set's size in bits, under the reference
  out["mem_bits"] = out[f"mem_bits_{primary}"]
  out["mem_bits_unclipped"] = out[f"mem_bits_unclipped_{primary}"]
  out["mem_fraction"] = (out["mem_bits"] / out["ref_bits"]
                         if out["mem_bits"] is not None and out["ref_bits"] else None)
  return out


def _spearman(x, y, name):
  from scipy import stats
  ok = np.isfinite(x) & np.isfinite(y)
  if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
    return {name: None, f"{name}_pvalue": None}
  result = stats.spearmanr(x[ok], y[ok])
  return {name: _finite(result.statistic), f"{name}_pvalue": _finite(result.pvalue)}


def _shape_of_row(row):
  return (row["layers"], row["d_model"], row["precision"])


def _capacity(settings, rows):
  """Capacity per shape: alpha x params (config), or the shape's largest seed-mean memorization."""
  by_shape = {}
  if settings.alpha > 0:
    for row in rows:
      by_shape[_shape_of_row(row)] = settings.alpha * row["n_params"]
    return {"source": f"reference.alpha = {settings.alpha:g} bits/param x parameters",
            "alpha": settings.alpha, "by_shape": by_shape}
  curves = _curves(rows, "mem_bits")
  for shape, curve in curves.items():
    values = [v for v in curve.values() if v is not None]
    by_shape[shape] = max(values) if values else None
  return {"source": "measured: the largest seed-mean mem_bits over the dataset sizes of the shape",
          "alpha": None, "by_shape": by_shape}


def _curves(rows, field, grid_only=True):
  """{shape: {N: seed-mean of row[field]}} over rows with status ok."""
  acc = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    if r["status"] != "ok" or (grid_only and not r["in_grid"]):
      continue
    value = r
    for part in field.split("."):
      value = value.get(part) if isinstance(value, dict) else None
    if value is not None:
      acc[_shape_of_row(r)][r["dataset_size"]].append(value)
  return {shape: {n: float(np.mean(v)) for n, v in sorted(c.items())} for shape, c in acc.items()}


def _summary(settings, data, rows, refs, oracle, test_loss, capacity):
  ds = data.dataset
  fields = ["mem_bits", "mem_bits_same_size", "mem_bits_oracle", "dataset_bits", "train_loss",
            "test_loss", "dataset_bits_over_capacity"]
  for p in settings.prefix_lengths:
    fields += [f"extraction.{p}.{k}" for k in ("train_exact", "train_token_match", "test_exact",
                                               "test_token_match")]
  curves = {f: _curves(rows, f) for f in fields}
  models = []
  for shape, ref in refs.items():
    key = (shape.layers, shape.d_model, shape.precision)
    cap = capacity["by_shape"].get(key)
    test_curve = curves["test_loss"].get(key, {})
    peak = None
    if test_curve:
      peak_n = max(test_curve, key=test_curve.get)
      ratio = curves["dataset_bits_over_capacity"].get(key, {}).get(peak_n)
      peak = {"dataset_size": peak_n, "test_loss": test_curve[peak_n],
              "dataset_bits_over_capacity": ratio}
    mem_curve = curves["mem_bits"].get(key, {})
    best = max(mem_curve.values()) if mem_curve else None
    models.append({
        "label": shape_label(shape), "layers": shape.layers, "d_model": shape.d_model,
        "precision": shape.precision, "n_params": gpt2.n_params(shape),
        "capacity_bits": cap, "max_mem_bits": best,
        "max_mem_bits_per_param": best / gpt2.n_params(shape) if best is not None else None,
        "reference_same_size": ref.member.name, "reference_test_loss": _finite(test_loss[id(ref)]),
        "test_loss_peak": peak,
        "curves": {f: {str(n): v for n, v in curves[f].get(key, {}).items()} for f in fields},
    })
  return {
      "experiment": "text",
      "dataset": {"source": corpus_lib.describe_source(settings.source),
                  "tokenizer": settings.tokenizer.kind, "vocab_size": ds.vocab_size,
                  "seq_len": settings.seq_len, "num_sequences": ds.num_sequences,
                  "num_documents": ds.num_documents, "num_chars": ds.num_chars,
                  "duplicates_dropped": ds.num_duplicates_dropped,
                  "train_pool": int(data.train_idx.size),
                  "heldout_pool": int(data.heldout_idx.size),
                  "reference_pool": int(data.reference_idx.size),
                  "pool_split": settings.pool_split},
      "reference": {
          "primary": settings.reference_primary,
          "oracle": None if oracle is None else {
              "name": oracle.member.name, "label": shape_label(oracle.member.shape),
              "n_params": gpt2.n_params(oracle.member.shape),
              "test_loss": test_loss[id(oracle)]},
          "oracle_selection": "the full-pool model with the lowest held-out test loss",
      },
      "capacity": {k: v for k, v in capacity.items() if k != "by_shape"},
      "models": models,
  }


# ---------------------------------------------------------------------------------------------
# Reports: table, figures, top memorized samples.


def table_text(rows, summary, prefix_lengths):
  p = prefix_lengths[len(prefix_lengths) // 2] if prefix_lengths else None
  ext_head = f" {'ext@' + str(p) + ' tr/te':>13}" if p is not None else ""
  lines = [f"{'model':<18} {'N':>7} {'seed':>4} {'train':>6} {'test':>6} {'data_bits':>11} "
           f"{'mem_same':>10} {'mem_oracle':>10} {'data/cap':>8}{ext_head} {'tfidf_rho':>9} "
           f"{'idf_rho':>7}"]
  fmt = lambda v, spec: format(v, spec) if v is not None else "-"
  for r in sorted(rows, key=lambda r: (r["precision"], r["n_params"], r["layers"], r["seed"],
                                       r["dataset_size"])):
    label = f"L{r['layers']} d{r['d_model']} {r['precision']}" + ("*" if r["is_reference"] else "")
    ext = ""
    if p is not None:
      e = r["extraction"].get(str(p), {})
      ext = f" {fmt(e.get('train_exact'), '.2f'):>6}/{fmt(e.get('test_exact'), '.2f'):<6}"
    lines.append(
        f"{label:<18} {r['dataset_size']:>7,} {r['seed']:>4} {fmt(r['train_loss'], '.3f'):>6} "
        f"{fmt(r['test_loss'], '.3f'):>6} {fmt(r['dataset_bits'], ',.0f'):>11} "
        f"{fmt(r['mem_bits_same_size'], ',.0f'):>10} {fmt(r['mem_bits_oracle'], ',.0f'):>10} "
        f"{fmt(r['dataset_bits_over_capacity'], '.2f'):>8}{ext} "
        f"{fmt(r['tfidf_spearman'], '+.3f'):>9} {fmt(r['idf_spearman'], '+.3f'):>7}"
        + ("  diverged" if r["status"] != "ok" else ""))
  primary = summary["reference"]["primary"]
  lines.append("* = the shape's full-pool reference model. Losses in nats per predicted token; "
               f"data_bits = code length of the training set under the {primary} reference; "
               "ext = exact-match extraction rate of members / held-out; tfidf_rho, idf_rho = "
               "Spearman correlation of per-sample memorization with mean TF-IDF, mean IDF.")
  oracle = summary["reference"]["oracle"]
  if oracle:
    lines.append(f"oracle reference: {oracle['name']} (test loss {oracle['test_loss']:.3f}), "
                 f"the best held-out compressor of the full-pool models")
  lines.append(f"capacity: {summary['capacity']['source']}")
  for m in summary["models"]:
    peak = m["test_loss_peak"]
    peak_text = ""
    if peak:
      ratio = peak["dataset_bits_over_capacity"]
      peak_text = (f"; test loss peaks at N={peak['dataset_size']:,} (data/capacity "
                   f"{ratio:.2f})" if ratio is not None else f"; test loss peaks at "
                   f"N={peak['dataset_size']:,}")
    best = m["max_mem_bits"]
    if best is None:
      lines.append(f"{m['label']}: no memorization measured")
    else:
      lines.append(f"{m['label']}: {m['n_params']:,} params, max memorization {best:,.0f} bits "
                   f"({m['max_mem_bits_per_param']:.3f} bits/param){peak_text}")
  return "\n".join(lines)


def write_figures(rows, summary, per_sample, prefix_lengths, workdir):
  """memorization_vs_dataset_size.png, double_descent.png and, when there is something to show,
  extraction_vs_dataset_size.png and tfidf_vs_memorization.png; returns the paths written."""
  plt = report.pyplot()
  shapes = sorted({_shape_of_row(r) for r in rows}, key=lambda k: (k[2], k[0], k[1]))
  look = _Look(colors={k: f"C{i}" for i, k in enumerate(shapes)},
               primary=summary["reference"]["primary"])
  paths = []
  for figure in (_memorization_figure, _double_descent_figure, _extraction_figure,
                 _tfidf_figure):
    drawn = figure(plt, rows, summary, per_sample, prefix_lengths, look)
    if drawn is not None:
      paths.append(os.path.join(workdir, drawn[0]))
      report.save(drawn[1], paths[-1])
  # A figure not drawn this time (no prefixes, no memorizing model) must not survive from an
  # earlier run in the same workdir: it would show results that are no longer there.
  for name in ("extraction_vs_dataset_size.png", "tfidf_vs_memorization.png"):
    stale = os.path.join(workdir, name)
    if stale not in paths and os.path.exists(stale):
      os.remove(stale)
  return paths


@dataclasses.dataclass(frozen=True)
class _Look:
  """What the text figures share: a colour a shape, and the primary reference's name."""
  colors: dict
  primary: str

  @staticmethod
  def label(k):
    return f"L{k[0]} d{k[1]} {k[2]}"


def _memorization_figure(plt, rows, summary, per_sample, prefix_lengths, look):
  """Memorization against N, against both references, with the dataset's bits."""
  colors, label, primary = look.colors, look.label, look.primary
  fig, ax = plt.subplots(figsize=(6.5, 4.8))
  for field, style in (("mem_bits_oracle", "-"), ("mem_bits_same_size", "--")):
    for k, curve in _curves(rows, field).items():
      ns = list(curve)
      ax.plot(ns, [max(curve[n], report.LOG_FLOOR_BITS) for n in ns], style, marker="o",
              color=colors[k], label=f"{label(k)} ({field[9:].replace('_', ' ')} ref)")
  # One line when every shape measures the data alike (the oracle reference); else each shape's
  # own (the same-size reference is the shape's own model): a mean of them matches no shape.
  data_curves = _curves(rows, "dataset_bits")
  if len({tuple(c.items()) for c in data_curves.values()}) == 1:
    data_curves = {None: next(iter(data_curves.values()))}
  for k, curve in data_curves.items():
    ns = list(curve)
    ax.plot(ns, [curve[n] for n in ns], ":", lw=1, color="k" if k is None else colors[k],
            label=("" if k is None else f"{label(k)} ") + f"dataset bits ({primary} ref)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("dataset size N (sequences)")
  ax.set_ylabel("memorization (bits, mean over seeds)")
  ax.set_title("Text: memorization against dataset size")
  ax.legend(fontsize=7)
  return "memorization_vs_dataset_size.png", fig


def _double_descent_figure(plt, rows, summary, per_sample, prefix_lengths, look):
  """Train and test loss against dataset bits / capacity."""
  colors, label = look.colors, look.label
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
  for ax, field in zip(axes, ("train_loss", "test_loss")):
    xs_by = _curves(rows, "dataset_bits_over_capacity")
    for k, curve in _curves(rows, field).items():
      xs = xs_by.get(k, {})
      ns = [n for n in curve if xs.get(n)]
      ax.plot([xs[n] for n in ns], [curve[n] for n in ns], marker="o", color=colors[k],
              label=label(k))
    ax.axvline(1.0, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"dataset bits / capacity ({summary['capacity']['source'].split(':')[0]})")
    ax.set_title(field.replace("_", " ") + " (nats per token)")
  axes[0].set_ylabel("loss")
  axes[0].legend(fontsize=8)
  return "double_descent.png", fig


def _extraction_figure(plt, rows, summary, per_sample, prefix_lengths, look):
  """Extraction against N, members (train) against non-members (test); None without prefixes."""
  if not prefix_lengths:
    return None
  colors, label = look.colors, look.label
  fig, axes = plt.subplots(2, len(prefix_lengths), figsize=(4 * len(prefix_lengths), 6.4),
                           squeeze=False, sharex=True)
  for j, p in enumerate(prefix_lengths):
    for i, score in enumerate(("exact", "token_match")):
      ax = axes[i, j]
      for split, style in (("train", "-"), ("test", "--")):
        for k, curve in _curves(rows, f"extraction.{p}.{split}_{score}").items():
          ns = list(curve)
          ax.plot(ns, [curve[n] for n in ns], style, marker="o", color=colors[k],
                  label=f"{label(k)} {'members' if split == 'train' else 'held-out'}")
      ax.set_xscale("log")
      ax.set_ylim(-0.02, 1.02)
      ax.set_title(f"prefix {p}: {'exact-match rate' if score == 'exact' else 'token match'}")
      if i == 1:
        ax.set_xlabel("dataset size N")
  axes[0, 0].legend(fontsize=6)
  return "extraction_vs_dataset_size.png", fig


def _tfidf_figure(plt, rows, summary, per_sample, prefix_lengths, look):
  """TF-IDF against per-sample memorization for the most memorizing model (None without one)."""
  best = _most_memorizing(rows)
  if best is None or best["key"] not in per_sample:
    return None
  ps = per_sample[best["key"]]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
  for ax, field, name, xlabel in (
      (axes[0], "tfidf", "tfidf_spearman",
       "mean TF-IDF of the sample (IDF over the training pool)"),
      (axes[1], "idf", "idf_spearman", "mean IDF of the sample's tokens")):
    ax.scatter(ps[field], ps["mem"], s=4, alpha=0.5)
    rho = best[name]
    ax.set_xlabel(xlabel)
    ax.set_title(f"Spearman {rho:+.3f}" if rho is not None else "Spearman undefined")
  axes[0].set_ylabel(f"memorization (bits, {look.primary} reference)")
  fig.suptitle(best["name"])
  return "tfidf_vs_memorization.png", fig


def _most_memorizing(rows, shape=None):
  candidates = [r for r in rows if r["status"] == "ok" and r["mem_bits"] is not None
                and not r["is_reference"] and (shape is None or _shape_of_row(r) == shape)]
  return max(candidates, key=lambda r: r["mem_bits"]) if candidates else None


def write_top_memorized(rows, per_sample, positions_of, data, top_k, primary, path):
  """Per shape, the most memorizing model's top-k members by memorization, decoded to text."""
  lines = [f"Top memorized training samples (memorization = max(0, log2 p(x|model) - "
           f"log2 p(x|reference)), {primary} reference; TF-IDF with IDF over the training pool)."]
  shapes = sorted({_shape_of_row(r) for r in rows}, key=lambda k: (k[2], k[0], k[1]))
  tokens = data.dataset.tokens
  for shape in shapes:
    best = _most_memorizing(rows, shape)
    if best is None:
      continue
    ps = per_sample[best["key"]]
    positions = positions_of[best["key"]]
    order = np.argsort(-np.nan_to_num(ps["mem"], nan=-1.0), kind="stable")[:top_k]
    lines += ["", "=" * 100,
              f"{best['name']}: {best['mem_bits']:,.0f} bits memorized of "
              f"{best['dataset_bits']:,.0f} data bits; Spearman with TF-IDF "
              f"{_nan(best['tfidf_spearman']):+.3f}, with mean IDF "
              f"{_nan(best['idf_spearman']):+.3f}",
              "=" * 100]
    for rank, j in enumerate(order, 1):
      row = int(data.train_idx[positions[j]])
      text = data.dataset.decode(np.asarray(tokens[row]))
      lines.append(f"#{rank} mem {ps['mem'][j]:.1f} bits, TF-IDF {ps['tfidf'][j]:.3f}, "
                   f"mean IDF {ps['idf'][j]:.2f}, corpus row {row}:")
      lines.append("  " + text.replace("\n", "\n  "))
      lines.append("-" * 100)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)


def _nan(value):
  return float("nan") if value is None else value


def _write_rows(path, rows):
  blob = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(blob)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The experiment.


def _stack_label(plan, i):
  return f"[{i + 1}/{len(plan)}] {shape_label(plan[i][0].shape)} x{len(plan[i])}"


def run(settings: TextSettings, workdir: str):
  """Build the data, train and score every stack (skipping stored ones), write every output.

  Returns (rows, summary, (models trained now, models rescored from stored parameters, models
  found done)). Raises ConfigError for bad data before anything is trained.
  """
  start = time.time()
  data = load_data(settings, workdir)
  ds = data.dataset
  pool_size = int(data.train_idx.size)
  logging.info("text data: %d sequences of %d tokens (V=%d, %d duplicates dropped); pools: "
               "train %d, held-out %d, reference %d (%.1fs)", ds.num_sequences, ds.seq_len,
               ds.vocab_size, ds.num_duplicates_dropped, pool_size, data.heldout_idx.size,
               data.reference_idx.size, time.time() - start)
  corpus_NxS = jnp.asarray(np.asarray(ds.tokens))
  stack_root = os.path.join(workdir, "text_stacks")
  os.makedirs(stack_root, exist_ok=True)
  score_id = _hash(_score_settings(settings))[:8]

  plan = []
  for shape in model_shapes(settings, ds.vocab_size):
    members = shape_members(settings, shape, pool_size)
    plan.extend(_stacks(settings, members))
  counts = collections.Counter()
  keys_of = [[model_key(m, settings.train, data.identity) for m in stack] for stack in plan]
  bases = [os.path.join(stack_root, "stack-" + _hash(keys)[:16]) for keys in keys_of]

  def load(i, earlier):
    path = f"{bases[i]}-{score_id}.scores.npz"
    arrays = _load_scores(path) if os.path.exists(path) else None
    if arrays is not None and earlier:
      counts["found"] += len(plan[i])
      logging.info("%s: already done (%s)", _stack_label(plan, i), path)
    return arrays

  def compute(i):
    t0, label = time.time(), _stack_label(plan, i)
    arrays, was_trained = run_stack(settings, data, plan[i], corpus_NxS, bases[i], label)
    os.replace(f"{bases[i]}.scores.npz", f"{bases[i]}-{score_id}.scores.npz")
    checkpoint.ChunkCheckpoints(bases[i] + ".checkpoints").delete()
    counts["trained" if was_trained else "rescored"] += len(plan[i])
    logging.info("%s: %s, scored and extracted in %.1fs", label,
                 "trained" if was_trained else "parameters loaded", time.time() - t0)
    return arrays

  stored = run_lib.run_units(run_lib.Processes(), len(plan), load, compute, "text stack")
  if stored is None:  # another process writes the report
    return None, None, (counts["trained"], counts["rescored"], counts["found"])
  scored = []
  trained, rescored, found = counts["trained"], counts["rescored"], counts["found"]
  for stack, keys, arrays in zip(plan, keys_of, stored):
    offsets = np.concatenate([[0], np.cumsum(arrays["member_sizes"])])
    for j, (member, key) in enumerate(zip(stack, keys)):
      ext = {p: {split: {score: arrays[f"ext_{split}_{score}_p{p}"][j][
          :int(arrays["ext_member_count"][j]) if split == "train" else None]
          for score in ("exact", "token_match")} for split in ("train", "test")}
          for p in settings.prefix_lengths}
      scored.append(Scored(
          member=member, key=key,
          positions=member_positions(settings, pool_size, member.spec.seed,
                                     member.spec.dataset_size),
          member_logp=arrays["member_logp"][offsets[j]:offsets[j + 1]],
          test_logp=arrays["test_logp"][j], steps=int(arrays["steps"][j]),
          diverged=bool(arrays["diverged"][j]), extraction=ext,
          stack_wall_s=float(arrays["wall_s"])))

  rows, summary, per_sample = analyze(settings, data, scored)
  _write_rows(os.path.join(workdir, "results.jsonl"), rows)
  summary["wall_s"] = time.time() - start
  summary["models_trained"] = trained
  summary["models_rescored"] = rescored
  summary["models_already_done"] = found
  jsonio.write_atomic(os.path.join(workdir, "summary.json"), summary)
  write_figures(rows, summary, per_sample, settings.prefix_lengths, workdir)
  if settings.top_k:
    positions_of = {s.key: s.positions for s in scored}
    write_top_memorized(rows, per_sample, positions_of, data, settings.top_k,
                        settings.reference_primary, os.path.join(workdir, "top_memorized.txt"))
  elif os.path.exists(os.path.join(workdir, "top_memorized.txt")):
    os.remove(os.path.join(workdir, "top_memorized.txt"))  # an earlier run's, of other models
  return rows, summary, (trained, rescored, found)


def dry_run(settings: TextSettings, workdir: str, process=None):
  """Print the plan (shapes, stacks, models, tokens) without reading the corpus or training;
  `process`: (index, count) of a multi-process run, to show which process trains each stack."""
  tok = settings.tokenizer
  try:
    vocab = tokenize_lib.planned_vocab_size(tok.kind, tok.vocab_size, tok.path)
  except (ValueError, FileNotFoundError) as e:
    raise _data_error(settings, e) from e
  pool = settings.train_pool
  tcfg = settings.train
  tokens = tcfg.steps * tcfg.batch_size * settings.seq_len
  lines = [f"plan: text memorization on the {corpus_lib.describe_source(settings.source)}, "
           f"tokenizer {settings.tokenizer.kind} (V={vocab:,}), S={settings.seq_len}; training "
           f"pool {f'{pool:,} sequences' if pool else 'every sequence left'}, held-out "
           f"{settings.heldout_pool:,}, drawn by {settings.pool_split}",
           f"training: {tcfg.steps:,} steps of {tcfg.batch_size} sequences, so at most "
           f"{tokens:,} tokens a model"]
  n_models, procs, unit = 0, run_lib.dry_run_processes(process), 0
  for shape in model_shapes(settings, vocab):
    members = shape_members(settings, shape, pool or 0)
    stacks = _stacks(settings, members)
    n_models += len(members)
    lines.append(f"{shape_label(shape)}: {gpt2.n_params(shape):,} params, "
                 f"{len(members)} models (N {', '.join(f'{n:,}' for n in settings.dataset_sizes)}"
                 f" x seeds {list(settings.seeds)}, plus the full-pool reference) in "
                 f"{len(stacks)} stack(s)")
    for stack in stacks:
      lines.append(run_lib.unit_line(procs, unit, f"stack {unit + 1}", shape, len(stack), tcfg))
      unit += 1
  lines.append(f"total: {n_models} models, at most {n_models * tokens:,} tokens; extraction from "
               f"prefixes {list(settings.prefix_lengths)} of {settings.member_samples:,} members "
               f"a model and {settings.nonmember_samples:,} held-out sequences")
  print("\n".join(lines))


def main(settings: TextSettings, workdir: str):
  """Run and print the text memorization report (config.experiment = "text")."""
  start = time.time()
  try:
    rows, summary, (trained, rescored, found) = run(settings, workdir)
  except ConfigError as e:  # bad data, found after validate() but before any training
    print(f"memjax: error: {e}", file=sys.stderr)
    sys.exit(2)
  if rows is None:
    print(run_lib.other_process_line(trained + rescored, "models", start))
    return
  print(table_text(rows, summary, settings.prefix_lengths))
  rescored_text = f", {rescored} rescored from stored parameters" if rescored else ""
  print(f"{trained} models trained{rescored_text}, {found} already done; results in {workdir}: "
        f"results.jsonl, summary.json, figures{', top_memorized.txt' if settings.top_k else ''} "
        f"({time.time() - start:.0f}s)")
