"""Membership inference against stacks of target models, LiRA shadow stacks, and the F1 law.

`python -m memjax.main --config=configs/membership.py --workdir=runs/membership` runs it:

1. Targets: for every shape (layers x d_model) one stack holds a model per dataset size N and
   seed (memjax.train). Synthetic data (`data.source="synthetic"`): a model's members are its N
   training samples (uniform tokens from `synthetic.train_key` of its data key); non-members are
   held-out samples from `synthetic.test_key`, the same distribution. Text (`"text"`): the corpus
   is built by `memjax.data.text.build_text_dataset`; a model with seed s and N members trains on
   the first N of a permutation of the training pool seeded by (data.seed, s); non-members come
   from the held-out pool; each shape also trains a reference model on the reference pool
   (disjoint from both) for the reference-calibrated attack. On synthetic data the reference is
   the true (uniform) distribution, so the reference attack ranks like the loss attack.
2. Evaluation set of each target: eval.eval_size / 2 members (at most N) and as many
   non-members, drawn by a seed derived from (data.seed, model seed, N) - a balanced set.
3. Scores (memjax.estimators.membership): loss, reference, zlib, Min-K%, Min-K%++ from one pass of
   `likelihood.next_token_stats` over each model's evaluation set; metrics with bootstrap CIs.
4. LiRA (`lira.num_models` > 0): a stack of shadow models of one shape trained on the rows of a
   membership matrix over `lira.candidates` candidate samples (each candidate in exactly half of
   the models). Each shadow in turn is the target and the others are its shadows (leave one out,
   with num_models/2 - 1 IN and as many OUT shadows for each candidate: mi.balanced_shadows);
   online / offline LiRA, per-sample or global variances, against the loss attack on the same
   balanced set.
5. The law F1 = 1/2 (1 + c1 sigmoid(c2 (x + c3))) fitted to the targets' (x, F1 of the loss
   attack at the median threshold), with x = S log2 V N / params and x = capacity / N.

Outputs: results.jsonl (one row per target model, LiRA targets with role "lira_target"),
summary.json (law fits, curves, LiRA means), design.npz + design.json (membership matrix, evaluation
indices, seeds, encodings), f1_vs_dataset_size.png, roc.png, law_fit.png.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import time

import numpy as np
from absl import logging

from memjax import config as config_lib
from memjax.engine import checkpoint
from memjax import schema
from memjax.data import corpus as corpus_lib
from memjax.data import tokenize as tokenize_lib
from memjax.engine import jsonio
from memjax.engine import run as run_lib
from memjax import report
from memjax.estimators import membership as mi
from memjax.train import TrainConfig

SOURCES = ("synthetic", "text")
ATTACKS = ("loss", "reference", "zlib", "min_k", "min_k_pp")
LIRA_ATTACKS = ("loss", "lira_online", "lira_offline", "lira_online_global", "lira_offline_global")
METRICS = ("auc", "f1_median", "f1_best", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01")


def balanced_eval(member_pool, nonmember_pool, k, seed):
  """(members, non-members): k of each, drawn without replacement (seeded): a balanced set."""
  rng = np.random.default_rng(seed)
  return (np.sort(rng.choice(np.asarray(member_pool), k, replace=False)),
          np.sort(rng.choice(np.asarray(nonmember_pool), k, replace=False)))


def evaluate_attack(scores, labels, name, n_bootstrap, seed):
  """membership.attack_report marked valid, or {"valid": False, "reason"} for bad scores."""
  try:
    seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    return {"valid": True, **mi.attack_report(scores, labels, name, n_boot=n_bootstrap,
                                              seed=seed)}
  except ValueError as e:
    return {"valid": False, "reason": str(e)}


def fit_law(x, f1, x_form):
  x, f1 = np.asarray(x, np.float64), np.asarray(f1, np.float64)
  ok = np.isfinite(x) & np.isfinite(f1)
  try:
    return {"valid": True, "x_form": x_form, **mi.fit_law(x[ok], f1[ok])}
  except (ValueError, RuntimeError) as e:
    return {"valid": False, "x_form": x_form, "n_points": int(ok.sum()), "reason": str(e)}

Field = config_lib.Field
COMMON_FIELDS = (
    config_lib.experiment_field("membership"), config_lib.QUIET,
    Field("data.source", "str", "uniform synthetic tokens, or a text corpus", allowed=SOURCES),
    Field("data.vocab_size", "int", "synthetic: V; text: the BPE's vocabulary", minimum=2),
    Field("data.seq_len", "int", "S, tokens a sequence", minimum=2, maximum=65536),
    Field("data.seed", "int", "evaluation draws, text pools, LiRA candidates", minimum=0),
    config_lib.POOL_SPLIT,
    config_lib.NUM_HEADS,
    Field("sweep.layers", "ints", "numbers of layers of the targets"),
    Field("sweep.d_model", "ints", "widths of the targets"),
    Field("sweep.dataset_sizes", "ints", "N, members of a target"),
    Field("sweep.seeds", "ints", "seeds, one target each", minimum=0),
    Field("sweep.precision", "str", "precision of every model", allowed=config_lib.PRECISIONS),
    *config_lib.TRAIN_FIELDS,
    Field("eval.batch_size", "int", "sequences a scoring call"),
    Field("eval.eval_size", "int", "evaluation set of a target: half members (at most N), half "
          "non-members; even", minimum=2),
    Field("eval.bootstrap", "int", "resamples of the confidence intervals; 0: none", minimum=0),
    Field("eval.min_k", "float", "the k of Min-K% and Min-K%++", maximum=1.0),
    Field("lira.num_models", "int", "shadow models (even, >= 6); 0: no LiRA", minimum=0),
    Field("lira.candidates", "int", "candidates, each a member of half of the shadows", minimum=2),
    Field("lira.layers", "int", "layers of the shadows"),
    Field("lira.d_model", "int", "width of the shadows"),
    Field("lira.steps", "int", "training steps of the shadows; 0: train.steps", minimum=0),
    Field("lira.seed", "int", "seed of the membership matrix and shadows", minimum=0),
    Field("lira.max_targets", "int", "leave-one-out targets; 0: every shadow model", minimum=0),
    Field("lira.models_per_stack", "int", "shadows trained as one stack; 0: as many as fit the "
          "devices, split evenly over the processes", minimum=0, default=0),
    Field("law.bits_per_param", "float", "the capacity of x = capacity / N is this x params; 0: "
          "measured (the shape's largest memorization over N)", strict=False),
)
CORPUS = Field("data.corpus", "str", "text: where the documents come from",
               allowed=corpus_lib.SOURCE_KINDS)
# Read only for data.source='text' (a synthetic config may leave them as they are).
TEXT_FIELDS = (
    CORPUS,
    Field("data.paths", "paths", "text: txt/jsonl/parquet files or globs"),
    Field("data.text_field", "str", "text: the jsonl/parquet field or TFDS feature of the text"),
    Field("data.max_documents", "int", "text: documents read at most; 0: all", minimum=0),
    Field("data.tokenizer", "str", "text: a BPE trained on the corpus, a tokenizer.json, or "
          "bytes", allowed=tokenize_lib.TOKENIZER_KINDS),
    Field("data.tokenizer_path", "str", "text, tokenizer=file: the tokenizer.json"),
    Field("data.train_pool", "int", "text: members are drawn from it"),
    Field("data.heldout_pool", "int", "text: non-members"),
    Field("data.reference_pool", "int", "text: trains each shape's reference model; 0: no "
          "reference attack", minimum=0),
    Field("data.cache_dir", "str", "text: the dataset cache; empty: <workdir>/cache"),
)
# Read only for data.corpus='tfds' (the stored stacks of other corpora keep their keys).
TFDS_FIELDS = (
    Field("data.tfds_name", "str", "tfds: the dataset, e.g. wiki40b/en", default=""),
    Field("data.tfds_split", "str", "tfds: the split", allow_empty=False, default="train"),
    Field("data.tfds_data_dir", "path", "tfds: where it is prepared; empty: TFDS's default",
          default=""),
)
SCHEMA = schema.Schema(COMMON_FIELDS + TEXT_FIELDS + TFDS_FIELDS)


@dataclasses.dataclass(frozen=True)
class MembershipSettings:
  source: str
  vocab_size: int
  seq_len: int
  data_seed: int
  text: dict  # text-only settings (corpus, paths, tokenizer, pools, cache_dir)
  num_heads: int
  layers: tuple
  d_model: tuple
  precision: str
  dataset_sizes: tuple
  seeds: tuple
  train: TrainConfig
  eval_batch_size: int
  eval_size: int
  bootstrap: int
  min_k: float
  lira_num_models: int
  lira_candidates: int
  lira_layers: int
  lira_d_model: int
  lira_steps: int
  lira_seed: int
  lira_max_targets: int
  lira_models_per_stack: int
  bits_per_param: float
  quiet: bool


_fail = config_lib._fail


def validate(config) -> MembershipSettings:
  """Check a membership config and turn it into settings; raises ConfigError naming the field."""
  schema.check_no_unknown_fields(config, SCHEMA)
  v = schema.values(config, COMMON_FIELDS)
  _check_models(v)
  text = {}
  if v["data.source"] == "synthetic":
    _check_synthetic(config, v)
  else:
    text = _text_settings(config, v)
  return MembershipSettings(
      source=v["data.source"], vocab_size=v["data.vocab_size"], seq_len=v["data.seq_len"],
      data_seed=v["data.seed"], text=text, num_heads=v["model.num_heads"],
      layers=v["sweep.layers"],
      d_model=v["sweep.d_model"], precision=v["sweep.precision"],
      dataset_sizes=tuple(sorted(v["sweep.dataset_sizes"])), seeds=v["sweep.seeds"],
      train=config_lib.train_settings(v), eval_batch_size=v["eval.batch_size"],
      eval_size=v["eval.eval_size"], bootstrap=v["eval.bootstrap"], min_k=v["eval.min_k"],
      lira_num_models=v["lira.num_models"], lira_candidates=v["lira.candidates"],
      lira_layers=v["lira.layers"], lira_d_model=v["lira.d_model"], lira_steps=v["lira.steps"],
      lira_seed=v["lira.seed"], lira_max_targets=v["lira.max_targets"],
      lira_models_per_stack=v["lira.models_per_stack"],
      bits_per_param=v["law.bits_per_param"], quiet=v["quiet"])


def _check_models(v):
  """Widths split into whole heads; the evaluation set halves; LiRA's shadows pair up."""
  heads = v["model.num_heads"]
  config_lib.check_divisible(v["sweep.d_model"], heads)
  if v["eval.eval_size"] % 2:
    _fail("eval.eval_size", f"must be even (half members, half non-members), got "
                            f"{v['eval.eval_size']}")
  lira_m = v["lira.num_models"]
  if lira_m and (lira_m < 6 or lira_m % 2):
    _fail("lira.num_models", f"must be 0 (no LiRA) or an even number >= 6 (each candidate a "
                             f"member of exactly half of the models; each model is attacked with "
                             f"num_models/2 - 1 >= 2 IN and as many OUT shadows a candidate), "
                             f"got {lira_m}")
  if v["lira.d_model"] % heads:
    _fail("lira.d_model", f"must be divisible by model.num_heads={heads}, got {v['lira.d_model']}")


