"""Memorization dynamics (Chen, Han, Miyao 2024) on models memjax trains.

`python -m memjax.main --config=configs/dynamics.py --workdir=runs/dynamics` runs it:

1. Data: text from `data.build_text_dataset` (the embedded `stdlib_docs` corpus by default, or
   txt/jsonl files; BPE or bytes) or synthetic uniform tokens; the first data.num_samples
   sequences of a seeded permutation are the training set.
2. Models: one GPT-2 per sweep.d_model (model.layers layers), trained on the whole training set in
   dynamics.checkpoints segments of train.steps / checkpoints steps (`train.train_steps`); after
   each segment every scored sample (the first dynamics.score_samples training samples) gets its
   memorization score at (dynamics.context, dynamics.continuation).
3. Over training: score buckets at every checkpoint and the transition matrix between consecutive
   checkpoints (row i sums to the samples in bucket i before).
4. Grid: after training, scores for every (context, continuation) of dynamics.contexts x
   dynamics.continuations (pairs longer than the sequence are marked `skipped`).
5. Embeddings: each scored sample's mean last hidden state over its context; 2-D PCA coloured
   by final bucket; distances between bucket centroids (raw and relative to the spread).
6. Decoding dynamics: entropy of each generation step and training-corpus count of the generated
   dynamics.ngram_n-gram, aligned on the first step that leaves the true continuation, for
   memorized (score >= dynamics.memorized_threshold) and unmemorized samples.
7. Predictor: a small GPT-2 body + linear head trained on the (context, final bucket) pairs of
   the scored samples, predictor.test_fraction of them held out; accuracy and macro-F1 on the
   held-out ones against the majority class of the training labels.

Outputs in the workdir: results.json, scores.npz (scores per checkpoint and per grid cell,
embeddings' PCA, buckets), and figures: score_grid.png, over_training.png, transitions.png,
embeddings_pca.png, centroid_distances.png, boundary_effect.png. dynamics_models/ stores each
finished width (`store_width`), so a rerun trains only the widths not stored under its settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np

from memjax import config as config_lib
from memjax.engine import checkpoint
from memjax import schema
from memjax.engine import jsonio
from memjax.engine import run as run_lib
from memjax import report
from memjax.config import ConfigError
from memjax.train import TrainConfig

DATA_SOURCES = ("stdlib_docs", "txt", "jsonl", "parquet", "synthetic")
FILE_SOURCES = ("txt", "jsonl", "parquet")  # read data.paths
TOKENIZERS = ("bpe", "bytes")

Field = config_lib.Field
# The data section, shared with the distributional experiment (which adds its held-out set).
DATA_FIELDS = (
    Field("data.source", "str", "where the sequences come from (synthetic: uniform tokens)",
          allowed=DATA_SOURCES),
    Field("data.paths", "paths", "txt/jsonl/parquet: files, directories or globs"),
    Field("data.text_field", "str", "jsonl key or parquet column of the text"),
    Field("data.doc_packages", "strs", "stdlib_docs: packages read after the standard library"),
    Field("data.max_documents", "int", "documents read at most; 0: all", minimum=0),
    Field("data.tokenizer", "str", "a BPE trained on the corpus, bytes, or the imported "
          "checkpoints' own (model.paths)", allowed=TOKENIZERS + ("checkpoint",)),
    Field("data.vocab_size", "int", "BPE tokens; synthetic: V of the uniform tokens", minimum=2,
          maximum=65536),
    Field("data.seq_len", "int", "S, tokens a sequence", minimum=2, maximum=4096),
    Field("data.num_samples", "int", "training sequences (every model trains on all of them)"),
    Field("data.seed", "int", "seed of the data draws, the models and the predictor",
          minimum=0),
    Field("data.cache_dir", "path", "the dataset cache; empty: <workdir>/cache"),
)
# The model section, shared with the distributional experiment.
MODEL_FIELDS = (
    config_lib.NUM_HEADS,
    Field("model.layers", "int", "layers of every model", maximum=64),
    *config_lib.checkpoint_fields("Hugging Face checkpoints (one shape, one tokenizer) scored "
                                  "instead of trained models; empty: train models"),
    Field("sweep.d_model", "ints", "the model widths"),
)
SCHEMA = schema.Schema((
    config_lib.experiment_field("dynamics"), config_lib.QUIET, *DATA_FIELDS, *MODEL_FIELDS,
    *config_lib.TRAIN_FIELDS,
    Field("dynamics.context", "int", "context tokens of the main setting (scored at every "
          "checkpoint)"),
    Field("dynamics.continuation", "int", "continuation tokens of the main setting"),
    Field("dynamics.contexts", "ints", "the grid's contexts, scored after training"),
    Field("dynamics.continuations", "ints", "the grid's continuations (pairs longer than "
          "data.seq_len are skipped)"),
    Field("dynamics.checkpoints", "int", "training segments; samples are scored after each",
          maximum="train.steps"),
    Field("dynamics.score_samples", "int", "training samples scored; 0: all", minimum=0),
    Field("dynamics.batch_size", "int", "sequences a scoring call"),
    Field("dynamics.ngram_n", "int", "n-gram order of the decoding-dynamics frequencies"),
    Field("dynamics.max_n", "int", "n-gram orders counted in the training corpus", maximum=16),
    Field("dynamics.window", "int", "steps shown on each side of the divergence point"),
    Field("dynamics.memorized_threshold", "float", "score >= this: memorized (the boundary "
          "figure)", maximum=1.0),
    Field("predictor.layers", "int", "layers of the score predictor", maximum=64),
    Field("predictor.d_model", "int", "width of the score predictor"),
    Field("predictor.num_heads", "int", "attention heads of the score predictor"),
    Field("predictor.steps", "int", "training steps of the score predictor"),
    Field("predictor.batch_size", "int", "batch of the score predictor"),
    Field("predictor.learning_rate", "float", "learning rate of the score predictor"),
    Field("predictor.test_fraction", "float", "scored samples held out to test the predictor",
          maximum=0.9),
    *config_lib.NGRAM_FIELDS,
), optional_sections=("ngram",))


_fail = config_lib._fail


@dataclasses.dataclass(frozen=True)
class DataSettings:
  source: str
  paths: tuple
  text_field: str
  doc_packages: tuple
  max_documents: int  # 0: all
  tokenizer: str
  vocab_size: int
  seq_len: int
  num_samples: int  # training sequences
  heldout: int  # held-out sequences (0 for the dynamics experiment)
  seed: int
  cache_dir: str
  pool_split: str = "sequence"  # "document": no document gives both training and held-out text
  tokenizer_path: str = ""  # tokenizer "file": the tokenizer.json (imported checkpoints' own)


@dataclasses.dataclass(frozen=True)
class DynamicsSettings:
  data: DataSettings
  num_heads: int
  layers: int
  d_model: tuple
  train: TrainConfig
  context: int
  continuation: int
  contexts: tuple
  continuations: tuple
  checkpoints: int
  score_samples: int
  batch_size: int
  ngram_n: int
  max_n: int
  window: int
  memorized_threshold: float
  predictor: object  # dynamics.PredictorConfig
  test_fraction: float
  quiet: bool
  model_paths: tuple = ()  # imported checkpoints, in training order: scored, not trained
  model_cfg: object = None  # their shape (gpt2.ModelConfig or gpt_neox.NeoXConfig)
  ngram: config_lib.NgramSettings = config_lib.NgramSettings()  # the n-gram counts' backend


def validate_data(v, heldout_field: str | None = None,
                  checkpoint_dir: str | None = None) -> DataSettings:
  """DataSettings of the data fields of `v` (schema.read; heldout_field: the field giving the
  held-out count; checkpoint_dir: an imported checkpoint whose tokenizer.json tokenizes the
  text)."""
  source, paths, tokenizer = v["data.source"], v["data.paths"], v["data.tokenizer"]
  if source in FILE_SOURCES:
    if not paths:
      _fail("data.paths", f"data.source={source!r} reads files: give files, directories or globs")
    from memjax.data import corpus as corpus_lib
    try:
      corpus_lib.resolve_paths(paths, corpus_lib.FILE_EXTENSIONS[source])
    except FileNotFoundError as e:
      _fail("data.paths", str(e))
  if (tokenizer == "checkpoint") != bool(checkpoint_dir):
    _fail("data.tokenizer", "imported checkpoints (model.paths) score text in their own "
                            "tokenizer: set data.tokenizer='checkpoint'" if checkpoint_dir else
          "'checkpoint' (the imported checkpoints' tokenizer.json) needs model.paths")
  if checkpoint_dir and source == "synthetic":
    _fail("data.source", "imported checkpoints (model.paths) are scored on text: give txt, "
                         "jsonl or parquet files, or stdlib_docs")
  if source != "synthetic" and tokenizer == "bpe" and v["data.vocab_size"] < 257:
    _fail("data.vocab_size", f"a byte-level BPE needs 257 to 65536 tokens, got "
                             f"{v['data.vocab_size']}; or set data.tokenizer='bytes' (V=256)")
  if heldout_field:
    config_lib.check_pool_split(v["data.pool_split"], synthetic=source == "synthetic")
  return DataSettings(
      source=source, paths=paths, text_field=v["data.text_field"],
      doc_packages=v["data.doc_packages"], max_documents=v["data.max_documents"],
      tokenizer=tokenizer, vocab_size=v["data.vocab_size"], seq_len=v["data.seq_len"],
      num_samples=v["data.num_samples"], heldout=v[heldout_field] if heldout_field else 0,
      seed=v["data.seed"], cache_dir=v["data.cache_dir"],
      pool_split=v["data.pool_split"] if heldout_field else "sequence",
      tokenizer_path=os.path.join(checkpoint_dir, "tokenizer.json") if checkpoint_dir else "")


def validate_model(v, field="sweep.d_model"):
  """(heads, layers, widths sorted) of `v`; every width splits into whole heads."""
  config_lib.check_divisible(v[field], v["model.num_heads"], field)
  return v["model.num_heads"], v["model.layers"], tuple(sorted(v[field]))


def validate(config) -> DynamicsSettings:
  """Check a dynamics config; raises ConfigError naming the field."""
  v = schema.read(config, SCHEMA)
  config_lib.refuse_unused_paths(config, v["data.source"], file_kinds=FILE_SOURCES)
  model_paths, model_cfg = config_lib.read_checkpoints(v)
  data = validate_data(v, checkpoint_dir=model_paths[0] if model_paths else None)
  if model_cfg is not None and data.seq_len > model_cfg.seq_len:
    _fail("data.seq_len", f"{data.seq_len} tokens are longer than the checkpoints' context "
                          f"({model_cfg.seq_len}); lower it")
  heads, layers, d_model = validate_model(v)
  _check_lengths(v)
  vocab = model_cfg.vocab_size if model_cfg is not None else data.vocab_size
  ngram = config_lib.check_ngram(v, vocab, tokenizer_tag(data, vocab))
  max_n, ngram_n = v["dynamics.max_n"], v["dynamics.ngram_n"]
  # the exact index packs an n-gram into one int64 key; infini-gram has no such limit
  if ngram.backend == "exact" and vocab ** max_n > 2**63 - 1:
    _fail("dynamics.max_n", f"{max_n}-grams of a {vocab:,}-token vocabulary do not fit the "
                            "n-gram index's 64-bit keys; lower it")
  if ngram_n > max_n:
    _fail("dynamics.ngram_n", f"n={ngram_n} is larger than the counted order dynamics.max_n="
                              f"{max_n}; raise max_n or lower ngram_n")
  score_samples = _score_samples(v)
  return DynamicsSettings(
      data=data, num_heads=heads, layers=layers, d_model=d_model,
      train=config_lib.train_settings(v), context=v["dynamics.context"],
      continuation=v["dynamics.continuation"],
      contexts=tuple(sorted(v["dynamics.contexts"])),
      continuations=tuple(sorted(v["dynamics.continuations"])),
      checkpoints=v["dynamics.checkpoints"], score_samples=score_samples,
      batch_size=v["dynamics.batch_size"], ngram_n=ngram_n, max_n=max_n,
      window=v["dynamics.window"], memorized_threshold=v["dynamics.memorized_threshold"],
      predictor=_predictor_config(v), test_fraction=v["predictor.test_fraction"], quiet=v["quiet"],
      model_paths=model_paths, model_cfg=model_cfg, ngram=ngram)


def _check_lengths(v):
  """The main (context, continuation) fits the sequence, and so does one pair of the grid."""
  s, context, continuation = v["data.seq_len"], v["dynamics.context"], v["dynamics.continuation"]
  if context + continuation > s:
    _fail("dynamics.continuation", f"dynamics.context + dynamics.continuation = {context} + "
                                   f"{continuation} = {context + continuation} is longer than "
                                   f"the sequence (data.seq_len={s}); lower them")
  if not any(c + k <= s for c in v["dynamics.contexts"] for k in v["dynamics.continuations"]):
    _fail("dynamics.contexts", f"no (context, continuation) pair of the grid fits data.seq_len="
                               f"{s} (every context + continuation is longer); lower them")


def _score_samples(v) -> int:
  """The scored training samples (0: all of them); the predictor needs two."""
  score_samples, num_samples = v["dynamics.score_samples"], v["data.num_samples"]
  if score_samples > num_samples:
    _fail("dynamics.score_samples", f"{score_samples} scored samples do not fit the "
                                    f"{num_samples} training samples (data.num_samples)")
  if (score_samples or num_samples) < 2:
    _fail("dynamics.score_samples", "the score predictor needs >= 2 scored samples (one to train "
                                    f"on, one to test), got {score_samples or num_samples}")
  return score_samples or num_samples


def _predictor_config(v):
  from memjax.estimators import dynamics
  p_heads, p_d = v["predictor.num_heads"], v["predictor.d_model"]
  if p_d % p_heads:
    _fail("predictor.d_model", f"must be divisible by predictor.num_heads={p_heads}, got {p_d}")
  return dynamics.PredictorConfig(
      layers=v["predictor.layers"], d_model=p_d, num_heads=p_heads, steps=v["predictor.steps"],
      batch_size=v["predictor.batch_size"], learning_rate=v["predictor.learning_rate"],
      seed=v["data.seed"])


# ---------------------------------------------------------------------------------------------
# Data and training, shared with the distributional experiment.


def load_tokens(d: DataSettings, workdir: str):
  """(train [N, S], heldout [H, S], vocab_size, info dict); ConfigError on bad data."""
  rng = np.random.default_rng(d.seed)
  if d.source == "synthetic":
    tokens = rng.integers(0, d.vocab_size, (d.num_samples + d.heldout, d.seq_len)).astype(np.int32)
    train_NxS, heldout_HxS = tokens[: d.num_samples], tokens[d.num_samples:]
    # A held-out sequence that is also a training one would be scored as unseen (a text corpus
    # gives distinct sequences; uniform draws repeat when V**S is small).
    seen = {row.tobytes() for row in train_NxS}
    repeats = sum(row.tobytes() in seen for row in heldout_HxS)
    if repeats:
      raise ConfigError(
          f"config.data.seq_len: {repeats} of the {d.heldout} held-out synthetic sequences are "
          f"also training sequences: V**S = {d.vocab_size}**{d.seq_len} distinct sequences are "
          "too few; raise data.seq_len or data.vocab_size")
    return (train_NxS, heldout_HxS, d.vocab_size,
            {"source": "synthetic (uniform)", "vocab_size": d.vocab_size})
  from memjax.data import text as text_lib
  from memjax.data import corpus as corpus_lib
  source = text_lib.SourceConfig(kind=d.source, paths=d.paths, text_field=d.text_field,
                                 doc_packages=d.doc_packages,
                                 max_documents=d.max_documents or None)
  if d.tokenizer == "checkpoint":
    tok = text_lib.TokenizerConfig(kind="file", path=d.tokenizer_path)
  else:
    tok = text_lib.TokenizerConfig(kind=d.tokenizer,
                                   vocab_size=d.vocab_size if d.tokenizer == "bpe" else None)
  try:
    ds = text_lib.build_text_dataset(source, tok, d.seq_len, text_lib.PoolSizes(), d.seed,
                                     cache_dir=d.cache_dir or os.path.join(workdir, "cache"),
                                     pool_split=d.pool_split)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise config_lib.data_error(e, d.source in FILE_SOURCES) from e
  need = d.num_samples + d.heldout
  if ds.num_sequences < need:
    if d.heldout > d.num_samples:
      field = "data.heldout"
    elif d.max_documents and ds.num_documents >= d.max_documents:
      field = "data.max_documents"  # the corpus was cut short: more documents, more sequences
    else:
      field = "data.num_samples"
    raise ConfigError(
        f"config.{field}: the corpus ({corpus_lib.describe_source(source)}) has "
        f"{ds.num_sequences:,} distinct sequences of {d.seq_len} tokens, but {need:,} are asked "
        f"for (data.num_samples={d.num_samples} + held-out {d.heldout}); lower them or use more "
        "documents")
  info = {"source": corpus_lib.describe_source(source), "num_sequences": ds.num_sequences,
          "num_documents": ds.num_documents, "vocab_size": ds.vocab_size,
          "tokenizer": d.tokenizer, "pool_split": d.pool_split}
  if d.pool_split == "document":
    try:
      train_idx, heldout_idx, _ = text_lib.split_pools(
          ds.num_sequences, text_lib.PoolSizes(train=d.num_samples, heldout=d.heldout), d.seed,
          ds.doc_ids)
    except ValueError as e:
      _fail("data.pool_split", str(e))
    info["documents"] = {"train": int(np.unique(ds.doc_ids[train_idx]).size),
                         "heldout": int(np.unique(ds.doc_ids[heldout_idx]).size)}
    tokens = np.asarray(ds.tokens)
    return (tokens[train_idx].astype(np.int32), tokens[heldout_idx].astype(np.int32),
            ds.vocab_size, info)
  perm = rng.permutation(ds.num_sequences)
  tokens = np.asarray(ds.tokens)[perm[:need]].astype(np.int32)
  return tokens[: d.num_samples], tokens[d.num_samples:], ds.vocab_size, info


class _Segments:
  """The engine's recorder of a stack trained in segments: on_segment's record at each segment
  end, kept in the stack's checkpoints (so a resumed run has the records of the steps before)."""

  def __init__(self, ends, on_segment, saved):
    self.ends, self.on_segment = list(ends), on_segment
    self.records = list((saved or {}).get("segments", []))

  def record(self, step, state, losses_M):
    if step in self.ends[len(self.records):]:
      self.records.append(self.on_segment(self.ends.index(step), step, state, losses_M))

  def saved(self):
    return {"segments": self.records}


