"""Membership inference on imported Hugging Face checkpoints, on member and non-member files.

`python -m memjax.main --config=configs/pretrained_membership.py --workdir=DIR
  --config.model.paths='("CKPT",...)' --config.data.members=M.jsonl --config.data.nonmembers=N.jsonl`

1. Models: model.paths (GPT2LMHeadModel or GPTNeoXForCausalLM directories of one shape and
   tokenizer: checkpoints over training, or seeds) load as one stack, the targets; optionally
   model.reference_path, one more checkpoint of the same tokenizer (any shape), for the reference
   attack (target loss minus reference loss; Carlini et al. 2021).
2. Data: each non-blank line of a .txt, each record's `text` of a .jsonl (tokenized with the
   checkpoints' tokenizer.json, no special tokens) or each row of a .npy of token ids is one
   candidate, scored on its first data.seq_len tokens; shorter ones are left out and counted.
   data.max_samples of each side (0: as many as the smaller side has) are drawn (seeded), so the
   evaluation is balanced.
3. Attacks on every target: loss, reference (with a reference model), zlib, Min-K% and Min-K%++
   (attack.min_k), each with AUC, F1, TPR at 0.1% and 1% FPR and bootstrap CIs
   (attack.n_bootstrap); `membership.attack_report`.

Outputs in the workdir: results.jsonl (one line per target), scores.npz (every attack's score of
every candidate under every target, and the labels) and roc.png (the last target's curves).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from memjax import config as config_lib
from memjax import schema
from memjax.engine import jsonio

DATA_KINDS = (".txt", ".jsonl", ".npy")
_fail = config_lib._fail
Field = config_lib.Field
SCHEMA = schema.Schema((
    config_lib.experiment_field("pretrained_membership"), config_lib.QUIET,
    *config_lib.checkpoint_fields("the Hugging Face checkpoints to attack (one shape, one "
                                  "tokenizer)"),
    Field("model.reference_path", "path", "a checkpoint of the same tokenizer for the reference "
          "attack; empty: none"),
    Field("data.members", "path", f"the members: a {', '.join(DATA_KINDS)} file",
          allow_empty=False),
    Field("data.nonmembers", "path", "the non-members: a file of the same kinds",
          allow_empty=False),
    Field("data.seq_len", "int", "tokens scored of each candidate; shorter ones are left out",
          minimum=2),
    Field("data.max_samples", "int", "candidates of each side; 0: as many as the smaller side "
          "has", minimum=0),
    Field("data.seed", "int", "draws the candidates", minimum=0),
    Field("attack.min_k", "float", "Min-K% and Min-K%++: the lowest fraction of tokens",
          maximum=1.0),
    Field("attack.n_bootstrap", "int", "bootstrap resamples of the CIs; 0: none", minimum=0),
    Field("attack.batch_size", "int", "candidates a device call"),
    Field("attack.vocab_chunk", "int", "vocabulary chunk of the likelihood kernel"),
))


@dataclasses.dataclass(frozen=True)
class Settings:
  model_paths: tuple
  model_cfg: object  # gpt2.ModelConfig or gpt_neox.NeoXConfig of the targets
  reference_path: str  # "": no reference attack
  members: str
  nonmembers: str
  seq_len: int
  max_samples: int  # of each side; 0: the smaller side's count
  seed: int
  min_k: float
  n_bootstrap: int
  batch_size: int
  vocab_chunk: int
  quiet: bool


def _data_file(path, field):
  if not path.endswith(DATA_KINDS):
    _fail(field, f"{path}: give a {', '.join(DATA_KINDS)} file")
  if not os.path.isfile(path):
    _fail(field, f"{path}: no such file")
  return path


def _reference(path, targets_dir, precision):
  if not path:
    return ""
  from memjax.model import hf
  try:
    hf.read_config(path, precision)
  except hf.CheckpointError as e:
    _fail("model.reference_path", str(e))
  if hf.tokenizer_bytes(path) != hf.tokenizer_bytes(targets_dir):
    _fail("model.reference_path", f"{path}: its {hf.TOKENIZER_FILE} is not that of model.paths; "
                                  "the reference must score the same tokens")
  return path


def read_targets(v, what: str):
  """(paths, model config) of the checkpoints to `what`; data.seq_len fits their context."""
  paths, cfg = config_lib.read_checkpoints(v)
  if not paths:
    _fail("model.paths", f"give the Hugging Face checkpoint directories to {what}")
  if v["data.seq_len"] > cfg.seq_len:
    _fail("data.seq_len", f"{v['data.seq_len']} tokens are longer than the checkpoints' context "
                          f"({cfg.seq_len}); lower it")
  return paths, cfg


def validate(config) -> Settings:
  """Check a pretrained-membership config; raises ConfigError naming the field."""
  v = schema.read(config, SCHEMA)
  paths, cfg = read_targets(v, "attack")
  return Settings(
      model_paths=paths, model_cfg=cfg,
      reference_path=_reference(v["model.reference_path"], paths[0], v["model.precision"]),
      members=_data_file(v["data.members"], "data.members"),
      nonmembers=_data_file(v["data.nonmembers"], "data.nonmembers"), seq_len=v["data.seq_len"],
      max_samples=v["data.max_samples"], seed=v["data.seed"], min_k=v["attack.min_k"],
      n_bootstrap=v["attack.n_bootstrap"], batch_size=v["attack.batch_size"],
      vocab_chunk=v["attack.vocab_chunk"], quiet=v["quiet"])


# ---------------------------------------------------------------------------------------------
# Data.


def read_windows(path, field, tokenizer, seq_len, vocab_size):
  """(first seq_len tokens of each candidate long enough [E, S], candidates left out)."""
  from memjax import score
  try:
    if path.endswith(".npy"):
      ids = [row for row in score.read_ids(path)]
    else:
      ids = tokenizer.encode_batch([text for _, text in score.read_texts(path)])
  except score.ScoreError as e:
    _fail(field, str(e).removeprefix("--data: "))
  kept = [np.asarray(x[:seq_len], np.int32) for x in ids if len(x) >= seq_len]
  if not kept:
    _fail(field, f"{path}: no candidate has {seq_len} tokens (data.seq_len); lower it")
  windows = np.stack(kept)
  if windows.max() >= vocab_size:
    _fail(field, f"{path}: token id {int(windows.max())} is outside the checkpoints' "
                 f"vocabulary ({vocab_size})")
  return windows, len(ids) - len(kept)


def balanced(members, nonmembers, max_samples, seed):
  """(candidates [E, S], labels [E]): k of each side drawn without replacement (seeded)."""
  k = min(len(members), len(nonmembers))
  k = min(k, max_samples) if max_samples else k
  rng = np.random.default_rng(seed)
  pick = lambda x: x[np.sort(rng.choice(len(x), k, replace=False))]
  tokens = np.concatenate([pick(members), pick(nonmembers)])
  return tokens, np.concatenate([np.ones(k, bool), np.zeros(k, bool)])


# ---------------------------------------------------------------------------------------------
# Run.


def _stats(cfg, params_M, tokens_ExS, settings):
  """logp, entropy, var_logp [M, E, S] of every model on the shared candidates."""
  import jax
  from memjax.experiments import membership as mx
  m = jax.tree.leaves(params_M)[0].shape[0]
  return mx.stack_stats(cfg, params_M, np.broadcast_to(tokens_ExS, (m,) + tokens_ExS.shape),
                        settings.batch_size, settings.vocab_chunk)


def _log(settings, message):
  if not settings.quiet:
    print(message, flush=True)


def main(settings: Settings, workdir: str):
  from memjax.estimators import membership as mi
  from memjax.experiments import membership as mx
  from memjax.model import hf
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  cfg = settings.model_cfg
  tokenizer = hf.load_tokenizer(settings.model_paths[0])
  sides = {}
  for side in ("members", "nonmembers"):
    sides[side] = read_windows(getattr(settings, side), f"data.{side}", tokenizer,
                               settings.seq_len, cfg.vocab_size)
    _log(settings, f"{side}: {len(sides[side][0])} candidates of {settings.seq_len} tokens "
                   f"({sides[side][1]} shorter ones left out)")
  tokens_ExS, labels_E = balanced(sides["members"][0], sides["nonmembers"][0],
                                  settings.max_samples, settings.seed)
  ref_logp_ExS = None
  if settings.reference_path:
    ref_cfg, ref_params = hf.load_stack([settings.reference_path], cfg.precision)
    ref_logp_ExS = _stats(ref_cfg, ref_params, tokens_ExS, settings)["logp"][0]
  _log(settings, f"scoring {len(labels_E)} candidates under {len(settings.model_paths)} "
                 f"checkpoints ({hf.describe(cfg)})")
  _, params_M = hf.load_stack(settings.model_paths, cfg.precision)
  stats = _stats(cfg, params_M, tokens_ExS, settings)
  rows, arrays, curves = [], {"labels": labels_E}, {}
  for i, path in enumerate(settings.model_paths):
    scores = mx.attack_scores(settings, {k: v[i] for k, v in stats.items()}, tokens_ExS,
                              cfg.vocab_size, ref_logp_ExS)
    if ref_logp_ExS is None:
      scores.pop("reference")  # real text has no known true distribution to compare with
    attacks = {name: mx.evaluate_attack(s, labels_E, name, settings.n_bootstrap,
                                        [settings.seed, i]) for name, s in scores.items()}
    rows.append({"experiment": "pretrained_membership", "model": path, "index": i,
                 "reference": settings.reference_path or None, "n_params": hf.n_params(cfg),
                 "seq_len": settings.seq_len, "members": int(labels_E.sum()),
                 "nonmembers": int((~labels_E).sum()), "attacks": attacks})
    arrays.update({f"{i}/{name}": s for name, s in scores.items()})
    curves = {name: mi.roc_curve(s, labels_E)[:2] for name, s in scores.items()
              if attacks[name]["valid"]}
  jsonio.write_lines_atomic(os.path.join(workdir, "results.jsonl"), rows)
  jsonio.savez_atomic(os.path.join(workdir, "scores.npz"), **arrays)
  if curves:
    mi.plot_roc(curves, os.path.join(workdir, "roc.png"),
                title=os.path.basename(settings.model_paths[-1].rstrip("/")))
  print(report_text(rows))
  print(f"({time.time() - t0:.1f}s; results.jsonl, scores.npz and roc.png in {workdir})")


def report_text(rows) -> str:
  names = list(rows[0]["attacks"])
  lines = [f"membership inference on {rows[0]['members']} members and {rows[0]['nonmembers']} "
           f"non-members of {rows[0]['seq_len']} tokens (AUC / TPR at 1% FPR)",
           f"{'model':<28}" + "".join(f"{n:>16}" for n in names)]
  for r in rows:
    cells = []
    for n in names:
      a = r["attacks"][n]
      cells.append(f"{a['auc']:.3f} / {a['tpr_at_fpr_0.01']:.3f}" if a["valid"] else "invalid")
    lines.append(f"{os.path.basename(r['model'].rstrip('/'))[:27]:<28}"
                 + "".join(f"{c:>16}" for c in cells))
  return "\n".join(lines)