def _check_synthetic(config, v):
  """No files, no documents, and enough distinct sequences for members and non-members."""
  config_lib.refuse_unused_paths(config, "synthetic")
  config_lib.check_pool_split(v["data.pool_split"], synthetic=True,
                              text_source="data.source='text'")
  vocab, seq_len = v["data.vocab_size"], v["data.seq_len"]
  if seq_len * math.log2(vocab) < 20:
    _fail("data.seq_len", f"V**S = {vocab}**{seq_len} distinct sequences are too few for "
                          "distinct members and non-members; raise data.seq_len or vocab_size")


def _text_settings(config, v) -> dict:
  """The text-only settings (MembershipSettings.text), checked against the sweep's sizes."""
  # data.paths given to a corpus that reads no files is refused before its values are checked.
  corpus = schema.values(config, (CORPUS,))[CORPUS.name]
  config_lib.refuse_unused_paths(config, corpus, "data.corpus", tuple(corpus_lib.FILE_EXTENSIONS))
  text = schema.by_key(schema.values(config, TEXT_FIELDS))
  if corpus in corpus_lib.FILE_EXTENSIONS:
    if not text["paths"]:
      _fail("data.paths", f"data.corpus={corpus!r} reads files: give files or globs")
    try:
      corpus_lib.resolve_paths(text["paths"], corpus_lib.FILE_EXTENSIONS[corpus])
    except FileNotFoundError as e:
      _fail("data.paths", str(e))
  if v["data.pool_split"] == "document":
    text["pool_split"] = "document"  # only then: stacks of runs split by sequence keep keys
  if corpus == "tfds":  # only then: the stored stacks of other corpora keep their keys
    text.update(schema.by_key(schema.values(config, TFDS_FIELDS)))
    if not text["tfds_name"]:
      _fail("data.tfds_name", "data.corpus='tfds' needs the dataset name, e.g. 'wiki40b/en'")
  _check_text_sizes(v, text)
  return text


