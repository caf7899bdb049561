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
  # A membership row: that experiment keeps no parameters.
  other = tmp_path / "other"
  other.mkdir()
  (other / "results.jsonl").write_text(
      json.dumps({"experiment": "membership", "key": "abc"}) + "\n")
  with pytest.raises(export.ExportError, match="row abc is a membership row, and only the text "
                     "and capacity experiments keep trained parameters"):
    export.export(str(other), "abc", str(tmp_path / "a"))


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


# ---------------------------------------------------------------------------------------------
# Capacity rows: kept with sweep.save_params=True (memjax/engine/params_store.py).


def _capacity_config(save_params):
  from test_sweep import load_config
  config = load_config()
  config.quiet = True
  config.data.vocab_size = 16
  config.data.seq_len = 8
  config.sweep.d_model = (8,)
  config.sweep.dataset_sizes = (4, 16)
  config.sweep.save_params = save_params
  config.train.steps = 20
  config.train.steps_per_call = 10
  config.train.warmup_steps = 2
  config.train.batch_size = 8
  config.eval.batch_size = 16
  config.eval.test_size = 16
  return config


@pytest.fixture(scope="module")
def capacity_run(tmp_path_factory):
  from memjax import config as config_lib
  from memjax.experiments import capacity
  workdir = str(tmp_path_factory.mktemp("capacity") / "run")
  capacity.run(config_lib.validate(_capacity_config(True)), workdir)
  with open(os.path.join(workdir, "results.jsonl")) as f:
    return workdir, [json.loads(line) for line in f]


def test_capacity_rows_export_and_reimport_to_their_stored_logprobs(capacity_run, tmp_path):
  workdir, rows = capacity_run
  assert len(rows) == 2 and os.listdir(os.path.join(workdir, "capacity_params"))
  tokens = np.random.default_rng(3).integers(0, 16, (3, 8)).astype(np.int32)
  seen = []
  for i, row in enumerate(rows):
    out = str(tmp_path / f"cap{i}")
    files = export.export(workdir, row["key"][:12], out, log=lambda _: None)
    assert sorted(os.path.basename(f) for f in files) == ["config.json", "model.safetensors"]
    cfg, params = hf.load_params(out)
    assert hf.n_params(cfg) == row["n_params"] and cfg.seq_len == row["seq_len"]
    row_cfg, tokenizer = export.row_config(workdir, row["key"])
    assert tokenizer is None
    stored = export.row_params(workdir, row["key"], row_cfg)
    want = np.asarray(likelihood.token_logprobs(row_cfg, stored, jnp.asarray(tokens)))
    got = np.asarray(likelihood.token_logprobs(cfg, params, jnp.asarray(tokens)))
    np.testing.assert_array_equal(got, want)
    seen.append(got)
  assert np.abs(seen[0] - seen[1]).max() > 1e-3  # two models, not one twice


def test_capacity_params_are_the_ones_its_row_was_scored_with(capacity_run):
  # The stored model, evaluated again on its own synthetic training set, gives the row's numbers.
  import jax
  from memjax import config as config_lib
  from memjax import train as train_lib
  from memjax.estimators import memorization
  workdir, rows = capacity_run
  tcfg = config_lib.validate(_capacity_config(True)).train
  for row in rows:
    cfg, _ = export.row_config(workdir, row["key"])
    params = export.row_params(workdir, row["key"], cfg)
    spec = train_lib.ModelSpec(row["dataset_size"], row["seed"], row["learning_rate"])
    state = train_lib.init_stack_from_specs(cfg, tcfg, [spec])
    state = state.replace(params=jax.tree.map(lambda a: a[None], params))
    got = memorization.evaluate_synthetic(cfg, state, 16, 16, tcfg.vocab_chunk)
    assert got["mem_bits"][0] == pytest.approx(row["mem_bits"], rel=1e-4, abs=1e-3)
    assert got["train_loss"][0] == pytest.approx(row["train_loss"], rel=1e-4)


def test_save_params_is_not_part_of_the_key(capacity_run):
  from memjax import config as config_lib
  from memjax.experiments import capacity
  workdir, rows = capacity_run
  _, trained, already = capacity.run(config_lib.validate(_capacity_config(False)), workdir)
  assert (trained, already) == (0, len(rows))


def test_capacity_row_without_saved_params_says_to_rerun(capacity_run, tmp_path):
  workdir, rows = capacity_run
  moved = tmp_path / "nosave"
  moved.mkdir()
  with open(os.path.join(workdir, "results.jsonl")) as f:
    (moved / "results.jsonl").write_text(f.read())
  with pytest.raises(export.ExportError) as info:
    export.export(str(moved), rows[0]["key"], str(tmp_path / "a"))
  assert "rerun it with --config.sweep.save_params=True" in str(info.value)
  assert "\n" not in str(info.value)


def test_capacity_export_gives_transformers_the_same_logprobs(capacity_run, tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  workdir, rows = capacity_run
  out = str(tmp_path / "hf")
  export.export(workdir, rows[1]["key"], out, log=lambda _: None)
  cfg = export.row_config(workdir, rows[1]["key"])[0]
  params = export.row_params(workdir, rows[1]["key"], cfg)
  model = transformers.GPT2LMHeadModel.from_pretrained(out, attn_implementation="eager").eval()
  tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 8))
  with torch.no_grad():
    logits = model(torch.as_tensor(tokens)).logits.float()
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor(tokens[:, 1:, None]))[..., 0].numpy() / math.log(2)
  mine = np.asarray(likelihood.token_logprobs(cfg, params, jnp.asarray(tokens)))[:, 1:]
  assert np.abs(mine - theirs).max() < 1e-5


def test_score_reads_capacity_rows_and_their_exports_alike(capacity_run, tmp_path):
  from memjax import score
  workdir, rows = capacity_run
  out_dir = str(tmp_path / "exported")
  export.export(workdir, rows[0]["key"], out_dir, log=lambda _: None)
  data = str(tmp_path / "ids.npy")
  np.save(data, np.random.default_rng(6).integers(0, 16, (3, 8)))
  out = str(tmp_path / "scores.jsonl")
  score.run([f"{workdir}@{rows[0]['key']}", out_dir], data, out, quiet=True, log=lambda _: None)
  with open(out) as f:
    lines = [json.loads(line) for line in f]
  assert [l["logp2_tokens"] for l in lines[:3]] == [l["logp2_tokens"] for l in lines[3:]]
