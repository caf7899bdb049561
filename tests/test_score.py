"""python -m memjax.score: per-sample log2-probabilities of Hugging Face checkpoints as files."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from memjax import likelihood
from memjax import score
from memjax.model import hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "hf")
TEXTS = ["the cat sat on the mat", "", "the quick brown fox jumps over the lazy dog",
         "memorization is measured in bits and the bits are counted per parameter " * 3,
         "a model"]


def fixture(name):
  return os.path.join(DATA, name)


def expected(name):
  with np.load(os.path.join(fixture(name), "transformers_logp2.npz")) as f:
    return f["tokens"], f["logp2"]


def read_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def quiet_run(*args, **kwargs):
  return score.run(*args, quiet=True, log=lambda _: None, **kwargs)


def test_cli_writes_transformers_logprobs_for_every_model_and_sequence(tmp_path):
  tokens, _ = expected("neox_a")
  data = str(tmp_path / "ids.npy")
  np.save(data, tokens)
  out = str(tmp_path / "scores.jsonl")
  models = [fixture("neox_a"), fixture("gpt2_a"), fixture("neox_b")]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  done = subprocess.run([sys.executable, "-m", "memjax.score", *[f"--model={m}" for m in models],
                         f"--data={data}", f"--out={out}", "--quiet"], capture_output=True,
                        text=True, env=env, cwd=ROOT)
  assert done.returncode == 0, done.stderr
  assert "stack of 2: GPT-NeoX L2 d32 h2 V64 ctx 64 fp32, 17,088 parameters" in done.stdout
  assert f"wrote 9 lines (3 models, 2 stacks) to {out}" in done.stdout
  lines = read_lines(out)
  assert [(l["model"], l["index"]) for l in lines] == [(m, i) for m in models for i in range(3)]
  for line in lines:
    assert set(line) == {"model", "index", "n_tokens", "logp2", "logp2_tokens", "data"}
    assert line["data"] == data and line["n_tokens"] == tokens.shape[1]
    want = expected(os.path.basename(line["model"]))[1][line["index"]]
    assert len(line["logp2_tokens"]) == tokens.shape[1] - 1
    assert np.abs(np.array(line["logp2_tokens"]) - want).max() < 1e-5
    assert line["logp2"] == pytest.approx(sum(line["logp2_tokens"]), abs=1e-5)  # 9 digits a token

  done = subprocess.run([sys.executable, "-m", "memjax.score", f"--model={fixture('neox_a')}",
                         f"--data={data}", "--out=x.csv"], capture_output=True, text=True,
                        env=env, cwd=ROOT)
  assert done.returncode == 2
  assert done.stderr.strip() == "memjax.score: error: --out: must be a .jsonl file, got 'x.csv'"


def _alone(model, ids):
  cfg, params = hf.load_params(model)
  return np.asarray(likelihood.token_logprobs(cfg, params, jnp.asarray(ids[None])))[0, 1:]


@pytest.mark.parametrize("ext", [".txt", ".jsonl"])
def test_text_is_tokenized_per_line_and_scored_as_each_sequence_alone(tmp_path, ext):
  data = str(tmp_path / f"texts{ext}")
  with open(data, "w") as f:
    for t in TEXTS:
      f.write((json.dumps({"text": t, "id": 1}) if ext == ".jsonl" and t else t) + "\n")
  out = str(tmp_path / "out.jsonl")
  models = [fixture("gpt2_a"), fixture("neox_c")]
  # batch_size 2: sequences of different lengths share a padded batch.
  assert quiet_run(models, data, out, batch_size=2) == 8
  lines = read_lines(out)
  assert [l["index"] for l in lines] == [0, 2, 3, 4] * 2  # line numbers; the blank one skipped
  tokenizer = hf.load_tokenizer(fixture("gpt2_a"))
  for line in lines:
    ids = tokenizer.encode_batch([TEXTS[line["index"]]])[0][:32]  # both contexts are 32
    assert line["n_tokens"] == len(ids)
    # Unpadded, alone (one compile a length: two of them, on the rotary model).
    if line["model"] == models[1] and line["index"] in (0, 4):
      np.testing.assert_allclose(line["logp2_tokens"], _alone(line["model"], ids), atol=2e-6)
  assert lines[2]["n_tokens"] == 32  # the long line, cut to the context


def test_max_tokens_and_a_one_token_sequence(tmp_path):
  data = str(tmp_path / "t.txt")
  with open(data, "w") as f:
    f.write("the cat sat on the mat\nthe\n")
  out = str(tmp_path / "out.jsonl")
  quiet_run([fixture("neox_a")], data, out, max_tokens=3)
  first, second = read_lines(out)
  assert first["n_tokens"] == 3 and len(first["logp2_tokens"]) == 2
  assert second["n_tokens"] == 1 and second["logp2_tokens"] == [] and second["logp2"] == 0


def _error(tmp_path, models, data_name, content, **kwargs):
  data = str(tmp_path / data_name)
  if isinstance(content, np.ndarray):
    np.save(data, content)
  else:
    with open(data, "w") as f:
      f.write(content)
  with pytest.raises((score.ScoreError, hf.CheckpointError)) as info:
    quiet_run(models, data, str(tmp_path / "out.jsonl"), **kwargs)
  assert "\n" not in str(info.value)
  assert not os.path.exists(tmp_path / "out.jsonl")
  return str(info.value)


def test_bad_inputs(tmp_path):
  neox = [fixture("neox_a")]
  ids = np.zeros((2, 8), np.int64)
  assert _error(tmp_path, neox, "a.npy", ids + 64) == (
      f"--data: token id 64 is out of the vocabulary of {neox[0]} (V=64)")
  assert _error(tmp_path, neox, "b.npy", np.zeros((2, 65), np.int64)) == (
      f"--data: sequences of 65 tokens are longer than the context of {neox[0]} (64 tokens)")
  assert "must hold integer token ids [B, S], got float32 [2, 8]" in _error(
      tmp_path, neox, "c.npy", np.zeros((2, 8), np.float32))
  assert _error(tmp_path, neox, "d.jsonl", '{"text": "a"}\n{"txt": "b"}\n').endswith(
      "d.jsonl:2: needs a string field 'text'")
  assert "e.jsonl:1: not a JSON object" in _error(tmp_path, neox, "e.jsonl", "text\n")
  assert _error(tmp_path, neox, "f.csv", "a\n").endswith("f.csv must end in .txt, .jsonl, .npy")
  assert _error(tmp_path, neox, "g.txt", "\n\n").endswith("g.txt holds no sequence")
  assert _error(tmp_path, [], "h.txt", "a\n").startswith("--model: required")
  assert "batch_size: must be >= 1" in _error(tmp_path, neox, "i.txt", "a\n", batch_size=0)
  assert _error(tmp_path, [str(tmp_path / "nowhere")], "j.txt", "a\n").endswith(
      "not a directory (give a Hugging Face checkpoint directory)")


def test_text_needs_a_tokenizer(tmp_path):
  import shutil
  model = str(tmp_path / "m")
  shutil.copytree(fixture("gpt2_c"), model)
  os.remove(os.path.join(model, "tokenizer.json"))
  assert _error(tmp_path, [model], "t.txt", "a b\n") == (
      f"--model: {model} has no tokenizer.json to tokenize the --data text with (give token ids "
      "as a .npy instead)")