def _check_text_sizes(v, text):
  """The tokenizer is there; N, the non-members and the LiRA candidates fit their pools."""
  vocab = v["data.vocab_size"]
  if text["tokenizer"] == "file" and not os.path.isfile(text["tokenizer_path"]):
    _fail("data.tokenizer_path", f"the tokenizer file {text['tokenizer_path']!r} does not exist")
  if text["tokenizer"] == "bpe" and not (
      tokenize_lib.MIN_BPE_VOCAB <= vocab <= tokenize_lib.MAX_BPE_VOCAB):
    _fail("data.vocab_size", f"a byte-level BPE needs {tokenize_lib.MIN_BPE_VOCAB} to "
                             f"{tokenize_lib.MAX_BPE_VOCAB} tokens, got {vocab}")
  largest = max(v["sweep.dataset_sizes"])
  if largest > text["train_pool"]:
    _fail("sweep.dataset_sizes", f"dataset size {largest} is larger than the training pool "
                                 f"data.train_pool={text['train_pool']}")
  if v["eval.eval_size"] // 2 > text["heldout_pool"]:
    _fail("eval.eval_size", f"eval_size / 2 = {v['eval.eval_size'] // 2} non-members do not fit "
                            f"the held-out pool data.heldout_pool={text['heldout_pool']}")
  if v["lira.num_models"] and v["lira.candidates"] > text["train_pool"]:
    _fail("lira.candidates", f"{v['lira.candidates']} candidates do not fit the training pool "
                             f"data.train_pool={text['train_pool']}")


# ---------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class TextData:
  tokens: np.ndarray  # [num_sequences, S]
  vocab_size: int
  train_idx: np.ndarray
  heldout_idx: np.ndarray
  reference_idx: np.ndarray
  pools: dict  # text_dataset.json: pool sizes, documents, held-out text shared with members
  key: dict  # the dataset's cache key (source files, tokenizer, S): part of every stack's key


def load_text(settings: MembershipSettings, workdir: str) -> TextData:
  from memjax.data import corpus as corpus_lib
  from memjax.data import text as text_lib
  t = settings.text
  source = text_lib.SourceConfig(kind=t["corpus"], paths=t["paths"], text_field=t["text_field"],
                                 name=t.get("tfds_name") or None,
                                 split=t.get("tfds_split", "train"),
                                 data_dir=t.get("tfds_data_dir") or None,
                                 max_documents=t["max_documents"] or None)
  tok = text_lib.TokenizerConfig(kind=t["tokenizer"], path=t["tokenizer_path"] or None,
                                 vocab_size=settings.vocab_size if t["tokenizer"] == "bpe" else None)
  pools = text_lib.PoolSizes(train=t["train_pool"], heldout=t["heldout_pool"],
                             reference=t["reference_pool"])
  pool_split = t.get("pool_split", "sequence")
  try:
    ds = text_lib.build_text_dataset(source, tok, settings.seq_len, pools, settings.data_seed,
                                     cache_dir=t["cache_dir"] or os.path.join(workdir, "cache"),
                                     pool_split=pool_split)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise config_lib.data_error(
        e, t["corpus"] in corpus_lib.FILE_EXTENSIONS, "data.corpus",
        extra_fields=(("split by document", "data.pool_split"),
                      ("pools ask for", "data.train_pool"))) from e
  summary = text_lib.write_workdir_summary(
      workdir, ds, pools, settings.data_seed, ds.train_idx, ds.heldout_idx, ds.reference_idx,
      pool_split, corpus_lib.describe_source(source))
  return TextData(np.asarray(ds.tokens), ds.vocab_size, ds.train_idx, ds.heldout_idx,
                  ds.reference_idx,
                  {k: summary[k] for k in ("pool_split", "documents",
                                           "heldout_overlap_with_train_pool")},
                  ds.manifest["key"])


def text_members(settings, pool_size, seed, n):
  """Positions in the training pool of a text model's N members: perm(data.seed, seed)[:N]."""
  return np.random.default_rng([settings.data_seed, seed]).permutation(pool_size)[:n]


def _eval_seed(settings, seed, n):
  return [settings.data_seed, seed, n, 7]


# ---------------------------------------------------------------------------------------------
# Scoring on the device.


@functools.lru_cache(maxsize=None)
def _stats_fn(cfg, vocab_chunk):
  import jax
  from memjax import likelihood

  @jax.jit
  def fn(params_M, tokens_MxBxS):
    return jax.vmap(lambda p, t: likelihood.next_token_stats(cfg, p, t, vocab_chunk))(
        params_M, tokens_MxBxS)
  return fn


def stack_stats(cfg, params_M, tokens_MxExS, batch, vocab_chunk):
  """logp, entropy, var_logp [M, E, S] (numpy, bits) of each model on its own tokens."""
  import jax.numpy as jnp
  fn = _stats_fn(cfg, vocab_chunk)
  e = tokens_MxExS.shape[1]
  parts = {"logp": [], "entropy": [], "var_logp": []}
  for start in range(0, e, batch):
    idx = np.minimum(np.arange(start, start + batch), e - 1)  # one compiled batch shape
    out = fn(params_M, jnp.asarray(tokens_MxExS[:, idx]))
    stop = min(batch, e - start)
    for k in parts:
      parts[k].append(np.asarray(out[k], np.float64)[:, :stop])
  return {k: np.concatenate(v, 1) for k, v in parts.items()}


def attack_scores(settings, stats_ExS, tokens_ExS, vocab_size, ref_logp_ExS=None):
  """Every single-model attack's scores [E] for one model."""
  lp = stats_ExS["logp"]
  if ref_logp_ExS is None:  # the true uniform distribution (synthetic data)
    ref_logp_ExS = np.full_like(lp, -math.log2(vocab_size))
  return {
      "loss": mi.loss_score(lp),
      "reference": mi.reference_score(lp, ref_logp_ExS),
      "zlib": mi.zlib_score(lp, tokens_ExS, 2 if vocab_size <= 65536 else 4),
      "min_k": mi.min_k_score(lp, settings.min_k),
      "min_k_pp": mi.min_k_plus_plus_score(lp, -stats_ExS["entropy"], stats_ExS["var_logp"],
                                           settings.min_k),
  }


def _train(settings, cfg, tcfg, specs, label, ckpt_dir, members=None, corpus=None):
  """A stack trained on the engine (checkpointed in ckpt_dir): (state of its own models, the
  last call's losses [M])."""
  import jax.numpy as jnp
  corpus_j = None if corpus is None else jnp.asarray(corpus, jnp.int32)
  keys = [f"{label}/{i}/{json.dumps(dataclasses.asdict(sp))}" for i, sp in enumerate(specs)]
  trained = run_lib.train_stack(cfg, tcfg, specs, ckpt_dir, keys, label=label,
                                quiet=settings.quiet, members=members, corpus_NxS=corpus_j)
  state = run_lib.own_models(trained.state, trained.n)
  return state, np.asarray(trained.last_loss_M, np.float64)


