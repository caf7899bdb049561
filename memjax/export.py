"""A trained memjax GPT-2 out as a Hugging Face GPT-2 directory.

    python -m memjax.export --workdir=runs/text --key=KEY --out=exported/gpt2

KEY is the `key` of a row of WORKDIR/results.jsonl (or a prefix that only it has). The directory
written holds config.json (GPT2LMHeadModel), model.safetensors (fp32) and, when the run
tokenized with a Hugging Face tokenizer (a trained BPE or a tokenizer.json), its tokenizer.json;
`transformers.GPT2LMHeadModel.from_pretrained(OUT)` loads it, and memjax.score reads it back.

Which rows: the text experiment keeps the parameters of every stack it trains when
sweep.save_params=True (configs/text.py sets it), in WORKDIR/text_stacks/stack-<id>.params.npz;
the capacity experiment, with sweep.save_params=True (off by default), keeps each finished
chunk's in WORKDIR/capacity_params/ (memjax/engine/params_store.py). These rows export; a row
of a run without the option says to rerun with it, and the other experiments keep no
parameters, so their rows cannot be exported (the error says so). A bf16 or bf16-mixed row is
written with its bf16 values in fp32, so transformers (fp32) gives its log-probabilities up to
bf16 rounding of the activations.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from memjax.engine import params_store
from memjax.engine import sweep
from memjax.model import gpt2
from memjax.model import hf


def define_flags():
  """The CLI's flags (defined only when run as a program: memjax.score imports this module)."""
  flags.DEFINE_string("workdir", None, "The memjax workdir the row is in.")
  flags.DEFINE_string("key", None, "The row's key (results.jsonl), or a unique prefix.")
  flags.DEFINE_string("out", None, "The directory to write (new or empty).")


STACKS_DIR = "text_stacks"


class ExportError(hf.CheckpointError):
  """A row that cannot be exported: one line naming the flag or file."""


def find_row(workdir: str, key: str):
  """(index of the row among the workdir's rows, the rows)."""
  if not workdir or not os.path.isdir(workdir):
    raise ExportError(f"--workdir: {workdir!r} is not a directory")
  if not key:
    raise ExportError("--key: required (the `key` of a row of results.jsonl)")
  results = os.path.join(workdir, "results.jsonl")
  if not os.path.isfile(results):
    raise ExportError(f"--workdir: {results} does not exist (is it a memjax workdir?)")
  rows = sweep.read_all_rows(workdir, repair=False)
  hits = [i for i, r in enumerate(rows) if str(r.get("key", "")).startswith(key)]
  if not hits:
    raise ExportError(f"--key: no row of {results} has a key starting {key!r} "
                      f"({len(rows)} rows)")
  if len({rows[i]["key"] for i in hits}) > 1:
    raise ExportError(f"--key: {len(hits)} rows of {results} have keys starting {key!r}; give "
                      "more of the key")
  return hits[0], rows


def _shape(row):
  return (row.get("layers"), row.get("d_model"), row.get("heads"), row.get("vocab_size"),
          row.get("seq_len"), row.get("precision"))


def _stack_params_file(workdir, i, rows):
  """(params .npz, model index in it) of row i: the stack whose keys hash to a stored file.

  A text run's stacks are runs of consecutive rows of one shape (results.jsonl keeps the plan's
  order), named by the hash of their keys, so the stack of row i is the window of its shape's
  rows around it whose hash names a file in text_stacks/."""
  from memjax.experiments import text as text_exp  # its stack naming, not a copy of it

  lo = hi = i
  while lo > 0 and _shape(rows[lo - 1]) == _shape(rows[i]):
    lo -= 1
  while hi + 1 < len(rows) and _shape(rows[hi + 1]) == _shape(rows[i]):
    hi += 1
  keys = [r["key"] for r in rows]
  root = os.path.join(workdir, STACKS_DIR)
  for start in range(i, lo - 1, -1):
    for stop in range(i + 1, hi + 2):
      path = os.path.join(root, f"stack-{text_exp._hash(keys[start:stop])[:16]}.params.npz")
      if os.path.isfile(path):
        return path, i - start
  return None, None


