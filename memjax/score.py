"""Per-sample log-likelihood files for pretrained (and memjax-trained) models.

    python -m memjax.score --model=DIR [--model=DIR ...] --data=FILE --out=FILE.jsonl

DIR is a Hugging Face checkpoint directory (GPT2LMHeadModel or GPTNeoXForCausalLM: config.json,
model.safetensors, tokenizer.json), or WORKDIR@KEY, the row KEY of a memjax text or capacity run
that kept its parameters (sweep.save_params=True; a capacity row takes .npy token ids). FILE is
  .txt    one sequence a line (blank lines skipped), tokenized with each model's tokenizer.json,
  .jsonl  one JSON object a line with a string field `text` (blank lines skipped), the same,
  .npy    token ids, an integer array [B, S] that every model scores as it is.
`index` is the sequence's 0-based line number (.txt, .jsonl) or row (.npy). No special tokens
are added (no BOS), and a text longer than the model's context (or --max_tokens) is cut to it.

Out: one JSON line per model and sequence, models in the order given, sequences in file order:
{"model": DIR, "index": i, "n_tokens": n, "logp2": total, "logp2_tokens": [n - 1 numbers],
"data": FILE}. logp2_tokens[t] is log2 p(token t+1 | tokens 0..t), fp32, and logp2 is their sum:
log2 p(tokens 1..n-1 | token 0). The first token has no context and is not scored (memjax's own
sequence totals add -log2 V for it; see DESIGN.md).

Models of one architecture, shape and tokenizer are scored together as one stack (one vmapped
program, memjax's likelihood kernel), read one checkpoint at a time into the stacked arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from memjax import likelihood
from memjax.engine import jsonio
from memjax.model import hf


def define_flags():
  """The CLI's flags (defined only when run as a program, so that importing is free of them)."""
  flags.DEFINE_multi_string(
      "model", None, "A Hugging Face checkpoint directory, or WORKDIR@KEY (a memjax text or "
      "capacity run's row); repeat for several models.")
  flags.DEFINE_string("data", None, "Sequences: a .txt, .jsonl (field `text`) or .npy [B, S] "
                      "of token ids.")
  flags.DEFINE_string("out", None, "The .jsonl file to write.")
  flags.DEFINE_integer("batch_size", 16, "Sequences a batch (every model of a stack scores "
                       "them at once).")
  flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"],
                    "Parameters and compute; log-softmax is always fp32.")
  flags.DEFINE_integer("max_tokens", 0, "Cut text sequences to this many tokens (0: the "
                       "model's context).")
  flags.DEFINE_bool("quiet", False, "No progress bar.")


FORMATS = (".txt", ".jsonl", ".npy")
# Text sequences are padded up to a multiple of this many tokens, so that a file of sequences of
# every length compiles a few programs, not one a length. Padding goes after the sequence, which
# a causal model never sees from an earlier position.
PAD_MULTIPLE = 32


class ScoreError(ValueError):
  """Bad input to memjax.score: one line naming the flag, file or field."""


@dataclasses.dataclass
class Model:
  spec: str  # as given on the command line
  cfg: object  # gpt2.ModelConfig or gpt_neox.NeoXConfig
  tokenizer: object | None  # memjax.data.tokenize.TextTokenizer
  row: tuple | None = None  # (workdir, key) of a memjax run's row; None for a checkpoint dir


# ---------------------------------------------------------------------------------------------
# Models.


def open_model(spec: str, precision: str) -> Model:
  """The config and tokenizer of one --model (its parameters are read later, stack by stack)."""

  if not os.path.isdir(spec) and "@" in spec:
    from memjax import export
    workdir, key = spec.rsplit("@", 1)
    cfg, tokenizer = export.row_config(workdir, key, precision)
    return Model(spec, cfg, tokenizer, (workdir, key))
  cfg = hf.read_config(spec, precision)
  return Model(spec, cfg, hf.load_tokenizer(spec))


def _tokenizer_id(model: Model):
  return None if model.tokenizer is None else model.tokenizer.fingerprint