def train_in_segments(cfg, tcfg, corpus_NxS, members, seeds, segments: int, ckpt_dir, *,
                      label, quiet=False, on_segment=lambda *a: None):
  """Trains a stack (one model per members/seeds entry) for tcfg.steps steps in `segments`
  equal segments on the engine, checkpointed in ckpt_dir at every segment end (and resumed from
  there); on_segment(segment_index, steps_done, state, losses_M) after each gives a JSON-able
  record. Returns (state of the stack's own models, last losses [M], the records)."""
  import jax.numpy as jnp
  from memjax import train as train_lib
  specs = [train_lib.ModelSpec(len(m), int(s), tcfg.learning_rate) for m, s in zip(members, seeds)]
  keys = [f"{label}/{i}/N{len(m)}/seed{int(s)}" for i, (m, s) in enumerate(zip(members, seeds))]
  ends = [int(b) for b in np.linspace(0, tcfg.steps, segments + 1).round()[1:]]
  trained = run_lib.train_stack(
      cfg, tcfg, specs, ckpt_dir, keys, label=label, quiet=quiet, members=members,
      corpus_NxS=jnp.asarray(corpus_NxS, jnp.int32), stops=ends,
      recorder=lambda saved: _Segments(ends, on_segment, saved))
  state = run_lib.own_models(trained.state, trained.n)
  return state, np.asarray(trained.last_loss_M), trained.recorder.records