# ---------------------------------------------------------------------------------------------
# Resume: a finished stack's rows, ROC scores and design entries are stored in one file, so a
# rerun (after a kill, or to add shapes) trains only the stacks that are not stored yet.


# Settings that no stored stack depends on: a target stack's shape is in its name, and the LiRA
# shadows have their own; so adding a shape to the sweep keeps the stacks already stored. How
# the shadows are cut into stacks is in each stack's name (its range of shadows).
NOT_IN_STACK_KEY = ("quiet", "layers", "d_model", "lira_models_per_stack")
# Settings read only after the stacks are stored (the law's capacity): in no stack's key.
NOT_IN_ANY_STACK = ("bits_per_param",)
# What only the target stacks read; the LiRA shadows read the lira_* settings instead.
TARGETS_ONLY = ("dataset_sizes", "seeds", "eval_size", "min_k")


def _stack_identity(settings, name, legacy=False):
  identity = {k: v for k, v in config_lib.to_jsonable(settings).items()
              if k not in NOT_IN_STACK_KEY}
  from memjax import train as train_lib
  train_lib.drop_fields_at_old_behaviour(identity["train"])  # the schedule fields added later
  # How often a stack is checkpointed changes nothing it computes: keyed as never (as before the
  # option was read), so stored stacks keep their files.
  identity["train"]["checkpoint_every"] = 0
  if legacy:  # the key of stacks stored before it was narrowed to what each stack reads
    return identity
  if name.startswith("lira"):
    unread = lambda k: k in NOT_IN_ANY_STACK or k in TARGETS_ONLY
  else:
    unread = lambda k: k in NOT_IN_ANY_STACK or k.startswith("lira_")
  return {k: v for k, v in identity.items() if not unread(k)}


def stack_path(settings, workdir, name, data_key=None, legacy=False):
  """The file of a finished stack: its name and a hash of the settings it depends on, and of
  `data_key` (text: the dataset's cache key, which changes when a corpus file changes).
  legacy=True: the file an earlier version stored it in (keyed by every setting)."""
  identity = _stack_identity(settings, name, legacy)
  keyed = [name, identity] if data_key is None else [name, identity, data_key]
  digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode())
  safe = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
  return os.path.join(workdir, "stacks", f"{safe}-{digest.hexdigest()[:16]}.npz")


def _save_stack(path, rows, design_part):
  arrays = {f"design/{k}": np.asarray(v) for k, v in design_part.items()}
  for i, r in enumerate(rows):
    for attack, (scores, labels) in r.get("_roc", {}).items():
      arrays[f"roc/{i}/{attack}/scores"] = np.asarray(scores)
      arrays[f"roc/{i}/{attack}/labels"] = np.asarray(labels)
  arrays["rows"] = np.array(json.dumps([{k: v for k, v in r.items() if k != "_roc"}
                                        for r in rows]))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  jsonio.savez_atomic(path, **arrays)  # a killed write leaves no half-stored stack


def _load_stack(path):
  with np.load(path, allow_pickle=False) as f:
    rows = json.loads(str(f["rows"]))
    design_part = {k[len("design/"):]: f[k] for k in f.files if k.startswith("design/")}
    for k in f.files:
      if k.startswith("roc/") and k.endswith("/scores"):
        _, i, attack, _ = k.split("/")
        rows[int(i)].setdefault("_roc", {})[attack] = (f[k], f[k[:-len("scores")] + "labels"])
  return rows, design_part


def checkpoint_dir(path):
  """Where a stack stored at `path` checkpoints while it trains."""
  return path[:-len(".npz")] + ".checkpoints"


def load_stored_stack(settings, workdir, name, counts=None, text=None):
  """(rows, design part) of a stack an earlier run stored, or None. An unreadable stored file
  is reported (and the stack trained again). A text stack is keyed by its dataset too
  (`TextData.key`); `counts` (a dict, optional) gains "loaded"."""
  data_key = None if text is None else text.key
  path = stack_path(settings, workdir, name, data_key)
  legacy = stack_path(settings, workdir, name, data_key, legacy=True)
  stored = path if os.path.exists(path) or not os.path.exists(legacy) else legacy
  if not os.path.exists(stored):
    return None
  try:
    rows, part = _load_stack(stored)
  except Exception as e:  # noqa: BLE001 - a truncated zip, a missing array, a foreign file
    logging.warning("%s: the stored stack %s does not load (%s); training it again", name,
                    stored, e)
    return None
  logging.info("%s: already done (%s)", name, stored)
  if stored != path:  # stored by an earlier version: keep it under today's key too
    _save_stack(path, rows, part)
  if counts is not None:
    counts["loaded"] = counts.get("loaded", 0) + 1
  return rows, part


def compute_stack(settings, workdir, name, compute, counts=None, text=None):
  """`compute(design_part, checkpoint_dir) -> rows` for one stack, stored (its checkpoints then
  deleted); returns (rows, design part). `counts` (a dict, optional) gains "trained"."""
  path = stack_path(settings, workdir, name, None if text is None else text.key)
  part = {}
  rows = compute(part, checkpoint_dir(path))
  _save_stack(path, rows, part)
  checkpoint.ChunkCheckpoints(checkpoint_dir(path)).delete()
  if counts is not None:
    counts["trained"] = counts.get("trained", 0) + 1
  return rows, part


# ---------------------------------------------------------------------------------------------
# Target models.


def stack_units(settings, text, vocab=None, process_count=1):
  """(name, compute) of every stack of the experiment: the targets (a stack per shape), then the
  LiRA shadows in stacks (`lira_chunks`); compute(design_part, checkpoint_dir) trains and
  scores it (and attacks the targets)."""
  units = []
  for layers in settings.layers:
    for d in settings.d_model:
      label = f"L{layers} d{d} {settings.precision}"
      units.append((f"targets {label}", functools.partial(_target_stack, settings, text, layers,
                                                          d, label)))
  vocab = vocab or (text.vocab_size if text else settings.vocab_size)
  for first, end in lira_chunks(settings, vocab, process_count) if settings.lira_num_models else ():
    units.append((f"lira shadows {first}-{end - 1}",
                  functools.partial(lira_shadows, settings, text, first, end)))
  return units


def run_stacks(settings, workdir, text, design, counts=None):
  """Every stack's rows (skipping stored ones; this process's share with several processes),
  its design entries in `design`; None on a process other than 0 (process 0 writes the report).
  """
  procs = run_lib.Processes()
  units = stack_units(settings, text, process_count=procs.count)
  load = lambda i, earlier: load_stored_stack(settings, workdir, units[i][0],
                                              counts if earlier else None, text)
  compute = lambda i: compute_stack(settings, workdir, units[i][0], units[i][1], counts, text)
  stored = run_lib.run_units(procs, len(units), load, compute, "membership stack")
  if stored is None:
    return None
  rows, lira_parts = [], []
  for (name, _), (stack_rows, part) in zip(units, stored):
    if name.startswith("lira"):
      lira_parts.append(part)  # the shadows' losses: read by lira_rows, not in design.npz
    else:
      design.update(part)
    rows += stack_rows
  _add_capacity_x(settings, rows)
  if lira_parts:
    rows += lira_rows(settings, text, lira_parts, design)
  return rows