def stacks_of(models):
  """Lists of model indices of one shape and tokenizer, in the order they first appear."""
  groups = {}
  for i, m in enumerate(models):
    groups.setdefault((m.cfg, _tokenizer_id(m)), []).append(i)
  return list(groups.values())


def load_stack_params(models):
  """The stacked parameters [M, ...] of models of one shape."""

  if all(m.row is None for m in models):
    return hf.load_stack([m.spec for m in models], models[0].cfg.precision)[1]
  from memjax import export
  each = [hf.load_params(m.spec, m.cfg.precision)[1] if m.row is None
          else export.row_params(*m.row, m.cfg) for m in models]
  return jax.tree.map(lambda *a: jnp.stack(a), *each)


# ---------------------------------------------------------------------------------------------
# Data.


def read_texts(path: str) -> list[tuple[int, str]]:
  """(line number, text) of every non-blank sequence of a .txt or .jsonl file."""
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      if path.endswith(".txt"):
        out.append((i, line))
        continue
      try:
        value = json.loads(line)
      except ValueError as e:
        raise ScoreError(f"{path}:{i + 1}: not a JSON object ({e})") from None
      if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise ScoreError(f"{path}:{i + 1}: needs a string field 'text'")
      out.append((i, value["text"]))
  if not out:
    raise ScoreError(f"--data: {path} holds no sequence")
  return out


def read_ids(path: str):
  try:
    ids = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ScoreError(f"--data: {path} does not load as a .npy array ({e})") from None
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or ids.shape[0] < 1:
    raise ScoreError(f"--data: {path} must hold integer token ids [B, S], got {ids.dtype} "
                     f"{list(ids.shape)}")
  if ids.size and ids.min() < 0:
    raise ScoreError(f"--data: {path} holds a negative token id ({int(ids.min())})")
  return ids


def sequences_for(model: Model, data, max_tokens: int):
  """(indices, list of int32 token arrays) that `model` scores, and how many were cut."""

  context = model.cfg.seq_len
  v = model.cfg.vocab_size
  if isinstance(data, np.ndarray):
    if data.shape[1] > context:
      raise ScoreError(f"--data: sequences of {data.shape[1]} tokens are longer than the "
                       f"context of {model.spec} ({context} tokens)")
    if data.max() >= v:
      raise ScoreError(f"--data: token id {int(data.max())} is out of the vocabulary of "
                       f"{model.spec} (V={v})")
    return list(range(data.shape[0])), [row.astype(np.int32) for row in data], 0
  if model.tokenizer is None:
    raise ScoreError(f"--model: {model.spec} has no tokenizer.json to tokenize the --data "
                     "text with (give token ids as a .npy instead)")
  limit = min(context, max_tokens) if max_tokens else context
  indices, texts = zip(*data)
  ids = model.tokenizer.encode_batch(list(texts))
  cut = sum(len(x) > limit for x in ids)
  ids = [np.asarray(x[:limit], np.int32) for x in ids]
  top = max((int(x.max()) for x in ids if x.size), default=0)
  if top >= v:
    raise ScoreError(f"--model: the tokenizer of {model.spec} gives token id {top}, out of its "
                     f"vocabulary (V={v})")
  return list(indices), ids, cut


# ---------------------------------------------------------------------------------------------
# Scoring.