def check_not_diverged(state, label, names):
  """One line instead of a traceback: a model whose loss became NaN or inf is frozen at
  parameters that score nothing (NaN probabilities; the embeddings' SVD does not converge)."""
  diverged = np.flatnonzero(np.asarray(state.diverged_M))
  if diverged.size:
    _fail("train.learning_rate", f"{label} diverged (training loss NaN or inf) for "
                                 f"{', '.join(names[i] for i in diverged)}; lower "
                                 "train.learning_rate (nothing of this width is stored)")


# ---------------------------------------------------------------------------------------------
# Resume: each finished width is stored in one file, so a rerun after a kill (or with a width
# added) trains only the widths that are not stored yet.


def tokenizer_tag(data: DataSettings, vocab: int) -> str:
  """Names the tokenization in an infini-gram index's manifest: a checkpoint's tokenizer.json by
  its hash, memjax's own tokenizers by kind and vocabulary."""
  if data.tokenizer_path:
    with open(data.tokenizer_path, "rb") as f:
      return f"tokenizer.json sha256:{hashlib.sha256(f.read()).hexdigest()[:16]}"
  return f"memjax {data.tokenizer if data.source != 'synthetic' else 'synthetic'}, V={vocab}"


def ngram_counts(settings, docs, vocab: int, workdir: str):
  """The n-gram counts of `docs` (the training set) through settings.ngram: the exact in-memory
  index or infini-gram (its index_dir, or one built once under the data cache)."""
  from memjax.estimators import infini_gram
  from memjax.estimators import ngram as ngram_lib
  cache = settings.data.cache_dir or os.path.join(workdir, "cache")
  try:
    return ngram_lib.corpus_counts(docs, settings.max_n, vocab, settings.ngram.backend,
                                   settings.ngram.index_dir, cache,
                                   tokenizer_tag(settings.data, vocab))
  except infini_gram.IndexFormatError as e:
    raise ConfigError(f"config.ngram.index_dir: {e}") from None
  except OSError as e:
    raise ConfigError(f"config.data.cache_dir: cannot write the infini-gram index under "
                      f"{cache!r} ({e.strerror or e}); give a writable directory") from None