def _target_stack(settings, text, layers, d, label, design, ckpt_dir):
  """One shape's stack of targets: train, score, attack; its design entries go in `design`."""
  import jax
  from memjax.model import gpt2
  from memjax import train as train_lib
  from memjax.data import synthetic

  vocab = text.vocab_size if text else settings.vocab_size
  half = settings.eval_size // 2
  rows = []
  cfg = gpt2.ModelConfig(vocab, settings.seq_len, layers, d, settings.num_heads,
                              settings.precision)
  lr = settings.train.learning_rate
  specs = [train_lib.ModelSpec(n, s, lr) for s in settings.seeds for n in settings.dataset_sizes]
  members = corpus = None
  if text:
    members = [text.train_idx[text_members(settings, len(text.train_idx), sp.seed,
                                           sp.dataset_size)] for sp in specs]
    if len(text.reference_idx):
      specs = specs + [train_lib.ModelSpec(len(text.reference_idx), settings.seeds[0], lr)]
      members.append(text.reference_idx)
    corpus = text.tokens
  start = time.time()
  state, losses = _train(settings, cfg, settings.train, specs, label, ckpt_dir, members, corpus)
  wall = time.time() - start

  # The balanced evaluation set of each target, as tokens [M, 2*half, S].
  n_targets = len(settings.seeds) * len(settings.dataset_sizes)
  toks, counts = [], []
  for i, sp in enumerate(specs[:n_targets]):
    k = min(half, sp.dataset_size)
    if text:
      pool_m, pool_n = members[i], text.heldout_idx
    else:
      pool_m, pool_n = np.arange(sp.dataset_size), np.arange(settings.eval_size)
    mem_idx, non_idx = balanced_eval(pool_m, pool_n, k, _eval_seed(settings, sp.seed,
                                                                          sp.dataset_size))
    design[f"{label}/N{sp.dataset_size}/seed{sp.seed}/members"] = mem_idx
    design[f"{label}/N{sp.dataset_size}/seed{sp.seed}/nonmembers"] = non_idx
    if text:
      t = text.tokens[np.r_[mem_idx, non_idx]].astype(np.int32)
    else:
      key = state.data_key_M[i]
      t = np.r_[np.asarray(synthetic.sequences(synthetic.train_key(key), mem_idx,
                                               settings.seq_len, vocab)),
                np.asarray(synthetic.sequences(synthetic.test_key(key), non_idx,
                                               settings.seq_len, vocab))]
    pad = np.repeat(t[:1], 2 * half - len(t), 0)
    toks.append(np.r_[t, pad])
    counts.append(k)
  tokens = np.stack(toks)
  params_t = jax.tree.map(lambda a: a[:n_targets], state.params)
  stats = stack_stats(cfg, params_t, tokens, settings.eval_batch_size, settings.train.vocab_chunk)
  ref_logp = None
  if text and len(text.reference_idx):
    params_r = jax.tree.map(lambda a: a[n_targets:n_targets + 1], state.params)
    flat = tokens.reshape(1, -1, settings.seq_len)
    ref_logp = stack_stats(cfg, params_r, flat, settings.eval_batch_size,
                           settings.train.vocab_chunk)["logp"].reshape(tokens.shape)

  for i, sp in enumerate(specs[:n_targets]):
    k = counts[i]
    sel = slice(0, 2 * k)
    st = {key: v[i, sel] for key, v in stats.items()}
    labels = np.r_[np.ones(k, bool), np.zeros(k, bool)]
    scores = attack_scores(settings, st, tokens[i, sel], vocab,
                           None if not text else (ref_logp[i, sel] if ref_logp is not None
                                                  else np.full_like(st["logp"], np.nan)))
    attacks = {}
    for j, (name, s) in enumerate(scores.items()):
      if text and ref_logp is None and name == "reference":
        attacks[name] = {"valid": False, "reason": "no reference model (data.reference_pool=0)"}
        continue
      attacks[name] = evaluate_attack(s, labels, name, n_bootstrap=settings.bootstrap,
                                         seed=[settings.data_seed, sp.seed, sp.dataset_size, j])
    seq_lp = st["logp"][:k].sum(-1)
    ref_seq = (np.full(k, -settings.seq_len * math.log2(vocab)) if not text else
               (ref_logp[i, :k].sum(-1) if ref_logp is not None else None))
    mem_est = (None if ref_seq is None
               else float(sp.dataset_size * np.maximum(0.0, seq_lp - ref_seq).mean()))
    n_params = gpt2.n_params(cfg)
    rows.append({
        "role": "target", "source": settings.source, "shape": label, "layers": layers,
        "d_model": d, "heads": settings.num_heads, "vocab_size": vocab,
        "seq_len": settings.seq_len, "precision": settings.precision, "n_params": n_params,
        "dataset_size": sp.dataset_size, "seed": sp.seed, "learning_rate": sp.learning_rate,
        "steps": int(np.asarray(state.step_M)[i]),
        "status": "diverged" if bool(np.asarray(state.diverged_M)[i]) else "ok",
        "train_loss_last": float(losses[i]), "eval_members": k, "eval_nonmembers": k,
        "data_bits": sp.dataset_size * settings.seq_len * math.log2(vocab),
        "mem_bits_est": mem_est,
        "x_tokens": float(mi.tokens_per_param_x(n_params, sp.dataset_size, settings.seq_len, vocab)),
        "attacks": attacks, "wall_s_stack": wall, "train": dataclasses.asdict(settings.train),
        "_roc": {"loss": (scores["loss"], labels)}})
  return rows


def _add_capacity_x(settings, rows):
  """capacity_bits (bits_per_param x params, or the shape's largest seed-mean mem_bits_est)."""
  by_shape = {}
  for r in rows:
    by_shape.setdefault(r["shape"], []).append(r)
  for shape, rs in by_shape.items():
    if settings.bits_per_param > 0:
      cap, how = settings.bits_per_param * rs[0]["n_params"], "bits_per_param"
    else:
      per_n = {}
      for r in rs:  # diverged models and undefined estimates say nothing about capacity
        if (r["status"] == "ok" and r["mem_bits_est"] is not None
            and math.isfinite(r["mem_bits_est"])):
          per_n.setdefault(r["dataset_size"], []).append(r["mem_bits_est"])
      cap = max((float(np.mean(v)) for v in per_n.values()), default=None)
      how = "measured"
    for r in rs:
      r["capacity_bits"], r["capacity_source"] = cap, how
      r["x_capacity"] = None if not cap else float(mi.capacity_ratio_x(cap, r["dataset_size"]))


