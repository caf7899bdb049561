"""The experiments on imported Hugging Face checkpoints (tests/data/hf, made by transformers):
configs/pretrained_dynamics.py and configs/pretrained_membership.py."""

import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import config as config_lib
from memjax import likelihood
from memjax.estimators import dynamics
from memjax.estimators import extraction
from memjax.experiments import dynamics as dyn_exp
from memjax.experiments import pretrained_membership as pm
from memjax.model import hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(ROOT, "tests", "data", "hf")
NEOX = (os.path.join(HF, "neox_a"), os.path.join(HF, "neox_b"))


def _config(path, **overrides):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field, value in overrides.items():
    section, name = field.split(".")
    config[section][name] = value
  return config


def _dynamics_config(**overrides):
  small = {"model.paths": NEOX, "data.source": "stdlib_docs", "data.max_documents": 60,
           "data.seq_len": 24, "data.num_samples": 48, "dynamics.context": 8,
           "dynamics.continuation": 8, "dynamics.contexts": (4, 8),
           "dynamics.continuations": (8,), "predictor.steps": 10}
  config = _config("configs/pretrained_dynamics.py", **{**small, **overrides})
  config.quiet = True
  return config


def test_greedy_decoding_of_neox_is_each_step_argmax():
  cfg, params_M = hf.load_stack(NEOX)
  prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 5))
  gen_MxBxT = np.asarray(extraction.greedy_continue(cfg, params_M, prompts, 16))
  for i in range(2):
    one = jax.tree.map(lambda x: x[i], params_M)
    stats = likelihood.next_token_stats(cfg, one, jnp.asarray(gen_MxBxT[i]))
    np.testing.assert_array_equal(np.asarray(stats["argmax"])[:, 4:15], gen_MxBxT[i][:, 5:16])


def test_dynamics_on_checkpoints_scores_each_as_alone(tmp_path):
  settings = dyn_exp.validate(_dynamics_config())
  dyn_exp.main(settings, str(tmp_path))
  results = json.load(open(tmp_path / "results.json"))
  (model,) = results["models"]
  assert model["over_training"]["checkpoints"] == list(NEOX)
  assert len(model["over_training"]["transitions"]) == 1
  scores = np.load(tmp_path / "scores.npz")[f"{model['label']}/scores_per_checkpoint"]
  samples, _, _, _ = dyn_exp.load_tokens(settings.data, str(tmp_path))
  for i, path in enumerate(NEOX):
    cfg, params = hf.load_stack([path])
    alone = dynamics.memorization_scores(cfg, params, samples[:48], 8, 8)[0]
    np.testing.assert_array_equal(scores[i], alone)
  dyn_exp.main(settings, str(tmp_path))  # a rerun reuses the stored result
  assert json.load(open(tmp_path / "results.json"))["widths_reused"] == [model["label"]]


@pytest.mark.parametrize("overrides, field", [
    ({"model.paths": (NEOX[0], os.path.join(HF, "gpt2_a"))}, "model.paths"),
    ({"data.tokenizer": "bpe"}, "data.tokenizer"),
    ({"data.seq_len": 65}, "data.seq_len"),
    ({"dynamics.max_n": 11}, "dynamics.max_n"),
    ({"data.source": "synthetic"}, "data.source"),
])
def test_dynamics_on_checkpoints_bad_config_names_the_field(overrides, field):
  with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
    dyn_exp.validate(_dynamics_config(**overrides))