def width_key(settings, d_model: int, *tokens) -> str:
  """A stable id of everything a width's results depend on: its settings but `quiet` and the other
  widths, its width, and the token arrays themselves (a corpus edited in place changes it)."""
  s = config_lib.to_jsonable(settings)
  s.pop("quiet")
  s.pop("d_model")
  from memjax import train as train_lib
  train_lib.drop_fields_at_old_behaviour(s["train"])  # the schedule fields added later
  # How often a width is checkpointed changes nothing it computes: keyed as never (as before the
  # option was read), so stored widths keep their keys.
  s["train"]["checkpoint_every"] = 0
  if not s["data"].get("tokenizer_path"):  # fields newer than stored widths: their keys stay
    s["data"].pop("tokenizer_path", None)
  if s.get("model_paths"):
    s["checkpoint_files"] = _checkpoint_stats(s["model_paths"])
  elif "model_paths" in s:
    s.pop("model_paths")
    s.pop("model_cfg")
  if s["data"].get("pool_split") == "sequence":  # widths stored before the option keep their keys
    s["data"].pop("pool_split")
  if s.get("ngram") == config_lib.to_jsonable(config_lib.NgramSettings()):
    s.pop("ngram")  # the default backend: widths stored before the option keep their keys
  digests = [hashlib.sha256(np.ascontiguousarray(t, np.int32).tobytes()).hexdigest()
             for t in tokens]
  value = {"settings": s, "d_model": int(d_model), "tokens": digests}
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _checkpoint_stats(paths):
  """(file, size, mtime) of every file of the imported checkpoints: a checkpoint rewritten in
  place is measured again."""
  out = []
  for p in paths:
    for name in sorted(os.listdir(p)):
      st = os.stat(os.path.join(p, name))
      out.append([os.path.join(p, name), st.st_size, st.st_mtime_ns])
  return out


