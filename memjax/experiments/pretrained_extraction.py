"""Extraction (greedy decoding of the rest of a sequence from its prefix) on imported checkpoints.

`python -m memjax.main --config=configs/pretrained_extraction.py --workdir=DIR
  --config.model.paths='("CKPT",...)' --config.data.path=CANDIDATES.jsonl`

1. Models: model.paths (GPT2LMHeadModel or GPTNeoXForCausalLM directories of one shape and
   tokenizer: checkpoints over training, or seeds) load as one stack.
2. Data: each non-blank line of a .txt, each record's `text` of a .jsonl (tokenized with the
   checkpoints' tokenizer.json, no special tokens) or each row of a .npy of token ids is one
   candidate (text the models may have trained on), cut to its first data.seq_len tokens; shorter
   ones are left out and counted. data.max_samples of them (0: all) are drawn (seeded).
3. For every prefix length P of extraction.prefix_lengths, every checkpoint decodes tokens
   P..S-1 greedily from the first P (`extraction.extract`, the KV-cached decoder); a candidate is
   extracted when every decoded token is the true one (Morris et al. 2025), and its memorization
   score is the fraction that are (Chen et al. 2024).

Outputs in the workdir: results.jsonl (one line per checkpoint: per P the extracted fraction and
the mean and quartiles of the memorization score) and scores.npz (`{i}/exact_P` and
`{i}/token_match_P` of every candidate under checkpoint i, and the candidates' `tokens`).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from memjax import config as config_lib
from memjax import schema
from memjax.engine import jsonio
from memjax.experiments import pretrained_membership as pm

Field = config_lib.Field
SCHEMA = schema.Schema((
    config_lib.experiment_field("pretrained_extraction"), config_lib.QUIET,
    *config_lib.checkpoint_fields("the Hugging Face checkpoints to extract from (one shape, one "
                                  "tokenizer)"),
    Field("data.path", "path", f"the candidates: a {', '.join(pm.DATA_KINDS)} file",
          allow_empty=False),
    Field("data.seq_len", "int", "tokens of each candidate; shorter ones are left out",
          minimum=2),
    Field("data.max_samples", "int", "candidates drawn; 0: every one long enough", minimum=0),
    Field("data.seed", "int", "draws the candidates", minimum=0),
    Field("extraction.prefix_lengths", "ints", "prefix tokens to continue greedily, each < "
          "data.seq_len"),
    Field("extraction.batch_size", "int", "candidates a decoding call"),
    Field("extraction.vocab_chunk", "int", "vocabulary chunk of the likelihood kernel"),
))
_fail = config_lib._fail


@dataclasses.dataclass(frozen=True)
class Settings:
  model_paths: tuple
  model_cfg: object  # gpt2.ModelConfig or gpt_neox.NeoXConfig
  path: str  # the candidates
  seq_len: int
  max_samples: int  # 0: every candidate long enough
  seed: int
  prefix_lengths: tuple
  batch_size: int
  vocab_chunk: int
  quiet: bool


def validate(config) -> Settings:
  """Check a pretrained-extraction config; raises ConfigError naming the field."""
  v = schema.read(config, SCHEMA)
  paths, cfg = pm.read_targets(v, "extract from")
  prefixes = tuple(sorted(v["extraction.prefix_lengths"]))
  if prefixes[-1] >= v["data.seq_len"]:
    _fail("extraction.prefix_lengths", f"a prefix of {prefixes[-1]} tokens leaves nothing to "
                                       f"decode in data.seq_len={v['data.seq_len']}; lower it")
  return Settings(
      model_paths=paths, model_cfg=cfg, path=pm._data_file(v["data.path"], "data.path"),
      seq_len=v["data.seq_len"], max_samples=v["data.max_samples"], seed=v["data.seed"],
      prefix_lengths=prefixes, batch_size=v["extraction.batch_size"],
      vocab_chunk=v["extraction.vocab_chunk"], quiet=v["quiet"])


def candidates(settings, tokenizer):
  """(tokens [E, S] of the drawn candidates, how many were too short)."""
  windows, short = pm.read_windows(settings.path, "data.path", tokenizer, settings.seq_len,
                                   settings.model_cfg.vocab_size)
  if settings.max_samples and settings.max_samples < len(windows):
    rng = np.random.default_rng(settings.seed)
    windows = windows[np.sort(rng.choice(len(windows), settings.max_samples, replace=False))]
  return windows, short


def _summary(scores):
  """Per P: extracted fraction and memorization-score statistics of one checkpoint."""
  out = {}
  for p, s in scores.items():
    tm = s["token_match"]
    out[str(p)] = {"extracted": float(s["exact"].mean()), "extracted_count": int(s["exact"].sum()),
                   "mean_token_match": float(tm.mean()),
                   "token_match_quartiles": [float(q) for q in np.quantile(tm, [0.25, 0.5, 0.75])]}
  return out


def main(settings: Settings, workdir: str):
  from memjax.estimators import extraction
  from memjax.model import hf
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  cfg = settings.model_cfg
  tokens_ExS, short = candidates(settings, hf.load_tokenizer(settings.model_paths[0]))
  pm._log(settings, f"{len(tokens_ExS)} candidates of {settings.seq_len} tokens ({short} shorter "
                    f"ones left out); {len(settings.model_paths)} checkpoints ({hf.describe(cfg)})")
  _, params_M = hf.load_stack(settings.model_paths, cfg.precision)
  scores = extraction.extract(cfg, params_M, tokens_ExS, settings.prefix_lengths,
                              settings.batch_size, settings.vocab_chunk)
  rows, arrays = [], {"tokens": tokens_ExS}
  for i, path in enumerate(settings.model_paths):
    mine = {p: {k: v[i] for k, v in s.items()} for p, s in scores.items()}
    rows.append({"experiment": "pretrained_extraction", "model": path, "index": i,
                 "n_params": hf.n_params(cfg), "seq_len": settings.seq_len,
                 "candidates": int(len(tokens_ExS)), "left_out_short": int(short),
                 "data": settings.path, "prefixes": _summary(mine)})
    for p, s in mine.items():
      arrays[f"{i}/exact_{p}"] = s["exact"]
      arrays[f"{i}/token_match_{p}"] = s["token_match"]
  jsonio.write_lines_atomic(os.path.join(workdir, "results.jsonl"), rows)
  jsonio.savez_atomic(os.path.join(workdir, "scores.npz"), **arrays)
  print(report_text(rows))
  print(f"({time.time() - t0:.1f}s; results.jsonl and scores.npz in {workdir})")


def report_text(rows) -> str:
  prefixes = list(rows[0]["prefixes"])
  lines = [f"extraction of {rows[0]['candidates']} candidates of {rows[0]['seq_len']} tokens "
           "(extracted fraction / mean memorization score, by prefix length P)",
           f"{'model':<28}" + "".join(f"{'P=' + p:>18}" for p in prefixes)]
  for r in rows:
    cells = [f"{r['prefixes'][p]['extracted']:.3f} / {r['prefixes'][p]['mean_token_match']:.3f}"
             for p in prefixes]
    lines.append(f"{os.path.basename(r['model'].rstrip('/'))[:27]:<28}"
                 + "".join(f"{c:>18}" for c in cells))
  return "\n".join(lines)