# ---------------------------------------------------------------------------------------------
# LiRA.


@dataclasses.dataclass(frozen=True)
class LiraSetup:
  """The LiRA study: its membership matrix, candidates and shadow models (all drawn from seeds,
  so each shadow chunk and the analysis make the same)."""
  mat: np.ndarray  # [models, candidates] bool
  cand_rows: np.ndarray
  corpus: np.ndarray  # [candidates, S] tokens
  cfg: object
  tcfg: TrainConfig
  specs: list
  members: list


def lira_shape(settings, vocab):
  """(model shape, train config) of the shadows."""
  from memjax.model import gpt2
  cfg = gpt2.ModelConfig(vocab, settings.seq_len, settings.lira_layers, settings.lira_d_model,
                         settings.num_heads, settings.precision)
  return cfg, dataclasses.replace(settings.train, steps=settings.lira_steps or settings.train.steps)


def lira_setup(settings, text) -> LiraSetup:
  import jax
  from memjax import train as train_lib
  from memjax.data import synthetic
  m, c = settings.lira_num_models, settings.lira_candidates
  vocab = text.vocab_size if text else settings.vocab_size
  mat = mi.membership_matrix(m, c, settings.lira_seed)
  if text:
    rng = np.random.default_rng([settings.data_seed, settings.lira_seed, 11])
    cand_rows = np.sort(rng.choice(text.train_idx, c, replace=False))
    corpus = text.tokens[cand_rows].astype(np.int32)
  else:  # a shared candidate pool of uniform sequences, drawn from its own key
    key = jax.random.fold_in(jax.random.key(settings.data_seed), 1_000_003 + settings.lira_seed)
    cand_rows = np.arange(c)
    corpus = np.asarray(synthetic.sequences(key, np.arange(c, dtype=np.int32), settings.seq_len,
                                            vocab))
  cfg, tcfg = lira_shape(settings, vocab)
  specs = [train_lib.ModelSpec(int(mat[i].sum()), settings.lira_seed * 1000 + i,
                               tcfg.learning_rate) for i in range(m)]
  members = [np.flatnonzero(mat[i]).astype(np.int32) for i in range(m)]
  return LiraSetup(mat, cand_rows, corpus, cfg, tcfg, specs, members)