def stored_width(directory, label, key):
  """(result, arrays) of a width stored under this key, or None (not stored, other settings, or
  unreadable: a damaged file is reported and trained again)."""
  path = os.path.join(directory, f"{label}.npz")
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      if str(f["key"]) != key:
        return None
      result = json.loads(str(f["result"]))
      arrays = {k[len("arrays/"):]: f[k] for k in f.files if k.startswith("arrays/")}
  except Exception as e:  # noqa: BLE001 - any unreadable file is trained again
    print(f"memjax: warning: {path} cannot be read ({type(e).__name__}: {e}); training "
          f"{label} again", file=sys.stderr)
    return None
  return result, arrays


def width_checkpoints(directory, label, key):
  """Where a width checkpoints while it trains (its key in the name: other settings are other
  models)."""
  return os.path.join(directory, f"{label}-{key[:16]}.checkpoints")


def store_width(directory, label, key, result, arrays):
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{label}.npz")
  # A killed write leaves the previous file or none, never half of one.
  jsonio.savez_atomic(path, key=np.array(key),
                      result=np.array(json.dumps(result, default=jsonio.default)),
                      **{f"arrays/{k}": v for k, v in arrays.items()})


def _log(settings, *args):
  if not settings.quiet:
    print(*args, flush=True)


# ---------------------------------------------------------------------------------------------
# Run.


def run_width(settings, cfg, label, train_NxS, samples, index, ckpt_dir):
  """Trains one width and measures everything of it: (its results dict, its arrays)."""
  from memjax.estimators import dynamics
  c, k = settings.context, settings.continuation
  tcfg = settings.train

  def on_segment(i, steps, state, losses):
    # The stack's own model only: its padding copies (one a device) would be scored too.
    own = run_lib.own_models(state.params, 1)
    sc = dynamics.memorization_scores(cfg, own, samples, c, k, settings.batch_size,
                                      tcfg.vocab_chunk)[0]
    buckets = dynamics.bucket_counts(dynamics.score_buckets(sc)).tolist()
    _log(settings, f"  {label} step {steps}: loss {float(losses[0]):.3f}, mean score "
                   f"{sc.mean():.3f}, buckets {buckets}")
    return {"step": steps, "loss": float(losses[0]), "scores": sc.tolist(), "dtype": str(sc.dtype)}

  t_model = time.time()
  state, _, records = train_in_segments(cfg, tcfg, train_NxS, [np.arange(len(train_NxS))],
                                        [settings.data.seed], settings.checkpoints, ckpt_dir,
                                        label=label, quiet=settings.quiet, on_segment=on_segment)
  check_not_diverged(state, label, ["its model"])
  over = {"steps": [], "mean_score": [], "bucket_counts": [], "loss": []}
  scores_C = [np.asarray(r["scores"], r["dtype"]) for r in records]
  for r, sc in zip(records, scores_C):
    _record(over, r["step"], sc, r["loss"])
  return analyze(settings, cfg, label, state.params, np.stack(scores_C), over, samples, index,
                 t_model)


def _record(over, step, scores_B, loss):
  from memjax.estimators import dynamics
  over["steps"].append(step)
  over["mean_score"].append(float(scores_B.mean()))
  over["bucket_counts"].append(dynamics.bucket_counts(dynamics.score_buckets(scores_B)).tolist())
  over["loss"].append(loss)


def run_checkpoints(settings, label, samples, index):
  """Scores imported checkpoints (model.paths, in training order) as one stack: the scores at
  each checkpoint take the place of the training segments, the last checkpoint that of the
  trained model. (results dict, arrays)."""
  import jax
  from memjax.estimators import dynamics
  from memjax.model import hf
  cfg, t_model = settings.model_cfg, time.time()
  if int(samples.max()) >= cfg.vocab_size:
    _fail("model.paths", f"the tokenizer gives token {int(samples.max())}, outside the "
                         f"checkpoints' vocabulary of {cfg.vocab_size}")
  _log(settings, f"loading {len(settings.model_paths)} checkpoints ({hf.describe(cfg)})")
  cfg, params_M = hf.load_stack(settings.model_paths, cfg.precision)
  scores_MxB = dynamics.memorization_scores(cfg, params_M, samples, settings.context,
                                            settings.continuation, settings.batch_size,
                                            settings.train.vocab_chunk)
  logp_MxB = _stack_logprobs(cfg, params_M, samples, settings.batch_size)
  over = {"steps": [], "mean_score": [], "bucket_counts": [], "loss": [],
          "checkpoints": list(settings.model_paths)}
  for i, path in enumerate(settings.model_paths):
    loss = float(-logp_MxB[i].mean() * np.log(2))  # nats a token, as the training loss
    _record(over, i, scores_MxB[i], loss)
    _log(settings, f"  {os.path.basename(path.rstrip('/'))}: loss {loss:.3f}, mean score "
                   f"{scores_MxB[i].mean():.3f}, buckets {over['bucket_counts'][-1]}")
  last_1 = jax.tree.map(lambda x: x[-1:], params_M)  # the last checkpoint, a stack of one
  return analyze(settings, cfg, label, last_1, scores_MxB, over, samples, index, t_model)


