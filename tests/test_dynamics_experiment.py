"""End-to-end runs of the dynamics and distributional experiments (`python -m memjax.main`), and
their config validation."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from memjax import config as config_lib
from memjax.experiments import distributional as dist_exp
from memjax.estimators import dynamics
from memjax.experiments import dynamics as dyn_exp
from memjax.estimators import ngram

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The embedded corpus, cut down: 40 stdlib docstrings as raw bytes (no BPE to train).
TINY_DATA = ["--config.quiet=True", "--config.data.max_documents=40",
             "--config.data.tokenizer=bytes", "--config.data.vocab_size=256",
             "--config.train.steps_per_call=30", "--config.train.warmup_steps=5"]
TINY_DYNAMICS = ["--config=configs/dynamics.py", *TINY_DATA, "--config.data.num_samples=96",
                 "--config.sweep.d_model=(16,)", "--config.train.steps=60",
                 "--config.dynamics.checkpoints=3", "--config.dynamics.context=8",
                 "--config.dynamics.continuation=8", "--config.dynamics.contexts=(8,30)",
                 "--config.dynamics.continuations=(8,)", "--config.dynamics.batch_size=96",
                 "--config.predictor.steps=20"]
TINY_DISTRIBUTIONAL = ["--config=configs/distributional.py", *TINY_DATA,
                       "--config.data.num_samples=64", "--config.data.heldout=16",
                       "--config.sweep.d_model=(16,)", "--config.sweep.dataset_sizes=(8,64)",
                       "--config.train.steps=30", "--config.distributional.eval_samples=16",
                       "--config.distributional.batch_size=16"]


def run_main(args, workdir):
  return subprocess.run([sys.executable, "-m", "memjax.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _config(path, **overrides):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field, value in overrides.items():
    node = config
    *parents, name = field.split(".")
    for p in parents:
      node = node[p]
    node[name] = value
  return config


def test_dynamics_cli_writes_results_and_figures(tmp_path):
  proc = run_main(TINY_DYNAMICS, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "memorization dynamics" in proc.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  (m,) = results["models"]
  assert m["d_model"] == 16 and m["n_params"] > 0
  over = m["over_training"]
  assert over["steps"] == [20, 40, 60] and len(over["bucket_counts"]) == 3
  assert all(sum(c) == 96 for c in over["bucket_counts"])
  # Transition rows sum to the previous checkpoint's bucket counts, columns to the next one's.
  for i, t in enumerate(over["transitions"]):
    assert np.array(t).sum(1).tolist() == over["bucket_counts"][i]
    assert np.array(t).sum(0).tolist() == over["bucket_counts"][i + 1]
  grid = {(g["context"], g["continuation"]): g for g in m["grid"]}
  assert grid[(8, 8)]["status"] == "ok" and grid[(30, 8)]["status"] == "skipped"
  assert "38 > seq_len = 32" in grid[(30, 8)]["reason"]
  # The grid cell equal to the main setting reproduces the final checkpoint's scores.
  assert grid[(8, 8)]["bucket_counts"] == over["bucket_counts"][-1]
  assert len(m["embeddings"]["centroid_distances"]) == 5
  effect = m["decoding_dynamics"]
  assert effect["offsets"] == list(range(-4, 5))
  assert (effect["memorized"]["samples"] + effect["unmemorized"]["samples"]) == 96
  pred = m["predictor"]
  assert 0 <= pred["accuracy"] <= 1 and pred["test_samples"] == 24
  scores = np.load(tmp_path / "scores.npz")
  assert scores["L1_d16/scores_per_checkpoint"].shape == (3, 96)
  for png in ("score_grid.png", "over_training.png", "transitions.png", "embeddings_pca.png",
              "centroid_distances.png", "boundary_effect.png"):
    assert (tmp_path / png).stat().st_size > 1000, png


def test_distributional_cli_writes_correlations_and_figure(tmp_path):
  proc = run_main(TINY_DISTRIBUTIONAL, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "distributional memorization" in proc.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  rows = results["rows"]
  # 1 width x 2 dataset sizes x 3 sets x 2 orders
  assert len(rows) == 12
  assert {r["set"] for r in rows} == {"heldout", "generated", "train"}
  for r in rows:
    if r["defined"]:
      assert -1 <= r["spearman"] <= 1 and -1 <= r["kendall_tau"] <= 1 and r["n_pairs"] >= 3
      assert r["kendall_tau_distance"] == pytest.approx((1 - r["kendall_tau"]) / 2)
    else:
      assert math.isnan(r["spearman"]) and r["marker"].startswith("undefined")
  # the training set is counted by the n-gram model: every context of a member is seen
  assert all(r["context_seen"] == 1.0 for r in rows if r["set"] == "train")
  assert (tmp_path / "distributional.png").stat().st_size > 1000


def test_correlation_rows_mark_too_few_pairs():
  index = ngram.NgramIndex.build(np.array([[1, 2, 3, 1, 2, 4]]), max_n=3, vocab_size=8)
  tokens = np.array([[1, 2, 3]])  # n=3: a single item (t = 2)
  logp = np.log2(np.array([[0.1, 0.5, 0.9]]))
  (row,) = dist_exp.correlation_rows(logp, tokens, index, (3,), 0, "context")
  assert row["items"] == 1 and not row["defined"] and math.isnan(row["spearman"])
  assert "1 usable pairs" in row["marker"]
  # n=2 at t = 1, 2 of two sequences: 4 pairs, model and n-gram in the same order -> rho = 1
  tokens = np.array([[1, 2, 3], [1, 2, 4]])
  logp = np.log2(np.array([[0.1, 0.9, 0.4], [0.1, 0.9, 0.3]]))
  # n-gram: P(2|1) = 2/2 (twice), P(3|2) = 1/2, P(4|2) = 1/2 -> ties; model 0.9, 0.9, 0.4, 0.3
  (row,) = dist_exp.correlation_rows(logp, tokens, index, (2,), 0, "context")
  assert row["defined"] and row["n_pairs"] == 4
  assert row["spearman"] == pytest.approx(np.corrcoef([3.5, 3.5, 2, 1], [3.5, 3.5, 1.5, 1.5])[0, 1])


@pytest.mark.parametrize("path,overrides,needle", [
    ("configs/dynamics.py", {"dynamics.context": 30},
     "config.dynamics.continuation: dynamics.context + dynamics.continuation = 30 + 8 = 38 is "
     "longer than the sequence (data.seq_len=32)"),
    ("configs/dynamics.py", {"dynamics.ngram_n": 6},
     "config.dynamics.ngram_n: n=6 is larger than the counted order dynamics.max_n=5"),
    ("configs/dynamics.py", {"dynamics.contexts": (40,)},
     "config.dynamics.contexts: no (context, continuation) pair"),
    ("configs/dynamics.py", {"data.source": "web"}, "config.data.source: must be one of"),
    ("configs/dynamics.py", {"dynamics.score_samples": 5000}, "config.dynamics.score_samples:"),
    ("configs/dynamics.py", {"dynamics.score_samples": 1},
     "config.dynamics.score_samples: the score predictor needs >= 2 scored samples"),
    ("configs/distributional.py", {"distributional.orders": (2, 7)},
     "config.distributional.orders: n=7 is larger than the counted order"),
    ("configs/distributional.py", {"sweep.dataset_sizes": (4096,)},
     "config.sweep.dataset_sizes: dataset size 4096 is larger than the training set"),
    ("configs/distributional.py", {"distributional.context": 32},
     "config.distributional.context:"),
    ("configs/distributional.py", {"distributional.denominator": "x"},
     "config.distributional.denominator: must be one of context, continuation"),
    ("configs/dynamics.py", {"data.paths": ("notes.txt",)},
     "config.data.paths: data.source='stdlib_docs' reads no files"),
    ("configs/distributional.py", {"data.pool_split": "doc"},
     "config.data.pool_split: must be one of sequence, document"),
    ("configs/distributional.py", {"data.source": "synthetic", "data.pool_split": "document"},
     "config.data.pool_split: 'document' needs a text source"),
])
def test_bad_configs_fail_naming_the_field(path, overrides, needle):
  module = dyn_exp if "dynamics" in path else dist_exp
  module.validate(_config(path))  # the defaults are valid
  with pytest.raises(config_lib.ConfigError) as e:
    module.validate(_config(path, **overrides))
  assert str(e.value).startswith(needle), str(e.value)


@pytest.mark.parametrize("overrides,field", [
    ({"data.heldout": 100_000}, "data.heldout"),
    ({"data.num_samples": 100_000, "data.max_documents": 0}, "data.num_samples"),
    ({"data.num_samples": 400, "data.heldout": 300, "data.max_documents": 3,
      "sweep.dataset_sizes": (64, 400)}, "data.max_documents"),
])
def test_a_corpus_too_small_names_the_field_that_asks_too_much(overrides, field, tmp_path):
  settings = dist_exp.validate(_config("configs/distributional.py", **{
      "data.tokenizer": "bytes", "data.vocab_size": 256, "data.max_documents": 40, **overrides}))
  with pytest.raises(config_lib.ConfigError, match=f"^config.{field}: the corpus"):
    dyn_exp.load_tokens(settings.data, str(tmp_path))


def test_synthetic_held_out_sequences_that_repeat_training_ones_are_refused(tmp_path):
  # V**S = 16 sequences: uniform draws repeat, and a repeat would be scored as unseen.
  settings = dist_exp.validate(_config("configs/distributional.py", **{
      "data.source": "synthetic", "data.vocab_size": 2, "data.seq_len": 4,
      "data.num_samples": 64, "data.heldout": 16, "sweep.dataset_sizes": (64,),
      "distributional.context": 2, "distributional.eval_samples": 16}))
  with pytest.raises(config_lib.ConfigError, match=r"^config.data.seq_len: \d+ of the 16 held-out"):
    dyn_exp.load_tokens(settings.data, str(tmp_path))
  big = dataclasses.replace(settings.data, vocab_size=512, seq_len=8)
  train_NxS, heldout_HxS, _, _ = dyn_exp.load_tokens(big, str(tmp_path))
  assert train_NxS.shape == (64, 8) and heldout_HxS.shape == (16, 8)


def test_held_out_sequences_split_by_document_come_from_other_documents(tmp_path):
  overrides = {"data.tokenizer": "bytes", "data.vocab_size": 256, "data.max_documents": 40,
               "data.num_samples": 200, "data.heldout": 40, "sweep.dataset_sizes": (64, 200),
               "distributional.eval_samples": 40}
  by_sequence = dist_exp.validate(_config("configs/distributional.py", **overrides))
  train, heldout, _, info = dyn_exp.load_tokens(by_sequence.data, str(tmp_path))
  assert info["pool_split"] == "sequence"
  settings = dist_exp.validate(_config("configs/distributional.py", **overrides,
                                       **{"data.pool_split": "document"}))
  # Widths trained before the option keep their keys; a split by document gets its own.
  assert dyn_exp.width_key(by_sequence, 16) == dyn_exp.width_key(
      dataclasses.replace(by_sequence, data=dataclasses.replace(by_sequence.data,
                                                                pool_split="sequence")), 16)
  assert dyn_exp.width_key(settings, 16) != dyn_exp.width_key(by_sequence, 16)
  doc_train, doc_heldout, _, doc_info = dyn_exp.load_tokens(settings.data, str(tmp_path))
  assert doc_train.shape == train.shape and doc_heldout.shape == heldout.shape
  assert doc_info["documents"]["heldout"] < doc_info["documents"]["train"]
  # Rebuild which document each row came from: no document is on both sides.
  from memjax.data import text as text_lib
  ds = text_lib.build_text_dataset(
      text_lib.SourceConfig(kind="stdlib_docs", max_documents=40),
      text_lib.TokenizerConfig(kind="bytes"), 32, cache_dir=str(tmp_path / "cache"))
  doc_of_row = {bytes(row.tolist()): int(d) for row, d in zip(np.asarray(ds.tokens), ds.doc_ids)}
  train_docs = {doc_of_row[bytes(r.astype(np.uint16).tolist())] for r in doc_train}
  heldout_docs = {doc_of_row[bytes(r.astype(np.uint16).tolist())] for r in doc_heldout}
  assert not train_docs & heldout_docs and len(heldout_docs) == doc_info["documents"]["heldout"]
  # Whole held-out documents hold more than 40 sequences, so all but 40 cannot train.
  assert np.isin(ds.doc_ids, list(heldout_docs)).sum() > 40
  with pytest.raises(config_lib.ConfigError, match="^config.data.pool_split: split by document"):
    dyn_exp.load_tokens(dataclasses.replace(settings.data, num_samples=ds.num_sequences - 40),
                        str(tmp_path))


def test_a_parquet_corpus_feeds_the_distributional_experiment(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  words = np.random.default_rng(0).choice(["memorize", "this", "text", "or", "generalize",
                                            "from", "it", "tokens", "count"], (60, 40))
  texts = [f"document {i}: " + " ".join(w) + "." for i, w in enumerate(words)]
  pq.write_table(pa.table({"id": list(range(60)), "body": texts}), str(tmp_path / "c.parquet"))
  overrides = {"data.tokenizer": "bytes", "data.vocab_size": 256, "data.max_documents": 0,
               "data.num_samples": 64, "data.heldout": 16, "sweep.dataset_sizes": (8, 64),
               "distributional.eval_samples": 16, "data.source": "parquet",
               "data.paths": (str(tmp_path / "*.parquet"),), "data.text_field": "body"}
  settings = dist_exp.validate(_config("configs/distributional.py", **overrides))
  train, heldout, vocab, info = dyn_exp.load_tokens(settings.data, str(tmp_path / "w"))
  assert train.shape == (64, 32) and heldout.shape == (16, 32) and vocab == 256
  assert info["source"].startswith("parquet source")
  # the same bytes as the documents: every training row is a slice of the concatenated texts
  assert bytes(train[0].astype(np.uint8).tolist()).decode("latin-1") in "".join(texts)
  with pytest.raises(config_lib.ConfigError, match="^config.data.text_field|^config.data.paths"):
    dyn_exp.load_tokens(dist_exp.validate(_config(
        "configs/distributional.py", **{**overrides, "data.text_field": "text"})).data,
        str(tmp_path / "w2"))


def test_cli_bad_input_is_one_line(tmp_path):
  proc = run_main(["--config=configs/dynamics.py", "--config.dynamics.continuation=20"], tmp_path)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("memjax: error: config.dynamics.continuation:")


def test_empty_buckets_are_marked():
  out = dynamics.centroid_distances(np.eye(3), [4, 4, 4])
  assert out["empty"] == list(dynamics.BUCKET_LABELS[:4])
  assert np.isnan(out["distances"][:4]).all() and out["distances"][4, 4] == 0


def _settings(module, args, **overrides):
  """Validated settings of a TINY_* argument list (plus overrides), as memjax.main builds them."""
  import ast
  fields = {}
  for a in args[1:]:
    name, value = a[len("--config."):].split("=", 1)
    try:
      fields[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      fields[name] = value
  fields.update(overrides)
  return module.validate(_config(args[0].split("=", 1)[1], **fields))


# The dynamics case (about 2 minutes on 2 cores) is left to -m slow: both share the stored-width
# logic, and the distributional case runs in CI.
@pytest.mark.parametrize("module,args", [pytest.param(dyn_exp, TINY_DYNAMICS, marks=pytest.mark.slow),
                                         (dist_exp, TINY_DISTRIBUTIONAL)],
                         ids=["dynamics", "distributional"])
def test_a_rerun_after_a_kill_trains_only_the_widths_not_stored(module, args, tmp_path,
                                                                monkeypatch, capsys):
  settings = _settings(module, args, **{"sweep.d_model": (16, 24)})
  trained = []
  real_run_width = module.run_width

  def run_width(settings, cfg, *rest):
    trained.append(cfg.d_model)
    if cfg.d_model == 24 and len(trained) == 2:
      raise KeyboardInterrupt  # the first run is killed while training its second width
    return real_run_width(settings, cfg, *rest)

  monkeypatch.setattr(module, "run_width", run_width)
  with pytest.raises(KeyboardInterrupt):
    module.main(settings, str(tmp_path))
  assert not (tmp_path / "results.json").exists()
  module.main(settings, str(tmp_path))
  assert trained == [16, 24, 24]  # the rerun trained d24 only
  first = json.loads((tmp_path / "results.json").read_text())
  assert first["widths_reused"] == ["L1_d16"]

  module.main(settings, str(tmp_path))  # everything stored: nothing trained, the same results
  assert trained == [16, 24, 24]
  again = json.loads((tmp_path / "results.json").read_text())
  assert again["widths_reused"] == ["L1_d16", "L1_d24"]
  part = "models" if module is dyn_exp else "rows"
  assert json.dumps(again[part]) == json.dumps(first[part])

  module.main(_settings(module, args, **{"sweep.d_model": (16, 24), "train.steps": 20}),
              str(tmp_path))  # another training budget: both widths train again
  assert trained == [16, 24, 24, 16, 24]
  capsys.readouterr()


@pytest.mark.parametrize("module,args,needle", [
    (dyn_exp, TINY_DYNAMICS, "L1_d16 diverged (training loss NaN or inf) for its model"),
    (dist_exp, TINY_DISTRIBUTIONAL, "L1_d16 diverged (training loss NaN or inf) for N=64")],
    ids=["dynamics", "distributional"])
def test_a_diverged_model_stops_with_one_line_naming_the_learning_rate(module, args, needle,
                                                                       monkeypatch):
  # A loss gone NaN froze the model at NaN parameters: the dynamics run died in the embeddings'
  # SVD with a traceback, and the distributional rows read as "too few pairs".
  from memjax.model import gpt2
  settings = _settings(module, args)
  sizes = getattr(settings, "dataset_sizes", (1,))
  state = type("State", (), {"diverged_M": np.array([False] * (len(sizes) - 1) + [True]),
                             "params": None})()
  monkeypatch.setattr(dyn_exp, "train_in_segments",
                      lambda *a, **k: (state, np.array([1.0] * (len(sizes) - 1) + [np.nan]), []))
  cfg = gpt2.ModelConfig(256, 32, 1, 16, 2)
  tokens = np.zeros((64, 32), np.int32)
  with pytest.raises(config_lib.ConfigError, match="config.train.learning_rate: ") as e:
    if module is dyn_exp:
      module.run_width(settings, cfg, "L1_d16", tokens, tokens[:8], None, "unused")
    else:
      module.run_width(settings, cfg, tokens, tokens[:16], tokens[:8], {}, "unused")
  assert needle in str(e.value) and "\n" not in str(e.value)


# Two CLI runs each (about a minute on 2 cores): left to -m slow; tests/test_infini_gram.py checks
# the same equality on the estimators in seconds.
@pytest.mark.slow
@pytest.mark.parametrize("args", [TINY_DYNAMICS, TINY_DISTRIBUTIONAL], ids=["dynamics", "dist"])
def test_the_infini_gram_backend_gives_the_exact_backends_results(args, tmp_path):
  pytest.importorskip("infini_gram.engine")
  for backend in ("exact", "infini_gram"):
    proc = run_main([*args, f"--config.ngram.backend={backend}"], tmp_path / backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
  exact, ig = (json.loads((tmp_path / b / "results.json").read_text())
               for b in ("exact", "infini_gram"))
  same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # nan == nan
  if "rows" in exact:  # distributional: every correlation row
    assert same(ig["rows"], exact["rows"])
  else:  # dynamics: the corpus counts along decoding, and the figure's numbers made of them
    assert same(ig["models"][0]["decoding_dynamics"], exact["models"][0]["decoding_dynamics"])
    counts = [np.load(tmp_path / b / "scores.npz")["L1_d16/ngram_count_steps"]
              for b in ("exact", "infini_gram")]
    np.testing.assert_array_equal(*counts)
  assert os.listdir(tmp_path / "infini_gram" / "cache" / "infini_gram")  # built in the cache
