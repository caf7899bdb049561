"""Distributional memorization (Wang, Antoniades et al. 2024, arXiv 2407.14985) on models memjax
trains.

`python -m memjax.main --config=configs/distributional.py --workdir=runs/distributional`:

1. Data as in the dynamics experiment (`dynamics_experiment.load_tokens`): data.num_samples
   training sequences and data.heldout held-out ones.
2. Models: per sweep.d_model one stack, a model per dataset size N of sweep.dataset_sizes, trained
   on the first N training sequences (train.steps steps each).
3. The n-gram model of each model's own training set (`ngram.NgramIndex`, orders 1..max_n).
4. Items: every position t (t >= 1 and t >= n - 1) of three sets of sequences: `heldout`
   (distributional.eval_samples held-out sequences), `generated` (each model's greedy continuation
   of their first distributional.context tokens; continuation positions only) and `train` (the
   first eval_samples training sequences, members of every model of the stack). For each item the
   model's probability of the token given everything before it (the likelihood kernel) and the
   n-gram model's P(token | previous n - 1 tokens) from that model's training set (nan, and the
   item left out, where the context never occurs there).
5. Distributional memorization = Spearman rho between the two probabilities; distributional
   generalization = the Kendall tau distance (1 - tau-b) / 2 on the same (model, n-gram) pairs,
   as in the authors' code (`ngram.py`); rows keep tau-b too. Fewer than 3 usable pairs (or a
   constant side) gives nan with defined=False, never a number.

Outputs: results.json (a row per d_model x N x set x n), distributional.png.

With model.paths (Hugging Face checkpoints, configs/pretrained_distributional.py) nothing is
trained: the checkpoints load as one stack, the text is cut with their tokenizer, the n-gram
model is counted on the data.num_samples training sequences (standing in for the pretraining
corpus, which is far too large to count here) and every checkpoint is correlated on the same
three sets; a row per checkpoint x set x n, `checkpoint` and `checkpoint_index` in place of N.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from memjax import config as config_lib
from memjax.engine import checkpoint
from memjax import schema
from memjax.engine import jsonio
from memjax.engine import run as run_lib
from memjax import report
from memjax.experiments import dynamics as dx
from memjax.train import TrainConfig

SETS = ("heldout", "generated", "train")
DENOMINATORS = ("context", "continuation")

Field = config_lib.Field
SCHEMA = schema.Schema((
    config_lib.experiment_field("distributional"), config_lib.QUIET, *dx.DATA_FIELDS,
    Field("data.heldout", "int", "held-out sequences (the evaluation set)", minimum=0),
    config_lib.POOL_SPLIT, *dx.MODEL_FIELDS,
    Field("sweep.dataset_sizes", "ints", "N, training sequences of a model (the first N); with "
          "model.paths: all of data.num_samples"),
    *config_lib.TRAIN_FIELDS,
    Field("distributional.orders", "ints", "n of the n-gram probabilities correlated"),
    Field("distributional.max_n", "int", "n-gram orders counted", maximum=16),
    Field("distributional.eval_samples", "int", "held-out sequences (and at most this many "
          "members) evaluated"),
    Field("distributional.context", "int", "prompt tokens of the generated set; 0: no generated "
          "set", minimum=0),
    Field("distributional.batch_size", "int", "sequences a scoring call"),
    Field("distributional.denominator", "str", "the n-gram probability's denominator: counts of "
          "the context, or of the continuation", allowed=DENOMINATORS),
    *config_lib.NGRAM_FIELDS,
), optional_sections=("ngram",))


_fail = config_lib._fail


@dataclasses.dataclass(frozen=True)
class DistributionalSettings:
  data: dx.DataSettings
  num_heads: int
  layers: int
  d_model: tuple
  dataset_sizes: tuple
  train: TrainConfig
  orders: tuple
  max_n: int
  eval_samples: int
  context: int  # 0: no generated set
  batch_size: int
  denominator: str
  quiet: bool
  model_paths: tuple = ()  # imported checkpoints: scored, not trained
  model_cfg: object = None  # their shape (gpt2.ModelConfig or gpt_neox.NeoXConfig)
  ngram: config_lib.NgramSettings = config_lib.NgramSettings()  # the n-gram counts' backend


def validate(config) -> DistributionalSettings:
  """Check a distributional config; raises ConfigError naming the field."""
  v = schema.read(config, SCHEMA)
  config_lib.refuse_unused_paths(config, v["data.source"], file_kinds=dx.FILE_SOURCES)
  model_paths, model_cfg = config_lib.read_checkpoints(v)
  data = dx.validate_data(v, heldout_field="data.heldout",
                          checkpoint_dir=model_paths[0] if model_paths else None)
  if model_cfg is not None and data.seq_len > model_cfg.seq_len:
    _fail("data.seq_len", f"{data.seq_len} tokens are longer than the checkpoints' context "
                          f"({model_cfg.seq_len}); lower it")
  heads, layers, d_model = dx.validate_model(v)
  sizes = tuple(sorted(v["sweep.dataset_sizes"]))
  if model_paths:  # one counted corpus: the whole training pool
    sizes = (data.num_samples,)
  if sizes[-1] > data.num_samples:
    _fail("sweep.dataset_sizes", f"dataset size {sizes[-1]} is larger than the training set "
                                 f"data.num_samples={data.num_samples}; lower it or raise that")
  vocab = model_cfg.vocab_size if model_cfg is not None else data.vocab_size
  ngram = config_lib.check_ngram(v, vocab, dx.tokenizer_tag(data, vocab))
  _check_orders(v, vocab, ngram)
  _check_evaluation(v, data)
  return DistributionalSettings(
      data=data, num_heads=heads, layers=layers, d_model=d_model, dataset_sizes=sizes,
      train=config_lib.train_settings(v), orders=tuple(sorted(v["distributional.orders"])),
      max_n=v["distributional.max_n"], eval_samples=v["distributional.eval_samples"],
      context=v["distributional.context"], batch_size=v["distributional.batch_size"],
      denominator=v["distributional.denominator"], quiet=v["quiet"], model_paths=model_paths,
      model_cfg=model_cfg, ngram=ngram)


def _check_orders(v, vocab, ngram):
  """The orders are counted (and fit the exact index's keys) and fit the sequence."""
  max_n, top = v["distributional.max_n"], max(v["distributional.orders"])
  # The exact index packs an n-gram into one int64 key.
  if ngram.backend == "exact" and vocab ** max_n > 2**63 - 1:
    _fail("distributional.max_n", f"{max_n}-grams of a {vocab:,}-token vocabulary do not fit "
                                  "the n-gram index's 64-bit keys; lower it")
  if top > max_n:
    _fail("distributional.orders", f"n={top} is larger than the counted order "
                                   f"distributional.max_n={max_n}; raise max_n or lower n")
  if top > v["data.seq_len"]:
    _fail("distributional.orders", f"n={top} is longer than the sequence "
                                   f"(data.seq_len={v['data.seq_len']})")


def _check_evaluation(v, data):
  """The evaluation set fits the held-out set; the prompt leaves a continuation."""
  eval_samples, context = v["distributional.eval_samples"], v["distributional.context"]
  if data.heldout < 1:
    _fail("data.heldout", "needs at least 1 held-out sequence (the held-out set)")
  if eval_samples > data.heldout:
    _fail("distributional.eval_samples", f"{eval_samples} evaluation sequences do not fit the "
                                         f"held-out set data.heldout={data.heldout}")
  if context and context >= data.seq_len:
    _fail("distributional.context", f"the prompt ({context} tokens) leaves no continuation in "
                                    f"a sequence of data.seq_len={data.seq_len} tokens")


def correlation_rows(model_logp2_BxS, tokens_BxS, index, orders, first_position: int,
                     denominator: str) -> list[dict]:
  """One row per order n: Spearman and Kendall of model vs n-gram probabilities at positions
  t >= max(first_position, n - 1, 1) of the sequences."""
  from memjax.estimators import ngram as ngram_lib
  rows = []
  model_p = np.exp2(np.asarray(model_logp2_BxS, np.float64))
  for n in orders:
    ng = ngram_lib.position_cond_probs(index, tokens_BxS, n, denominator)
    start = max(first_position, n - 1, 1)
    m, g = model_p[:, start:], ng[:, start:]
    mem = ngram_lib.distributional_memorization(m, g)
    gen = ngram_lib.distributional_generalization(m, g)
    rows.append({
        "n": n, "items": int(m.size), "context_seen": float(np.isfinite(g).mean()) if g.size else 0.0,
        "spearman": mem.statistic, "spearman_p": mem.p_value, "kendall_tau": gen.statistic,
        "kendall_tau_distance": ngram_lib.kendall_tau_distance(gen.statistic),
        "kendall_p": gen.p_value, "n_pairs": mem.n_pairs, "defined": mem.defined and gen.defined,
        "marker": None if (mem.defined and gen.defined) else
        f"undefined: {mem.n_pairs} usable pairs (< {ngram_lib.MIN_PAIRS}) or a constant side",
        "mean_model_p": float(np.nanmean(m)) if m.size else math.nan,
        "mean_ngram_p": float(np.nanmean(g)) if np.isfinite(g).any() else math.nan})
  return rows


def run_width(settings, cfg, train_NxS, heldout, members, indexes, ckpt_dir):
  """Trains one width's models (one per dataset size) and correlates them: its result rows."""
  from memjax.model import gpt2
  tcfg, sizes = settings.train, settings.dataset_sizes
  label = f"L{cfg.layers}_d{cfg.d_model}"
  state, losses, _ = dx.train_in_segments(cfg, tcfg, train_NxS, [np.arange(n) for n in sizes],
                                          [settings.data.seed] * len(sizes), 1, ckpt_dir,
                                          label=label, quiet=settings.quiet)
  dx.check_not_diverged(state, label, [f"N={n}" for n in sizes])
  heads = [{"d_model": cfg.d_model, "layers": cfg.layers, "n_params": gpt2.n_params(cfg),
            "dataset_size": int(n), "train_loss": float(losses[i])} for i, n in enumerate(sizes)]
  return correlate_stack(settings, cfg, state.params, heldout, members,
                         [indexes[n] for n in sizes], heads)


def correlate_stack(settings, cfg, params_M, heldout, members, indexes, heads, batch=None):
  """The result rows of a stack of M models: model i's rows start with heads[i] and correlate
  against indexes[i], on the held-out, training and (distributional.context > 0) generated sets.
  batch: sequences scored at a time (None: a whole set at once).
  """
  from memjax.estimators import dynamics
  from memjax import likelihood
  sets = {"heldout": (heldout, _shared_logprobs(cfg, params_M, heldout, batch), 0),
          "train": (members, _shared_logprobs(cfg, params_M, members, batch), 0)}
  if settings.context:
    gen_MxBxS = dynamics.greedy_generations(cfg, params_M, heldout, settings.context,
                                            settings.data.seq_len - settings.context,
                                            settings.batch_size, settings.train.vocab_chunk)
    sets["generated"] = (gen_MxBxS, likelihood.stack_token_logprobs(cfg, params_M, gen_MxBxS),
                         settings.context)
  rows = []
  for i, head in enumerate(heads):
    for name, (tokens, logp, first) in sets.items():
      tok = tokens[i] if tokens.ndim == 3 else tokens
      for r in correlation_rows(np.asarray(logp[i]), tok, indexes[i], settings.orders,
                                first, settings.denominator):
        rows.append({**head, "set": name, **r})
  return rows


def _shared_logprobs(cfg, params_M, tokens_BxS, batch_size=None):
  """log2 p [M, B, S] of shared sequences, batch_size at a time (None: all at once; a
  Pythia-sized model is scored in batches)."""
  from memjax import likelihood
  batch_size = batch_size or len(tokens_BxS)
  return np.concatenate(
      [np.asarray(likelihood.shared_token_logprobs(cfg, params_M, tokens_BxS[i:i + batch_size]))
       for i in range(0, len(tokens_BxS), batch_size)], axis=1)


def run_checkpoints(settings, train_NxS, heldout, members, index):
  """Correlates every imported checkpoint (model.paths) against one n-gram index: its rows."""
  from memjax.model import hf
  cfg = settings.model_cfg
  top = max(int(train_NxS.max()), int(heldout.max()))
  if top >= cfg.vocab_size:
    _fail("model.paths", f"the tokenizer gives token {top}, outside the checkpoints' "
                         f"vocabulary of {cfg.vocab_size}")
  dx._log(settings, f"loading {len(settings.model_paths)} checkpoints ({hf.describe(cfg)})")
  cfg, params_M = hf.load_stack(settings.model_paths, cfg.precision)
  heads = [{"checkpoint": p, "checkpoint_index": i, "d_model": cfg.d_model,
            "layers": cfg.layers, "n_params": hf.n_params(cfg),
            "dataset_size": int(len(train_NxS)), "train_loss": None}
           for i, p in enumerate(settings.model_paths)]
  return correlate_stack(settings, cfg, params_M, heldout, members,
                         [index] * len(heads), heads, settings.batch_size)


def main(settings: DistributionalSettings, workdir: str):
  from memjax.model import gpt2
  from memjax.estimators import ngram as ngram_lib

  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  train_NxS, heldout_HxS, vocab, info = dx.load_tokens(settings.data, workdir)
  s = settings.data.seq_len
  heldout = heldout_HxS[: settings.eval_samples]
  members = train_NxS[: min(settings.eval_samples, settings.dataset_sizes[0])]
  dx._log(settings, f"data: {info['source']}, V={vocab}, {len(train_NxS)} training and "
                    f"{len(heldout_HxS)} held-out sequences of {s} tokens ({time.time() - t0:.1f}s)")
  indexes = {n: dx.ngram_counts(settings, train_NxS[:n], vocab, workdir)
             for n in settings.dataset_sizes}
  rows, reused, trained = [], [], []  # trained: by this process
  store = os.path.join(workdir, "distributional_models")
  if settings.model_paths:
    rows = run_checkpoints(settings, train_NxS, heldout, members,
                           indexes[settings.dataset_sizes[0]])
  widths = () if settings.model_paths else settings.d_model
  labels = [f"L{settings.layers}_d{d}" for d in widths]
  keys = [dx.width_key(settings, d, train_NxS, heldout_HxS) for d in widths]

  def load(i, earlier):
    stored = dx.stored_width(store, labels[i], keys[i])
    if stored is None:
      return None
    for r in stored[0]["rows"]:  # widths stored before the distance was a field
      r.setdefault("kendall_tau_distance", ngram_lib.kendall_tau_distance(r["kendall_tau"]))
    if earlier:
      reused.append(labels[i])
      dx._log(settings, f"{labels[i]}: stored in {store}, not trained again")
    return stored[0]["rows"]

  def compute(i):
    t_model, ckpt_dir = time.time(), dx.width_checkpoints(store, labels[i], keys[i])
    cfg = gpt2.ModelConfig(vocab, s, settings.layers, widths[i], settings.num_heads)
    width_rows = run_width(settings, cfg, train_NxS, heldout, members, indexes, ckpt_dir)
    dx.store_width(store, labels[i], keys[i], {"rows": width_rows}, {})
    checkpoint.ChunkCheckpoints(ckpt_dir).delete()
    trained.append(labels[i])
    dx._log(settings, f"{labels[i]}: {len(settings.dataset_sizes)} models trained and scored "
                      f"({time.time() - t_model:.0f}s)")
    return width_rows

  stored = run_lib.run_units(run_lib.Processes(), len(widths), load, compute,
                             "distributional width")
  if stored is None:  # another process writes the report
    print(run_lib.other_process_line(len(trained), "widths", t0))
    return
  for width_rows in stored:
    rows += width_rows
  results = {"experiment": "distributional", "data": info,
             "settings": config_lib.to_jsonable(settings), "rows": rows, "widths_reused": reused,
             "ngram": {int(n): ngram_summary(ix) for n, ix in indexes.items()},
             "seconds": round(time.time() - t0, 1)}
  jsonio.write_atomic(os.path.join(workdir, "results.json"), results, indent=1)
  write_figure(rows, settings, workdir)
  print(report_text(results))


def dry_run(settings: DistributionalSettings, workdir: str, process=None):
  """Print the plan (widths, models, tokens) without reading the corpus or training."""
  from memjax.model import gpt2
  procs = run_lib.dry_run_processes(process)
  vocab = dx.planned_vocab(settings.data, settings.model_cfg if settings.model_paths else None)
  lines = [dx.plan_header("distributional memorization", settings, vocab)]
  if settings.model_paths:
    lines.append(f"  {len(settings.model_paths)} imported checkpoints scored as one stack, "
                 "nothing trained")
  for i, d in enumerate(() if settings.model_paths else settings.d_model):
    cfg = gpt2.ModelConfig(vocab, settings.data.seq_len, settings.layers, d, settings.num_heads)
    sizes = ", ".join(f"{n:,}" for n in settings.dataset_sizes)
    lines.append(run_lib.unit_line(procs, i, f"L{settings.layers}_d{d}", cfg,
                                   len(settings.dataset_sizes), settings.train, f"N {sizes}"))
  lines.append(f"n-gram counts: orders {list(settings.orders)} ({settings.ngram.backend} backend) "
               f"of each N's training sequences")
  print("\n".join(lines))


def ngram_summary(index) -> dict:
  """What results.json says of an n-gram index: tokens, and distinct n-grams where the backend
  can enumerate them (the exact one), else the infini-gram index's directory."""
  if hasattr(index, "index_dir"):
    return {"tokens": index.num_tokens, "backend": "infini_gram", "index_dir": index.index_dir}
  return {"tokens": index.num_tokens,
          "distinct": [index.num_distinct(k) for k in range(1, index.max_n + 1)]}


def report_text(results) -> str:
  ckpt = any("checkpoint_index" in r for r in results["rows"])
  lines = ["distributional memorization (Spearman rho) and generalization (Kendall tau "
           "distance, (1 - tau) / 2)",
           f"{'d_model':>7} {'ckpt' if ckpt else 'N':>6} {'set':>9} {'n':>2} {'pairs':>7} "
           f"{'seen':>5} {'spearman':>9} {'kendall':>8} {'gen':>6}"]
  for r in results["rows"]:
    fmt = lambda v, spec="+.3f": "nan*" if not r["defined"] else format(v, spec)
    x = r["checkpoint_index"] if ckpt else r["dataset_size"]
    lines.append(f"{r['d_model']:>7} {x:>6} {r['set']:>9} {r['n']:>2} "
                 f"{r['n_pairs']:>7} {r['context_seen']:5.2f} {fmt(r['spearman']):>9} "
                 f"{fmt(r['kendall_tau']):>8} {fmt(r['kendall_tau_distance'], '.3f'):>6}")
  if ckpt:
    lines.append("ckpt: the checkpoint's place in model.paths; n-grams counted on "
                 f"{results['rows'][0]['dataset_size']} training sequences of the text")
  if any(not r["defined"] for r in results["rows"]):
    lines.append("nan*: undefined (fewer than 3 usable pairs or a constant side)")
  lines.append(f"({results['seconds']}s; results.json and distributional.png in the workdir)")
  return "\n".join(lines)


def write_figure(rows, settings, workdir):
  plt = report.pyplot()
  sets = [s for s in SETS if any(r["set"] == s for r in rows)]
  x_key = "checkpoint_index" if settings.model_paths else "dataset_size"
  fig, axes = plt.subplots(2, len(sets), figsize=(4.5 * len(sets), 7), squeeze=False)
  for j, name in enumerate(sets):
    # the gray line is "no relation": rho 0, Kendall tau distance 1/2
    for i, (key, ylabel, unrelated) in enumerate((
        ("spearman", "Spearman rho (memorization)", 0.0),
        ("kendall_tau_distance", "(1 - Kendall tau) / 2 (generalization)", 0.5))):
      ax = axes[i][j]
      for d in sorted({r["d_model"] for r in rows}):
        for n in settings.orders:
          sel = [r for r in rows if r["set"] == name and r["d_model"] == d and r["n"] == n]
          x = [r[x_key] for r in sel]
          y = [r[key] if r["defined"] else np.nan for r in sel]
          ax.plot(x, y, "-o", ms=3, label=f"d{d}, n={n}")
          for r in sel:
            if not r["defined"]:
              ax.plot([r[x_key]], [unrelated], "x", color="red")
      if settings.model_paths:
        ax.set_xlabel("checkpoint (model.paths, in order)")
      else:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training sequences N")
      ax.set_ylabel(ylabel)
      ax.set_title(name, fontsize=9)
      ax.axhline(unrelated, color="gray", lw=0.6)
  axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "distributional.png"), dpi=100)
  plt.close(fig)