def _stack_logprobs(cfg, params_M, samples, batch_size):
  """Mean log2-probability of tokens 1.. of each sample under each model: [M, B]."""
  import jax.numpy as jnp
  from memjax import likelihood
  out = []
  for start in range(0, len(samples), batch_size):
    batch = jnp.asarray(samples[start:start + batch_size], jnp.int32)
    out.append(np.asarray(likelihood.shared_token_logprobs(cfg, params_M, batch))[..., 1:]
               .mean(-1))
  return np.concatenate(out, axis=1)


def _grid(settings, cfg, params_1, samples):
  """Scores of the last model at every (context, continuation) of the grid."""
  from memjax.estimators import dynamics
  grid, grid_scores = [], {}
  s = samples.shape[1]
  for cc in settings.contexts:
    for kk in settings.continuations:
      if cc + kk > s:
        grid.append({"context": cc, "continuation": kk, "status": "skipped",
                     "reason": f"context + continuation = {cc + kk} > seq_len = {s}"})
        continue
      sc = dynamics.memorization_scores(cfg, params_1, samples, cc, kk, settings.batch_size,
                                        settings.train.vocab_chunk)[0]
      grid_scores[cc, kk] = sc
      grid.append({"context": cc, "continuation": kk, "status": "ok",
                   "mean_score": float(sc.mean()),
                   "bucket_counts": dynamics.bucket_counts(dynamics.score_buckets(sc)).tolist()})
  return grid, grid_scores


def _embeddings(cfg, params, samples, c, final_buckets):
  from memjax.estimators import dynamics
  emb = dynamics.sample_embeddings(cfg, params, samples, c)
  proj, ratio = dynamics.pca_2d(emb)
  cent = dynamics.centroid_distances(emb, final_buckets)
  return proj, {"pca_explained": ratio.tolist(), "centroid_distances": cent["distances"],
                "relative_centroid_distances": cent["relative"], "spread": cent["spread"],
                "bucket_counts": cent["counts"], "empty_buckets": cent["empty"]}


def _predictor(settings, samples, final_buckets, vocab):
  from memjax.estimators import dynamics
  c = settings.context
  tr, te = dynamics.split_train_test(len(samples), settings.test_fraction, settings.data.seed)
  module, pparams, plosses = dynamics.train_predictor(
      samples[tr, :c], final_buckets[tr], vocab, pcfg=settings.predictor)
  pred = dynamics.predict(module, pparams, samples[te, :c])
  predictor = dynamics.classification_report(final_buckets[te], pred, final_buckets[tr])
  predictor.update(train_samples=int(len(tr)), final_train_loss=float(plosses[-20:].mean()))
  return predictor


def analyze(settings, cfg, label, params_1, scores_CxB, over, samples, index, t_model):
  """Everything measured of a model whose scores over training (or over checkpoints) are
  scores_CxB, params_1 its final parameters (a stack of one): (results dict, arrays)."""
  from memjax.estimators import dynamics
  from memjax.model import hf
  from memjax import train as train_lib
  c, k = settings.context, settings.continuation
  params = train_lib.model_slice(params_1, 0)
  buckets_CxB = dynamics.score_buckets(scores_CxB)
  over["transitions"] = dynamics.transition_matrices(buckets_CxB).tolist()
  final_scores, final_buckets = scores_CxB[-1], buckets_CxB[-1]
  grid, grid_scores = _grid(settings, cfg, params_1, samples)
  proj, embeddings = _embeddings(cfg, params, samples, c, final_buckets)

  gen = dynamics.greedy_generations(cfg, params_1, samples, c, k, settings.batch_size,
                                    settings.train.vocab_chunk)[0]
  steps_out = dynamics.step_dynamics(cfg, params, gen, c, index, settings.ngram_n)
  div = dynamics.divergence_points(gen, samples, c)
  effect = dynamics.boundary_effect(steps_out["entropy"], steps_out["count"], div, final_scores,
                                    settings.window, settings.memorized_threshold)
  effect["ngram_n"] = settings.ngram_n
  predictor = _predictor(settings, samples, final_buckets, cfg.vocab_size)

  arrays = {f"{label}/grid_c{cc}_k{kk}": v for (cc, kk), v in grid_scores.items()}
  arrays.update({f"{label}/scores_per_checkpoint": scores_CxB, f"{label}/pca": proj,
                 f"{label}/final_buckets": final_buckets,
                 f"{label}/entropy_steps": steps_out["entropy"],
                 f"{label}/ngram_count_steps": steps_out["count"], f"{label}/divergence": div})
  result = {
      "label": label, "layers": cfg.layers, "d_model": cfg.d_model,
      "n_params": hf.n_params(cfg), "train_loss": over["loss"][-1],
      "mean_score": float(final_scores.mean()), "over_training": over, "grid": grid,
      "embeddings": embeddings, "decoding_dynamics": effect, "predictor": predictor,
      "seconds": round(time.time() - t_model, 1)}
  _log(settings, f"{label}: {hf.n_params(cfg):,} params, mean score "
                 f"{final_scores.mean():.3f}, predictor acc {predictor['accuracy']:.3f} vs "
                 f"majority {predictor['majority_accuracy']:.3f} ({time.time() - t_model:.0f}s)")
  return result, arrays


def _models(settings, vocab, seq_len):
  """The shapes measured: one per sweep.d_model, or the imported checkpoints' one."""
  from memjax.model import gpt2
  if settings.model_paths:
    return [settings.model_cfg]
  return [gpt2.ModelConfig(vocab, seq_len, settings.layers, d, settings.num_heads)
          for d in settings.d_model]