def lira_chunks(settings, vocab, process_count: int) -> list:
  """(first, end) of each stack of shadows: lira.models_per_stack, or (0) as many as fit the
  local devices, split evenly over the processes."""
  import jax
  from memjax.engine import sweep
  m = settings.lira_num_models
  cfg, tcfg = lira_shape(settings, vocab)
  size = settings.lira_models_per_stack or min(
      sweep.models_that_fit(cfg, tcfg, settings.eval_batch_size, jax.local_devices()),
      -(-m // process_count))
  return [(a, min(a + size, m)) for a in range(0, m, size)]


def lira_shadows(settings, text, first, end, design, ckpt_dir):
  """Trains shadows [first, end) as one stack and stores their losses on every candidate (in
  `design` under "_lira/", which run_stacks takes out of design.npz); no rows of its own."""
  setup = lira_setup(settings, text)
  t0 = time.time()
  state, losses = _train(settings, setup.cfg, setup.tcfg, setup.specs[first:end],
                         f"LiRA shadows {first}-{end - 1}", ckpt_dir, setup.members[first:end],
                         setup.corpus)
  corpus = setup.corpus
  stats = stack_stats(setup.cfg, state.params,
                      np.broadcast_to(corpus, (end - first,) + corpus.shape),
                      settings.eval_batch_size, setup.tcfg.vocab_chunk)
  design.update({"_lira/loss": mi.loss_score(stats["logp"]),
                 "_lira/steps": np.asarray(state.step_M), "_lira/diverged": np.asarray(
                     state.diverged_M), "_lira/last_loss": losses,
                 "_lira/wall_s": np.float64(time.time() - t0)})
  return []


def lira_rows(settings, text, parts, design):
  """Leave-one-out LiRA over the shadows' stored losses (`parts`: each shadow stack's "_lira/"
  arrays, in order): rows with LiRA metrics; the study's design entries go in `design`."""
  from memjax.model import gpt2
  setup = lira_setup(settings, text)
  mat, cfg, tcfg, specs, m = setup.mat, setup.cfg, setup.tcfg, setup.specs, len(setup.specs)
  design["lira/membership"] = mat
  design["lira/candidate_rows"] = setup.cand_rows
  loss_MxC = np.concatenate([p["_lira/loss"] for p in parts])
  steps_M = np.concatenate([p["_lira/steps"] for p in parts])
  diverged_M = np.concatenate([p["_lira/diverged"] for p in parts])
  losses = np.concatenate([p["_lira/last_loss"] for p in parts])
  wall = float(sum(p["_lira/wall_s"] for p in parts))
  vocab = cfg.vocab_size
  c = settings.lira_candidates
  rows = []
  targets = range(m if not settings.lira_max_targets else min(m, settings.lira_max_targets))
  for i in targets:
    others = np.arange(m) != i
    labels_all = mat[i]
    k = int(min(labels_all.sum(), (~labels_all).sum()))
    rng = np.random.default_rng([settings.lira_seed, i, 13])
    sel = np.sort(np.r_[rng.choice(np.flatnonzero(labels_all), k, replace=False),
                        rng.choice(np.flatnonzero(~labels_all), k, replace=False)])
    design[f"lira/target{i}/eval_candidates"] = sel
    labels = labels_all[sel]
    # The same number of IN (and of OUT) shadows for every candidate, num_models/2 - 1 each on
    # this half-IN matrix: counts that differ by class bias the fits.
    used = mi.balanced_shadows(mat[others][:, sel], [settings.lira_seed, i, 17])
    scores = {"loss": loss_MxC[i, sel]}
    for name, online, glob in (("lira_online", True, False), ("lira_offline", False, False),
                               ("lira_online_global", True, True),
                               ("lira_offline_global", False, True)):
      try:
        attack = mi.lira_online if online else mi.lira_offline
        scores[name] = attack(loss_MxC[i, sel], loss_MxC[others][:, sel], mat[others][:, sel],
                              global_variance=glob, used_shadows_MxB=used)
      except ValueError as e:
        scores[name] = e
    attacks = {}
    for j, (name, s) in enumerate(scores.items()):
      if isinstance(s, Exception):
        attacks[name] = {"valid": False, "reason": str(s)}
      else:
        attacks[name] = evaluate_attack(s, labels, name, n_bootstrap=settings.bootstrap,
                                           seed=[settings.lira_seed, i, j])
    rows.append({
        "role": "lira_target", "source": settings.source,
        "shape": f"L{cfg.layers} d{cfg.d_model} {cfg.precision}", "layers": cfg.layers,
        "d_model": cfg.d_model, "heads": cfg.num_heads, "vocab_size": vocab,
        "seq_len": cfg.seq_len, "precision": cfg.precision, "n_params": gpt2.n_params(cfg),
        "dataset_size": specs[i].dataset_size, "seed": specs[i].seed, "target_index": i,
        "num_shadow_models": m - 1, "shadows_per_group": m // 2 - 1,
        "candidates": c, "eval_members": k, "eval_nonmembers": k,
        "steps": int(steps_M[i]), "train_loss_last": float(losses[i]),
        "status": "diverged" if bool(diverged_M[i]) else "ok",
        "x_tokens": float(mi.tokens_per_param_x(gpt2.n_params(cfg), specs[i].dataset_size,
                                      cfg.seq_len, vocab)),
        "attacks": attacks, "wall_s_stack": wall, "train": dataclasses.asdict(tcfg),
        "_roc": ({a: (scores[a], labels) for a in ("loss", "lira_online", "lira_offline")
                  if not isinstance(scores[a], Exception)} if i == 0 else {})})
  return rows


# ---------------------------------------------------------------------------------------------
# Summary, figures, report.


def _mean_metric(rows, attack, metric):
  vals = [r["attacks"][attack][metric] for r in rows if r["attacks"][attack].get("valid")]
  return float(np.mean(vals)) if vals else None


def summarize(settings, rows, wall_s):
  targets = [r for r in rows if r["role"] == "target" and r["status"] == "ok"
             and r["attacks"]["loss"].get("valid")]
  f1 = [r["attacks"]["loss"]["f1_median"] for r in targets]
  fits = {
      "tokens": fit_law([r["x_tokens"] for r in targets], f1, x_form="tokens"),
      "capacity": fit_law([r["x_capacity"] if r["x_capacity"] is not None else np.nan
                              for r in targets], f1, x_form="capacity"),
  }
  if targets and all(r["x_capacity"] is None for r in targets):  # say why, not "0 points"
    if all(r["mem_bits_est"] is None for r in targets):
      fits["capacity"]["reason"] = (
          "no capacity estimate: text memorization needs a reference model "
          "(data.reference_pool > 0), or set law.bits_per_param")
    else:
      fits["capacity"]["reason"] = (
          "no capacity estimate: the measured capacity is 0 bits (no target memorized); "
          "train longer, or set law.bits_per_param")
  curves = {}
  for r in targets:
    curves.setdefault(r["shape"], {}).setdefault(r["dataset_size"], []).append(r)
  curve_out = {}
  for shape, by_n in curves.items():
    curve_out[shape] = [
        {"dataset_size": n, "n_params": rs[0]["n_params"], "x_tokens": rs[0]["x_tokens"],
         **{f"{a}_{m}": _mean_metric(rs, a, m) for a in ATTACKS for m in ("f1_median", "auc")}}
        for n, rs in sorted(by_n.items())]
  lira = [r for r in rows if r["role"] == "lira_target"]
  lira_out = None
  if lira:
    lira_out = {a: {m: _mean_metric(lira, a, m) for m in METRICS} for a in LIRA_ATTACKS}
    lira_out["targets"] = len(lira)
    lira_out["num_shadow_models"] = lira[0]["num_shadow_models"]
    lira_out["shadows_per_group"] = lira[0]["shadows_per_group"]
  return {"source": settings.source, "law_published": mi.PUBLISHED, "law_fits": fits,
          "law_points": len(targets), "curves": curve_out, "lira": lira_out,
          "capacity": {r["shape"]: {"capacity_bits": r["capacity_bits"],
                                    "source": r["capacity_source"]} for r in targets},
          "wall_s": wall_s}


def write_figures(rows, summary, roc_data, workdir):
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for shape, pts in summary["curves"].items():
    ax.plot([p["dataset_size"] for p in pts], [p["loss_f1_median"] for p in pts], "o-",
            label=f"{shape} ({pts[0]['n_params']:,} params)")
  ax.axhline(0.5, ls="--", c="gray", label="chance")
  ax.set_xscale("log")
  ax.set_xlabel("dataset size N (sequences)")
  ax.set_ylabel("F1 of the loss attack (median threshold)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "f1_vs_dataset_size.png"), dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 5))
  # one colour a curve: the default cycle repeats after 10, and a sweep has more curves
  colors = plt.get_cmap("turbo")(np.linspace(0.05, 0.95, max(len(roc_data), 1)))
  for color, (name, (scores, labels)) in zip(colors, roc_data.items()):
    fpr, tpr, _ = mi.roc_curve(scores, labels)
    ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=name, lw=1, color=color)
  ax.plot([1e-4, 1], [1e-4, 1], "--", c="gray")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "roc.png"), dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  targets = [r for r in rows if r["role"] == "target" and r["attacks"]["loss"].get("valid")]
  xs = np.array([r["x_tokens"] for r in targets])
  ax.plot(xs, [r["attacks"]["loss"]["f1_median"] for r in targets], "o", label="targets")
  grid = np.geomspace(max(xs.min(), 1e-3) / 2, xs.max() * 2, 200) if len(xs) else np.array([1.0])
  ax.plot(grid, mi.law_f1(grid, **mi.PUBLISHED), "--", label="published")
  fit = summary["law_fits"]["tokens"]
  if fit.get("valid"):
    ax.plot(grid, mi.law_f1(grid, fit["c1"], fit["c2"], fit["c3"]), "-", label="fit")
  ax.set_xscale("log")
  ax.set_xlabel("x = S log2(V) N / params")
  ax.set_ylabel("F1")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "law_fit.png"), dpi=100)
  plt.close(fig)


def _fmt(v, spec=".3f"):
  return "-" if v is None else format(v, spec)