def test_checkpoint_without_tokenizer_is_refused(tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(NEOX[0], bare)
  os.remove(bare / "tokenizer.json")
  with pytest.raises(config_lib.ConfigError, match="model.paths.*tokenizer.json"):
    dyn_exp.validate(_dynamics_config(**{"model.paths": (str(bare),)}))


def _texts(tmp_path):
  lines = [l.strip() for l in open(os.path.join(ROOT, "README.md")) if len(l.strip()) > 40]
  members, nonmembers = tmp_path / "m.jsonl", tmp_path / "n.txt"
  members.write_text("".join(json.dumps({"text": l}) + "\n" for l in lines[:20]))
  nonmembers.write_text("".join(l + "\n" for l in lines[20:50]) + "short\n")
  return str(members), str(nonmembers)


def _membership_config(tmp_path, **overrides):
  members, nonmembers = _texts(tmp_path)
  base = {"model.paths": NEOX, "model.reference_path": os.path.join(HF, "neox_c"),
          "data.members": members, "data.nonmembers": nonmembers, "data.seq_len": 12,
          "attack.n_bootstrap": 20}
  config = _config("configs/pretrained_membership.py", **{**base, **overrides})
  config.quiet = True
  return config


def _auc(s, y):
  """Mann-Whitney: P(member score > non-member score) + ties / 2."""
  a, b = s[y][:, None], s[~y][None, :]
  return float((a > b).mean() + 0.5 * (a == b).mean())


def test_membership_on_checkpoints(tmp_path):
  settings = pm.validate(_membership_config(tmp_path))
  pm.main(settings, str(tmp_path / "run"))
  rows = [json.loads(l) for l in open(tmp_path / "run" / "results.jsonl")]
  assert [r["model"] for r in rows] == list(NEOX)
  assert rows[0]["members"] == rows[0]["nonmembers"] == 20  # balanced; "short" left out
  scores = np.load(tmp_path / "run" / "scores.npz")
  y = scores["labels"]
  tokens = _scored_tokens(settings)
  for i, path in enumerate(NEOX):  # the stack's scores are each checkpoint's alone
    cfg, params = hf.load_stack([path])
    logp = np.asarray(likelihood.shared_token_logprobs(cfg, params, jnp.asarray(tokens)))[0]
    loss = logp[:, 1:].mean(-1)
    np.testing.assert_allclose(scores[f"{i}/loss"], loss, rtol=1e-5)
    assert rows[i]["attacks"]["loss"]["auc"] == pytest.approx(_auc(scores[f"{i}/loss"], y))
    assert set(rows[i]["attacks"]) == {"loss", "reference", "zlib", "min_k", "min_k_pp"}


def _scored_tokens(settings):
  tokenizer = hf.load_tokenizer(settings.model_paths[0])
  sides = [pm.read_windows(getattr(settings, s), s, tokenizer, settings.seq_len, 64)[0]
           for s in ("members", "nonmembers")]
  return pm.balanced(*sides, settings.max_samples, settings.seed)[0]


def test_membership_bad_inputs_name_the_field(tmp_path):
  other = tmp_path / "other"
  shutil.copytree(os.path.join(HF, "neox_c"), other)
  with open(other / "tokenizer.json", "a") as f:
    f.write(" ")
  cases = [({"model.reference_path": str(other)}, "model.reference_path"),
           ({"data.members": str(tmp_path / "none.jsonl")}, "data.members"),
           ({"data.nonmembers": str(tmp_path / "x.csv")}, "data.nonmembers"),
           ({"model.paths": ()}, "model.paths"),
           ({"data.seq_len": 100}, "data.seq_len")]
  for overrides, field in cases:
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
      pm.validate(_membership_config(tmp_path, **overrides))
  short = tmp_path / "short.txt"
  short.write_text("ab\ncd\n")
  settings = pm.validate(_membership_config(tmp_path, **{"data.members": str(short)}))
  with pytest.raises(config_lib.ConfigError, match=r"data\.members.*no candidate"):
    pm.main(settings, str(tmp_path / "run"))


def _distributional_config(**overrides):
  small = {"model.paths": NEOX, "data.source": "stdlib_docs", "data.max_documents": 60,
           "data.seq_len": 24, "data.num_samples": 48, "data.heldout": 16,
           "distributional.eval_samples": 16, "distributional.context": 8,
           "distributional.batch_size": 8}
  config = _config("configs/pretrained_distributional.py", **{**small, **overrides})
  config.quiet = True
  return config


def test_distributional_on_checkpoints_rows_are_each_checkpoints_alone(tmp_path, capsys):
  from memjax.experiments import distributional as dist_exp
  settings = dist_exp.validate(_distributional_config())
  assert settings.dataset_sizes == (48,)  # the whole counted pool
  dist_exp.main(settings, str(tmp_path / "both"))
  printed = capsys.readouterr().out
  assert "ckpt: the checkpoint's place in model.paths" in printed
  rows = json.load(open(tmp_path / "both" / "results.json"))["rows"]
  assert {(r["checkpoint_index"], r["set"], r["n"]) for r in rows} == {
      (i, s, n) for i in (0, 1) for s in ("heldout", "generated", "train") for n in (2, 3)}
  assert os.path.isfile(tmp_path / "both" / "distributional.png")
  for i, path in enumerate(NEOX):
    alone = dist_exp.validate(_distributional_config(**{"model.paths": (path,)}))
    dist_exp.main(alone, str(tmp_path / f"alone{i}"))
    mine = [r for r in rows if r["checkpoint_index"] == i]
    theirs = json.load(open(tmp_path / f"alone{i}" / "results.json"))["rows"]
    assert len(mine) == len(theirs) == 6
    for a, b in zip(mine, theirs):
      assert a["checkpoint"] == b["checkpoint"] == path
      assert (a["set"], a["n"], a["n_pairs"]) == (b["set"], b["n"], b["n_pairs"])
      # The stack rounds differently from one model in the last bits, which can swap a near
      # tie in the rank correlations: equal to 1e-3 there, the probabilities to 1e-5.
      for key, tol in (("spearman", 1e-3), ("kendall_tau", 1e-3), ("mean_model_p", 1e-5),
                       ("mean_ngram_p", 1e-12)):
        assert a[key] == pytest.approx(b[key], rel=tol, abs=tol, nan_ok=True)
  # Two different checkpoints give different model probabilities on the same items.
  by = {(r["checkpoint_index"], r["set"], r["n"]): r for r in rows}
  assert by[(0, "heldout", 2)]["mean_model_p"] != by[(1, "heldout", 2)]["mean_model_p"]


@pytest.mark.parametrize("overrides, field", [
    ({"model.paths": (NEOX[0], os.path.join(HF, "gpt2_a"))}, "model.paths"),
    ({"data.tokenizer": "bpe"}, "data.tokenizer"),
    ({"data.seq_len": 65}, "data.seq_len"),
    ({"distributional.max_n": 11, "distributional.orders": (2,)}, "distributional.max_n"),
])
def test_distributional_on_checkpoints_bad_config_names_the_field(overrides, field):
  from memjax.experiments import distributional as dist_exp
  with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
    dist_exp.validate(_distributional_config(**overrides))


def _extraction_config(data_path, **overrides):
  base = {"model.paths": NEOX, "data.path": data_path, "data.seq_len": 12,
          "extraction.prefix_lengths": (4, 8), "extraction.batch_size": 4}
  config = _config("configs/pretrained_extraction.py", **{**base, **overrides})
  config.quiet = True
  return config


def test_extraction_on_checkpoints(tmp_path, capsys):
  from memjax.experiments import pretrained_extraction as px
  # Candidates: neox_a's own greedy continuations of random 4-token prompts (which it must
  # extract fully from any prefix of 4 or more), and random sequences (which it must not).
  cfg, params_M = hf.load_stack(NEOX)
  rng = np.random.default_rng(5)
  own = np.asarray(extraction.greedy_continue(
      cfg, jax.tree.map(lambda x: x[:1], params_M), rng.integers(0, 64, (6, 4)), 12))[0]
  data = tmp_path / "ids.npy"
  np.save(data, np.concatenate([own, rng.integers(0, 64, (6, 12))]))
  settings = px.validate(_extraction_config(str(data)))
  px.main(settings, str(tmp_path / "run"))
  assert "extraction of 12 candidates of 12 tokens" in capsys.readouterr().out
  rows = [json.loads(l) for l in open(tmp_path / "run" / "results.jsonl")]
  assert [r["model"] for r in rows] == list(NEOX)
  scores = np.load(tmp_path / "run" / "scores.npz")
  for p in (4, 8):
    np.testing.assert_array_equal(scores[f"0/exact_{p}"][:6], True)
    assert not scores[f"0/exact_{p}"][6:].all()
    assert rows[0]["prefixes"][str(p)]["extracted"] == pytest.approx(
        scores[f"0/exact_{p}"].mean())
  for i, path in enumerate(NEOX):  # the stack decodes as each checkpoint alone
    one_cfg, one = hf.load_stack([path])
    alone = extraction.extract(one_cfg, one, scores["tokens"], (4, 8), 4)
    for p in (4, 8):
      np.testing.assert_array_equal(scores[f"{i}/token_match_{p}"], alone[p]["token_match"][0])


def test_extraction_on_checkpoints_bad_fields(tmp_path):
  from memjax.experiments import pretrained_extraction as px
  data = tmp_path / "ids.npy"
  np.save(data, np.zeros((2, 12), np.int64))
  for overrides, field in (({"extraction.prefix_lengths": (12,)}, "extraction.prefix_lengths"),
                           ({"data.path": str(tmp_path / "none.txt")}, "data.path"),
                           ({"data.seq_len": 65}, "data.seq_len"),
                           ({"model.paths": ()}, "model.paths")):
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
      px.validate(_extraction_config(str(data), **overrides))