def main(settings: DynamicsSettings, workdir: str):
  from memjax.estimators import dynamics

  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  train_NxS, _, vocab, info = load_tokens(settings.data, workdir)
  s = settings.data.seq_len
  samples = train_NxS[: settings.score_samples]
  _log(settings, f"data: {info['source']}, V={vocab}, {len(train_NxS)} training sequences of "
                 f"{s} tokens, {len(samples)} scored ({time.time() - t0:.1f}s)")
  index = ngram_counts(settings, train_NxS, vocab, workdir)
  results = {"experiment": "dynamics", "data": info,
             "settings": config_lib.to_jsonable(settings), "buckets": list(dynamics.BUCKET_LABELS),
             "models": [], "widths_reused": []}
  store = os.path.join(workdir, "dynamics_models")
  models = _models(settings, vocab, s)
  labels = [f"L{cfg.layers}_d{cfg.d_model}" for cfg in models]
  keys = [width_key(settings, cfg.d_model, train_NxS) for cfg in models]
  measured = []  # by this process

  def load(i, earlier):
    stored = stored_width(store, labels[i], keys[i])
    if stored is not None and earlier:
      results["widths_reused"].append(labels[i])
      _log(settings, f"{labels[i]}: stored in {store}, not measured again")
    return stored

  def compute(i):
    if settings.model_paths:
      stored = run_checkpoints(settings, labels[i], samples, index)
    else:
      stored = run_width(settings, models[i], labels[i], train_NxS, samples, index,
                         width_checkpoints(store, labels[i], keys[i]))
    store_width(store, labels[i], keys[i], *stored)
    checkpoint.ChunkCheckpoints(width_checkpoints(store, labels[i], keys[i])).delete()
    measured.append(labels[i])
    return stored

  stored = run_lib.run_units(run_lib.Processes(), len(models), load, compute, "dynamics width")
  if stored is None:  # another process writes the report
    print(run_lib.other_process_line(len(measured), "widths", t0))
    return
  arrays = {}
  for result, width_arrays in stored:
    results["models"].append(result)
    arrays.update(width_arrays)
  results["seconds"] = round(time.time() - t0, 1)
  jsonio.write_atomic(os.path.join(workdir, "results.json"), results, indent=1)
  jsonio.savez_atomic(os.path.join(workdir, "scores.npz"), **arrays)
  write_figures(results, arrays, workdir)
  print(report_text(results))


def planned_vocab(d: DataSettings, model_cfg=None) -> int:
  """The vocabulary a run will have, without reading its corpus."""
  from memjax.data import tokenize as tokenize_lib
  if model_cfg is not None:
    return model_cfg.vocab_size
  if d.source == "synthetic":
    return d.vocab_size
  kind = "file" if d.tokenizer == "checkpoint" else d.tokenizer
  return tokenize_lib.planned_vocab_size(kind, d.vocab_size, d.tokenizer_path)


def plan_header(name, settings, vocab) -> str:
  d = settings.data
  return (f"plan: {name} on {d.source} data (V={vocab:,}, S={d.seq_len}); {d.num_samples:,} "
          f"training sequences; a run reuses the widths stored in its workdir")


def dry_run(settings: DynamicsSettings, workdir: str, process=None):
  """Print the plan (widths, models, tokens) without reading the corpus or training."""
  procs = run_lib.dry_run_processes(process)
  vocab = planned_vocab(settings.data, settings.model_cfg if settings.model_paths else None)
  lines = [plan_header("memorization dynamics", settings, vocab)]
  if settings.model_paths:
    lines.append(f"  {len(settings.model_paths)} imported checkpoints scored as one stack, "
                 "nothing trained")
  else:
    for i, cfg in enumerate(_models(settings, vocab, settings.data.seq_len)):
      lines.append(run_lib.unit_line(procs, i, f"L{cfg.layers}_d{cfg.d_model}", cfg, 1,
                                     settings.train, f"scored at {settings.checkpoints} segment "
                                     f"ends on {settings.score_samples} samples"))
  print("\n".join(lines))


def report_text(results) -> str:
  lines = ["memorization dynamics (Chen, Han, Miyao 2024)",
           f"{'model':>10} {'params':>9} {'loss':>6} {'score':>6} {'buckets (final)':>26} "
           f"{'H jump mem/unmem':>17} {'pred acc/F1':>12} {'majority':>9}"]
  for m in results["models"]:
    e, p = m["decoding_dynamics"], m["predictor"]
    jump = lambda g: "n/a" if e[g]["entropy_jump"] is None else f"{e[g]['entropy_jump']:+.2f}"
    lines.append(f"{m['label']:>10} {m['n_params']:>9,} {m['train_loss']:6.3f} "
                 f"{m['mean_score']:6.3f} {str(m['over_training']['bucket_counts'][-1]):>26} "
                 f"{jump('memorized') + '/' + jump('unmemorized'):>17} "
                 f"{p['accuracy']:.2f}/{p['macro_f1']:.2f}{'':>3} {p['majority_accuracy']:9.2f}")
  lines.append(f"({results['seconds']}s; results.json, scores.npz and figures in the workdir)")
  return "\n".join(lines)


def write_figures(results, arrays, workdir):
  """score_grid.png, over_training.png, transitions.png, embeddings_pca.png,
  centroid_distances.png and boundary_effect.png."""
  from memjax.estimators import dynamics
  plt = report.pyplot()
  models = results["models"]
  colors = plt.cm.viridis(np.linspace(0, 1, dynamics.NUM_BUCKETS))
  for figure in (_score_grid, _over_training, _transitions, _embeddings_pca,
                 _centroid_distances, _boundary_effect):
    name, fig = figure(plt, models, arrays, colors)
    report.save(fig, os.path.join(workdir, name), dpi=100)


