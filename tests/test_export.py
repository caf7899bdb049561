"""memjax.export: a trained text-run row out as a Hugging Face GPT-2 directory, and back in."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from memjax import export
from memjax import likelihood
from memjax.experiments import text as tx
from memjax.model import hf

sys.path.insert(0, os.path.dirname(__file__))
from test_text_experiment import tiny_config, write_corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """A tiny text run (trained BPE, 3 models of one shape in stacks of 2) that kept its params."""
  tmp = tmp_path_factory.mktemp("export")
  config = tiny_config(write_corpus(tmp / "corpus"))
  config.data.tokenizer = "bpe"
  config.data.vocab_size = 300
  config.sweep.d_model = (8,)
  config.sweep.models_per_stack = 2
  config.sweep.save_params = True
  config.train.steps = 10
  config.train.steps_per_call = 10
  config.extraction.prefix_lengths = ()
  config.analysis.top_k = 0
  workdir = str(tmp / "run")
  rows, _, _ = tx.run(tx.validate(config), workdir)
  return workdir, rows


def test_every_row_exports_and_reimports_to_its_own_logprobs(text_run, tmp_path):
  workdir, rows = text_run
  assert len(rows) == 3  # stacks of 2 and 1: the row is found in either
  tokens = np.random.default_rng(0).integers(0, rows[0]["vocab_size"], (2, 16)).astype(np.int32)
  seen = []
  for i, row in enumerate(rows):
    out = str(tmp_path / f"out{i}")
    files = export.export(workdir, row["key"][:12], out, log=lambda _: None)
    assert sorted(os.path.basename(f) for f in files) == ["config.json", "model.safetensors",
                                                          "tokenizer.json"]
    cfg, params = hf.load_params(out)
    assert (cfg.layers, cfg.d_model, cfg.vocab_size, cfg.seq_len) == (
        row["layers"], row["d_model"], row["vocab_size"], row["seq_len"])
    assert hf.n_params(cfg) == row["n_params"]
    row_cfg, _ = export.row_config(workdir, row["key"])
    mine = likelihood.token_logprobs(row_cfg, export.row_params(workdir, row["key"], row_cfg),
                                     jnp.asarray(tokens))
    got = np.asarray(likelihood.token_logprobs(cfg, params, jnp.asarray(tokens)))
    np.testing.assert_array_equal(got, np.asarray(mine))
    seen.append(got)
  assert np.abs(seen[0] - seen[1]).max() > 1e-3  # three different models, not one three times
  assert np.abs(seen[1] - seen[2]).max() > 1e-3
  with open(os.path.join(workdir, "tokenizer.json")) as a, open(
      os.path.join(str(tmp_path / "out0"), "tokenizer.json")) as b:
    assert a.read() == b.read()


def test_bad_rows_and_flags(text_run, tmp_path):
  workdir, rows = text_run
  with pytest.raises(export.ExportError, match="--key: no row of .* has a key starting 'zzz'"):
    export.export(workdir, "zzz", str(tmp_path / "a"))
  with pytest.raises(export.ExportError, match="--key: 3 rows of .* have keys starting ''|"
                     "--key: required"):
    export.export(workdir, "", str(tmp_path / "a"))
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(export.ExportError, match="full exists and is not an empty directory"):
    export.export(workdir, rows[0]["key"], str(tmp_path / "full"))
  with pytest.raises(export.ExportError, match="is not a directory"):
    export.export(str(tmp_path / "nowhere"), "k", str(tmp_path / "a"))
  # A capacity row: its checkpoints are gone once its rows are written.
  cap = tmp_path / "cap"
  cap.mkdir()
  (cap / "results.jsonl").write_text(json.dumps({"experiment": "capacity", "key": "abc"}) + "\n")
  with pytest.raises(export.ExportError, match="row abc is a capacity row, and only the text "
                     "experiment keeps trained parameters"):
    export.export(str(cap), "abc", str(tmp_path / "a"))


def test_a_run_without_saved_params(text_run, tmp_path):
  workdir, rows = text_run
  moved = tmp_path / "run"
  os.makedirs(moved / "text_stacks")
  for name in ("results.jsonl", "text_dataset.json", "tokenizer.json"):
    with open(os.path.join(workdir, name)) as f:
      (moved / name).write_text(f.read())
  with pytest.raises(export.ExportError, match="has no stored parameters .* rerun it with "
                     "--config.sweep.save_params=True"):
    export.export(str(moved), rows[0]["key"], str(tmp_path / "a"))


def test_cli(text_run, tmp_path):
  workdir, rows = text_run
  out = str(tmp_path / "cli")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  done = subprocess.run([sys.executable, "-m", "memjax.export", f"--workdir={workdir}",
                         f"--key={rows[1]['key']}", f"--out={out}"], capture_output=True,
                        text=True, env=env, cwd=ROOT)
  assert done.returncode == 0, done.stderr
  assert f"written to {out}: model.safetensors, config.json, tokenizer.json" in done.stdout
  done = subprocess.run([sys.executable, "-m", "memjax.export", f"--workdir={workdir}",
                         "--key=nope", f"--out={out}2"], capture_output=True, text=True,
                        env=env, cwd=ROOT)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith("memjax.export: error: --key: no row")


def test_export_gives_transformers_the_same_logprobs(text_run, tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  workdir, rows = text_run
  out = str(tmp_path / "hf")
  export.export(workdir, rows[0]["key"], out, log=lambda _: None)
  cfg, params = hf.load_params(out)
  model = transformers.GPT2LMHeadModel.from_pretrained(out, attn_implementation="eager").eval()
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16))
  with torch.no_grad():
    logits = model(torch.as_tensor(tokens)).logits.float()
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor(tokens[:, 1:, None]))[..., 0].numpy() / math.log(2)
  mine = np.asarray(likelihood.token_logprobs(cfg, params, jnp.asarray(tokens)))[:, 1:]
  assert np.abs(mine - theirs).max() < 1e-5


def test_score_reads_rows_and_their_exports_alike(text_run, tmp_path):
  from memjax import score
  workdir, rows = text_run
  out_dir = str(tmp_path / "exported")
  export.export(workdir, rows[2]["key"], out_dir, log=lambda _: None)
  data = str(tmp_path / "ids.npy")
  np.save(data, np.random.default_rng(2).integers(0, rows[0]["vocab_size"], (3, 16)))
  out = str(tmp_path / "scores.jsonl")
  specs = [f"{workdir}@{rows[2]['key'][:10]}", out_dir, f"{workdir}@{rows[0]['key']}"]
  score.run(specs, data, out, quiet=True, log=lambda _: None)
  with open(out) as f:
    lines = [json.loads(line) for line in f]
  assert [l["model"] for l in lines] == [s for s in specs for _ in range(3)]
  for a, b in zip(lines[:3], lines[3:6]):
    assert a["logp2_tokens"] == b["logp2_tokens"]
  assert lines[0]["logp2_tokens"] != lines[6]["logp2_tokens"]