def _config_of(row, precision):
  try:
    return gpt2.ModelConfig(int(row["vocab_size"]), int(row["seq_len"]), int(row["layers"]),
                            int(row["d_model"]), int(row["heads"]),
                            precision or row["precision"])
  except (KeyError, TypeError, ValueError) as e:
    raise ExportError(f"--key: row {row.get('key')} lacks its model shape ({e})") from None


EXPORTABLE = ("text", "capacity")


def _check_exportable(workdir, row):
  experiment = row.get("experiment")
  if experiment not in EXPORTABLE:
    raise ExportError(
        f"--key: row {row['key']} is a {experiment} row, and only the text and capacity "
        "experiments keep trained parameters (with sweep.save_params=True); the others keep "
        "none")


def row_config(workdir: str, key: str, precision: str | None = None):
  """(gpt2.ModelConfig, the run's tokenizer or None) of a row; precision None: the row's."""
  from memjax.data import tokenize as tokenize_lib

  i, rows = find_row(workdir, key)
  _check_exportable(workdir, rows[i])
  tokenizer = None  # a capacity run's tokens are synthetic: it has none
  if rows[i]["experiment"] == "text":
    try:
      tokenizer = tokenize_lib.load_tokenizer_from_workdir(workdir)
    except (OSError, ValueError):
      pass
  return _config_of(rows[i], precision), tokenizer


def row_params(workdir: str, key: str, cfg: gpt2.ModelConfig):
  """The trained parameters of one row (a text run's stored stack, a capacity run's stored
  chunk), in cfg's parameter dtype."""
  i, rows = find_row(workdir, key)
  row = rows[i]
  _check_exportable(workdir, row)
  if row["experiment"] == "capacity":
    path, j = params_store.find(workdir, row["key"])
    where = os.path.join(workdir, params_store.DIR)
  else:
    path, j = _stack_params_file(workdir, i, rows)
    where = os.path.join(workdir, STACKS_DIR)
  if path is None:
    raise ExportError(
        f"--key: row {row['key']} has no stored parameters in {where} (the run had "
        "sweep.save_params=False, or its files were removed); rerun it with "
        "--config.sweep.save_params=True")
  template = jax.eval_shape(lambda: gpt2.init_params(cfg, jax.random.key(0)))
  try:
    params = params_store.load_model(path, j, template)
  except (KeyError, IndexError, OSError, ValueError) as e:
    raise ExportError(f"{path}: does not hold model {j} of shape {hf.describe(cfg)} "
                      f"({hf._first_line(e)})") from None
  return jax.tree.map(lambda x: jnp.asarray(x).astype(cfg.param_dtype), params)


def export(workdir: str, key: str, out: str, log=print):
  """Writes the row as a Hugging Face GPT-2 directory; returns the files written."""
  if not out:
    raise ExportError("--out: required (a new or empty directory)")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ExportError(f"--out: {out} exists and is not an empty directory; give a new one")
  cfg, tokenizer = row_config(workdir, key)
  params = row_params(workdir, key, cfg)
  tokenizer_json = tokenizer.to_json() if isinstance(tokenizer, _hf_tokenizer_class()) else None
  files = hf.write_gpt2(out, cfg, params, tokenizer_json)
  i, rows = find_row(workdir, key)
  log(f"row {rows[i]['key'][:16]} ({_row_label(rows[i])}; {hf.describe(cfg)}) written to "
      f"{out}: {', '.join(os.path.basename(f) for f in files)}")
  if tokenizer_json is None and rows[i].get("experiment") == "capacity":
    log("no tokenizer.json: a capacity model's tokens are synthetic ids 0..V-1")
  elif tokenizer_json is None:
    log("no tokenizer.json: the run used the byte tokenizer (token i is byte i), or none was "
        "found in the workdir")
  return files


def _row_label(row):
  """A text row's name; a capacity row (which has none) by its dataset size and seed."""
  if row.get("name"):
    return row["name"]
  return f"{row.get('experiment')} N={row.get('dataset_size')} seed {row.get('seed')}"


def _hf_tokenizer_class():
  from memjax.data import tokenize as tokenize_lib
  return tokenize_lib.HFTokenizer


def main(argv):
  try:
    if len(argv) > 1:
      raise ExportError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    export(f.workdir, f.key, f.out)
  except (ExportError, hf.CheckpointError) as e:
    print(f"memjax.export: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