def _score_grid(plt, models, arrays, colors):
  """score_grid.png: the score distribution across the grid, stacked bucket fractions per
  (model, context, continuation)."""
  from memjax.estimators import dynamics
  nb = dynamics.NUM_BUCKETS
  fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
  for ax, m in zip(axes[0], models):
    cells = [g for g in m["grid"] if g["status"] == "ok"]
    fr = np.array([np.array(g["bucket_counts"]) / max(1, sum(g["bucket_counts"])) for g in cells])
    bottom = np.zeros(len(cells))
    for b in range(nb):
      ax.bar(range(len(cells)), fr[:, b], bottom=bottom, color=colors[b],
             label=dynamics.BUCKET_LABELS[b])
      bottom += fr[:, b]
    ax.set_xticks(range(len(cells)), [f"c{g['context']}\nk{g['continuation']}" for g in cells],
                  fontsize=7)
    ax.set_title(f"{m['label']} ({m['n_params']:,} params)")
    ax.set_ylabel("fraction of samples")
  axes[0][-1].legend(title="score", fontsize=7)
  return "score_grid.png", fig


def _over_training(plt, models, arrays, colors):
  """over_training.png: bucket fractions against training steps."""
  from memjax.estimators import dynamics
  nb = dynamics.NUM_BUCKETS
  fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
  for ax, m in zip(axes[0], models):
    o = m["over_training"]
    counts = np.array(o["bucket_counts"], float)
    counts /= counts.sum(1, keepdims=True)
    if len(o["steps"]) > 1:
      ax.stackplot(o["steps"], counts.T, colors=colors, labels=dynamics.BUCKET_LABELS)
    else:  # one checkpoint: an area over one step has no width, so one stacked bar
      bottom = 0.0
      for b in range(nb):
        ax.bar(o["steps"], counts[:, b], bottom=bottom, width=o["steps"][0] * 0.2,
               color=colors[b], label=dynamics.BUCKET_LABELS[b])
        bottom += counts[:, b]
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of samples")
    ax.set_title(m["label"])
  axes[0][-1].legend(title="score", fontsize=7, loc="upper left")
  return "over_training.png", fig


def _transitions(plt, models, arrays, colors):
  """transitions.png: the first and the last transition matrix of each model."""
  from memjax.estimators import dynamics
  nb = dynamics.NUM_BUCKETS
  fig, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 7.5), squeeze=False)
  for j, m in enumerate(models):
    t = m["over_training"]["transitions"]
    for i, (name, mat) in enumerate((("first", t[0] if t else None),
                                     ("last", t[-1] if t else None))):
      ax = axes[i][j]
      if mat is None:
        ax.set_axis_off()
        if i == 0:
          ax.text(0.5, 0.5, f"{m['label']}: one checkpoint, no transitions\n"
                  "(dynamics.checkpoints >= 2 for them)", ha="center", va="center", fontsize=9)
        continue
      mat = np.array(mat)
      ax.imshow(mat, cmap="Blues")
      for a in range(nb):
        for b in range(nb):
          ax.text(b, a, str(mat[a, b]), ha="center", va="center", fontsize=7)
      ax.set_xticks(range(nb), dynamics.BUCKET_LABELS, fontsize=6, rotation=45)
      ax.set_yticks(range(nb), dynamics.BUCKET_LABELS, fontsize=6)
      ax.set_xlabel("bucket after")
      ax.set_ylabel("bucket before")
      ax.set_title(f"{m['label']}: {name} segment", fontsize=9)
  return "transitions.png", fig


def _embeddings_pca(plt, models, arrays, colors):
  """embeddings_pca.png: the embeddings' PCA coloured by bucket."""
  from memjax.estimators import dynamics
  nb = dynamics.NUM_BUCKETS
  fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
  for ax, m in zip(axes[0], models):
    proj = arrays[f"{m['label']}/pca"]
    bk = arrays[f"{m['label']}/final_buckets"]
    for b in range(nb):
      sel = bk == b
      if sel.any():
        ax.scatter(proj[sel, 0], proj[sel, 1], s=6, color=colors[b],
                   label=dynamics.BUCKET_LABELS[b])
    ev = m["embeddings"]["pca_explained"]
    ax.set_title(f"{m['label']} (PC1 {ev[0]:.0%}, PC2 {ev[1]:.0%})", fontsize=9)
    ax.legend(fontsize=6, markerscale=2)
  return "embeddings_pca.png", fig


def _centroid_distances(plt, models, arrays, colors):
  """centroid_distances.png: across model sizes, each bucket's centroid from the lowest
  bucket's, relative to the samples' spread (nan, not drawn, for empty buckets)."""
  from memjax.estimators import dynamics
  nb = dynamics.NUM_BUCKETS
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for m in models:
    rel = np.array(m["embeddings"]["relative_centroid_distances"], float)
    ax.plot(range(nb), rel[0], "-o", ms=3, label=f"{m['label']} ({m['n_params']:,} params)")
  ax.set_xticks(range(nb), dynamics.BUCKET_LABELS, fontsize=7)
  ax.set_xlabel("score bucket")
  ax.set_ylabel("distance to the 0.0-0.2 centroid / spread")
  ax.legend(fontsize=7)
  return "centroid_distances.png", fig


def _boundary_effect(plt, models, arrays, colors):
  """boundary_effect.png: entropy and n-gram frequency around the divergence point."""
  fig, axes = plt.subplots(2, len(models), figsize=(4.5 * len(models), 7), squeeze=False)
  for j, m in enumerate(models):
    e = m["decoding_dynamics"]
    for i, (key, ylabel) in enumerate((("entropy", "entropy (bits)"),
                                       ("log10_count", f"log10(1 + {e['ngram_n']}-gram count)"))):
      ax = axes[i][j]
      for g, style in (("memorized", "-o"), ("unmemorized", "--s")):
        y = np.array([np.nan if v is None else v for v in e[g][key]], float)
        ax.plot(e["offsets"], y, style, ms=3, label=f"{g} ({e[g]['aligned']} aligned)")
      ax.axvline(0, color="gray", lw=0.8)
      ax.set_xlabel("step from the first wrong token")
      ax.set_ylabel(ylabel)
      ax.set_title(m["label"], fontsize=9)
      ax.legend(fontsize=6)
  return "boundary_effect.png", fig