def report_text(rows, summary):
  # a seed column only when seeds were swept, so that repeated (model, N) rows can be told apart
  seeded = len({r["seed"] for r in rows if r["role"] == "target"}) > 1
  lines = [f"{'model':<16}{'params':>9}{'N':>7}" + (f"{'seed':>6}" if seeded else "")
           + f"{'x_tok':>9}  " + "".join(f"{a:>10}" for a in ATTACKS)
           + "  F1loss  (AUC; F1 = loss F1 at the median)"]
  for r in rows:
    if r["role"] != "target":
      continue
    aucs = "".join(f"{_fmt(r['attacks'][a].get('auc')):>10}" for a in ATTACKS)
    lines.append(f"{r['shape']:<16}{r['n_params']:>9,}{r['dataset_size']:>7,}"
                 + (f"{r['seed']:>6}" if seeded else "") + f"{r['x_tokens']:>9.1f}  "
                 f"{aucs}  {_fmt(r['attacks']['loss'].get('f1_median')):>6}")
  if summary.get("text_pools"):
    from memjax.data import text as text_lib
    pools = summary["text_pools"]
    lines.append(f"text pools split by {pools['pool_split']}; non-members sharing a span with "
                 "the training pool: "
                 + text_lib.describe_overlap(pools["heldout_overlap_with_train_pool"]))
  if summary["lira"]:
    li = summary["lira"]
    lines.append(f"LiRA ({li['targets']} targets, {li['num_shadow_models']} shadows each, "
                 f"{li['shadows_per_group']} IN + {li['shadows_per_group']} OUT per candidate): "
                 + "; ".join(f"{a} AUC {_fmt(li[a]['auc'])} TPR@1%FPR {_fmt(li[a]['tpr_at_fpr_0.01'])}"
                             for a in LIRA_ATTACKS))
  for form, fit in summary["law_fits"].items():
    if fit.get("valid"):
      se = fit["stderr"]
      lines.append(f"law fit (x_form={form}, {fit['n_points']} points): c1={fit['c1']:.3g}"
                   f"+-{_fmt(se['c1'], '.2g')} c2={fit['c2']:.3g}+-{_fmt(se['c2'], '.2g')} "
                   f"c3={fit['c3']:.3g}+-{_fmt(se['c3'], '.2g')} rmse={fit['rmse']:.3f} "
                   f"(published constants: rmse={fit['rmse_published']:.3f})")
    else:
      lines.append(f"law fit (x_form={form}): not valid: {fit['reason']}")
  return "\n".join(lines)


def run(settings: MembershipSettings, workdir: str):
  """Run the experiment; returns (rows, summary)."""
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  text = load_text(settings, workdir) if settings.source == "text" else None
  design, counts = {}, {}
  rows = run_stacks(settings, workdir, text, design, counts)
  if rows is None:  # another process writes the report
    return None, counts
  jsonio.savez_atomic(os.path.join(workdir, "design.npz"), **design)
  jsonio.write_atomic(os.path.join(workdir, "design.json"), {
      "settings": config_lib.to_jsonable(settings),
      "seeds": {"data_seed": settings.data_seed, "model_seeds": list(settings.seeds),
                "lira_seed": settings.lira_seed,
                "eval_split_seed": "numpy default_rng([data.seed, model seed, N, 7])",
                "lira_eval_seed": "numpy default_rng([lira.seed, target, 13])",
                "lira_shadow_seeds": "lira.seed * 1000 + model index"},
      "members": ("synthetic: indices 0..N-1 of the model's train_key data; non-members: "
                  "indices of test_key data" if settings.source == "synthetic" else
                  "text: training pool positions perm([data.seed, seed])[:N]; non-members from "
                  "the held-out pool; indices in design.npz are corpus rows"),
      "zlib_encoding": "token ids as little-endian uint16 (V <= 65536) else uint32, zlib level 9",
      "design_npz_keys": sorted(design)}, indent=1)
  roc = {}
  for r in rows:
    for a, (scores, labels) in r.pop("_roc", {}).items():
      if r["role"] == "lira_target" or r["seed"] == settings.seeds[0]:
        roc[f"{'LiRA target ' if r['role'] == 'lira_target' else ''}{r['shape']} "
            f"N={r['dataset_size']} {a}"] = (scores, labels)
  results = os.path.join(workdir, "results.jsonl")
  with open(results + ".tmp", "w") as f:  # rebuilt whole from the stacks, then swapped in
    for r in rows:
      f.write(json.dumps(r) + "\n")
  os.replace(results + ".tmp", results)
  summary = summarize(settings, rows, time.time() - start)
  if text is not None:  # how far the non-members are from the members' text
    summary["text_pools"] = text.pools
  summary["stacks_trained"] = counts.get("trained", 0)
  summary["stacks_already_done"] = counts.get("loaded", 0)
  jsonio.write_atomic(os.path.join(workdir, "summary.json"), summary, indent=1)
  # for `python -m memjax.estimators.membership --constants`
  for form, fit in summary["law_fits"].items():
    path = os.path.join(workdir, f"law_fit_{form}.json")
    if fit.get("valid"):
      mi.save_constants(path, fit)
    elif os.path.exists(path):  # an earlier run's fit: not this run's result
      os.remove(path)
  write_figures(rows, summary, roc, workdir)
  return rows, summary


def dry_run(settings: MembershipSettings, workdir: str, process=None):
  """Print the plan (stacks, models, tokens; stored or to train) without reading a corpus or
  training. A text run's stacks are keyed by its dataset too, so only a synthetic run says
  which are stored. `process`: (index, count) of a multi-process run."""
  from memjax.data import tokenize as tokenize_lib
  from memjax.model import gpt2
  procs = run_lib.dry_run_processes(process)
  text = settings.source == "text"
  t = settings.text
  vocab = (tokenize_lib.planned_vocab_size(t["tokenizer"], settings.vocab_size,
                                           t["tokenizer_path"]) if text else settings.vocab_size)
  lines = [f"plan: membership inference on {settings.source} data (V={vocab:,}, "
           f"S={settings.seq_len}); {settings.eval_size} evaluation sequences a target"]
  shape = lambda layers, d: gpt2.ModelConfig(vocab, settings.seq_len, layers, d,
                                             settings.num_heads, settings.precision)
  targets = len(settings.seeds) * len(settings.dataset_sizes) + (
      1 if text and t["reference_pool"] else 0)
  for i, (name, _) in enumerate(stack_units(settings, None, vocab, procs.count)):
    if name.startswith("lira shadows"):
      cfg, tcfg = lira_shape(settings, vocab)
      first, last = (int(x) for x in name.split()[-1].split("-"))
      n = last - first + 1
    else:
      layers, d = (int(x[1:]) for x in name.split()[1:3])
      cfg, tcfg, n = shape(layers, d), settings.train, targets
    status = "" if text else ("stored" if os.path.exists(stack_path(settings, workdir, name))
                              else "to train")
    lines.append(run_lib.unit_line(procs, i, name, cfg, n, tcfg, status))
  print("\n".join(lines))


def main(settings: MembershipSettings, workdir: str):
  """Run and print the report (the CLI's job for config.experiment = "membership")."""
  start = time.time()
  rows, summary = run(settings, workdir)
  if rows is None:
    print(run_lib.other_process_line(summary.get("trained", 0), "stacks", start))
    return
  print(report_text(rows, summary))
  print(f"{summary['stacks_trained']} stacks trained, {summary['stacks_already_done']} already "
        f"done (<workdir>/stacks/)")
  print(f"{len(rows)} models; results in {workdir}: results.jsonl, summary.json, design.npz, "
        f"design.json, f1_vs_dataset_size.png, roc.png, law_fit.png ({time.time() - start:.0f}s)")