def _batches(lengths, batch_size, context):
  """Batches of sequence positions, shortest first, each with the length it is padded to: the
  sequences' own when they all have one, else a multiple of PAD_MULTIPLE (at most the context)."""
  order = np.argsort(lengths, kind="stable")
  uniform = lengths.min() == lengths.max()
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    longest = max(int(lengths[idx].max()), 2)
    yield idx, longest if uniform else min(context, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def score_stack(cfg, params_M, seqs, batch_size, progress=None):
  """log2 p of tokens 1..n-1 of every sequence under every model: [M] lists of fp32 arrays."""
  m = int(jax.tree.leaves(params_M)[0].shape[0])
  lengths = np.array([len(x) for x in seqs])
  out = [[None] * len(seqs) for _ in range(m)]
  for idx, width in _batches(lengths, batch_size, max(cfg.seq_len, 2)):
    tokens_BxS = np.zeros((batch_size, width), np.int32)  # a full batch: one compile a width
    for row, i in enumerate(idx):
      tokens_BxS[row, :lengths[i]] = seqs[i]
    logp_MxBxS = np.asarray(likelihood.shared_token_logprobs(cfg, params_M,
                                                             jnp.asarray(tokens_BxS)))
    for row, i in enumerate(idx):
      for j in range(m):
        out[j][i] = logp_MxBxS[j, row, 1:max(lengths[i], 1)]
    if progress is not None:
      progress(len(idx) * m)
  return out


def _line(spec, index, n_tokens, logp_T, data_path):
  numbers = ",".join(f"{float(x):.9g}" for x in logp_T)  # 9 digits: every fp32 exactly
  head = json.dumps({"model": spec, "index": int(index), "n_tokens": int(n_tokens),
                     "logp2": float(logp_T.astype(np.float64).sum()), "data": data_path})
  return head[:-1] + f', "logp2_tokens": [{numbers}]}}\n'


def check_paths(models, data_path, out_path):
  if not models:
    raise ScoreError("--model: required (a Hugging Face checkpoint directory; repeat for more)")
  if not data_path:
    raise ScoreError("--data: required (.txt, .jsonl or .npy)")
  if not data_path.endswith(FORMATS):
    raise ScoreError(f"--data: {data_path} must end in {', '.join(FORMATS)}")
  if not os.path.isfile(data_path):
    raise ScoreError(f"--data: {data_path} does not exist")
  if not out_path or not out_path.endswith(".jsonl"):
    raise ScoreError(f"--out: must be a .jsonl file, got {out_path!r}")
  parent = os.path.dirname(os.path.abspath(out_path))
  if not os.path.isdir(parent):
    raise ScoreError(f"--out: the directory {parent} does not exist")


def run(model_specs, data_path, out_path, batch_size=16, precision="fp32", max_tokens=0,
        quiet=False, log=print):
  """Scores every sequence of data_path under every model and writes out_path (whole or not at
  all). Raises ScoreError / hf.CheckpointError for bad input, before anything is computed."""

  check_paths(model_specs, data_path, out_path)
  if batch_size < 1:
    raise ScoreError(f"--batch_size: must be >= 1, got {batch_size}")
  if max_tokens < 0:
    raise ScoreError(f"--max_tokens: must be >= 0, got {max_tokens}")
  start = time.time()
  models = [open_model(s, precision) for s in model_specs]
  data = read_ids(data_path) if data_path.endswith(".npy") else read_texts(data_path)
  prepared = [sequences_for(m, data, max_tokens) for m in models]  # every check before work
  groups = stacks_of(models)
  results = [None] * len(models)
  total = sum(len(p[1]) for p in prepared)
  with tqdm(total=total, desc="score", unit="seq", disable=quiet, leave=False) as bar:
    for group in groups:
      stack = [models[i] for i in group]
      log(f"stack of {len(stack)}: {hf.describe(stack[0].cfg)}")
      params_M = load_stack_params(stack)
      scores = score_stack(stack[0].cfg, params_M, prepared[group[0]][1], batch_size,
                           bar.update)
      for i, s in zip(group, scores):
        results[i] = s
  with jsonio.swapped_in(out_path, f"{out_path}.tmp{os.getpid()}") as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      for m, (indices, seqs, _), scores in zip(models, prepared, results):
        for index, seq, logp_T in zip(indices, seqs, scores):
          f.write(_line(m.spec, index, len(seq), logp_T, data_path))
  cut = sum(p[2] for p in prepared)
  if cut:
    log(f"{cut} sequence-model pairs were cut to the model's context (or --max_tokens)")
  lines = sum(len(p[0]) for p in prepared)
  log(f"wrote {lines} lines ({len(models)} models, {len(groups)} stacks) to {out_path} in "
      f"{time.time() - start:.1f}s")
  return lines


def main(argv):
  try:
    if len(argv) > 1:
      raise ScoreError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    run(f.model, f.data, f.out, f.batch_size, f.precision, f.max_tokens, f.quiet)
  except (ScoreError, hf.CheckpointError) as e:  # export.ExportError is one too
    print(f"memjax.score: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
