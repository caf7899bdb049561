"""The text memorization experiment: validation, references, TF-IDF, scoring, the CLI end to end."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from memjax import likelihood
from memjax.model import gpt2
from memjax.experiments import text as tx
from memjax.estimators import tfidf as tfidf_lib
from memjax.config import ConfigError
from memjax.train import ModelSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("memory", "model", "token", "gradient", "capacity", "sample", "bit", "layer", "train",
         "the", "of", "a", "and", "is", "to", "in", "that", "with", "data", "loss")


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def write_corpus(directory, num_files=6, words=300, seed=0):
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(num_files):
    text = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), size=words))
    (directory / f"doc{i}.txt").write_text(text, encoding="utf-8")
  return str(directory)


def tiny_config(corpus_dir):
  config = load_config("text")
  config.quiet = True
  config.data.source = "txt"
  config.data.paths = (corpus_dir,)
  config.data.tokenizer = "bytes"
  config.data.seq_len = 16
  config.data.train_pool = 48
  config.data.heldout_pool = 16
  config.sweep.d_model = (8, 16)
  config.sweep.dataset_sizes = (4, 16)
  config.train.steps = 40
  config.train.batch_size = 8
  config.train.warmup_steps = 5
  config.train.steps_per_call = 20
  config.eval.batch_size = 32
  config.eval.test_size = 16
  config.extraction.prefix_lengths = (4, 8)
  config.extraction.member_samples = 4
  config.extraction.nonmember_samples = 8
  config.extraction.batch_size = 8
  config.analysis.top_k = 3
  return config


# ---------------------------------------------------------------------------------------------
# Validation.


def test_the_cpu_config_validates_and_the_paper_config_names_its_missing_files(tmp_path):
  settings = tx.validate(load_config("text"))
  assert settings.source.kind == "stdlib_docs" and settings.tokenizer.kind == "bpe"
  assert settings.seq_len == 64 and settings.prefix_lengths == (8, 16, 32)
  assert len(settings.d_model) * len(settings.layers) >= 3
  paper = load_config("text_paper")
  with pytest.raises(ConfigError, match=r"^config\.data\.(paths|tokenizer_path): "):
    tx.validate(paper)
  corpus = tmp_path / "shard.parquet"
  corpus.write_bytes(b"")
  tokenizer = tmp_path / "tokenizer.json"
  tokenizer.write_text("{}")
  paper.data.paths = (str(corpus),)
  paper.data.tokenizer_path = str(tokenizer)
  settings = tx.validate(paper)
  assert settings.seq_len == 64 and settings.layers == (8,) and settings.tokenizer.kind == "file"
  assert max(settings.d_model) == 256 and max(settings.dataset_sizes) >= 1_000_000
  assert settings.nonmember_samples == 10_000


@pytest.mark.parametrize("field, value, needle", [
    ("data.vocab_size", 100, "config.data.vocab_size: a byte-level BPE needs 257"),
    ("data.source", "web", "config.data.source: must be one of"),
    ("data.tokenizer", "gpt2", "config.data.tokenizer: must be one of file, bpe, bytes"),
    ("data.seq_len", 1, "config.data.seq_len: must be an integer in [2,"),
    ("data.train_pool", 100, "config.sweep.dataset_sizes: dataset size 2048 is larger than"),
    ("eval.test_size", 5000, "config.eval.test_size: 5000 test sequences do not fit"),
    ("extraction.prefix_lengths", (8, 64), "config.extraction.prefix_lengths: each prefix must"),
    ("extraction.nonmember_samples", 5000, "config.extraction.nonmember_samples: 5000"),
    ("reference.primary", "best", "config.reference.primary: must be one of same_size, oracle"),
    ("sweep.d_model", (16, 33), "config.sweep.d_model: each d_model must be divisible"),
    ("sweep.seeds", (0, 0), "config.sweep.seeds: lists 0 more than once"),
    ("data.pool_split", "doc", "config.data.pool_split: must be one of sequence, document"),
])
def test_bad_values_name_the_field(field, value, needle):
  config = load_config("text")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError) as e:
    tx.validate(config)
  assert str(e.value).startswith(needle), str(e.value)


def test_missing_files_and_tokenizer_are_named_before_reading(tmp_path):
  config = load_config("text")
  config.data.source = "jsonl"
  with pytest.raises(ConfigError, match=r"^config\.data\.paths: data.source='jsonl' reads files"):
    tx.validate(config)
  config.data.paths = (str(tmp_path / "nope.jsonl"),)
  with pytest.raises(ConfigError, match=r"^config\.data\.paths: the source file .*nope\.jsonl"):
    tx.validate(config)
  config = load_config("text")
  config.data.tokenizer = "file"
  config.data.tokenizer_path = str(tmp_path / "tok.json")
  with pytest.raises(ConfigError, match=r"^config\.data\.tokenizer_path: the tokenizer file"):
    tx.validate(config)
  config = load_config("text")
  config.data.typo = 1
  with pytest.raises(ConfigError, match=r"^config\.data\.typo: unknown field"):
    tx.validate(config)


def test_pools_split_by_document_share_no_document_and_keep_sequence_keys(tmp_path):
  corpus = write_corpus(tmp_path / "corpus", num_files=12, words=60)
  config = tiny_config(corpus)
  config.data.train_pool = 20
  config.data.heldout_pool = 8
  config.sweep.dataset_sizes = (4,)
  config.eval.test_size = 8
  by_sequence = tx.load_data(tx.validate(config), str(tmp_path / "seq"))
  # Runs split by sequence keep the model keys they had before the split could be chosen.
  assert by_sequence.identity == tx._hash({
      "dataset": by_sequence.dataset.manifest["key"],
      "pools": {"train": 20, "heldout": 8, "reference": 0}, "seed": 0,
      "members": "perm(data.seed, seed)[:N]"})
  config.data.pool_split = "document"
  data = tx.load_data(tx.validate(config), str(tmp_path / "doc"))
  assert data.identity != by_sequence.identity
  doc_ids = data.dataset.doc_ids
  assert not set(doc_ids[data.train_idx].tolist()) & set(doc_ids[data.heldout_idx].tolist())
  assert (data.train_idx.size, data.heldout_idx.size) == (20, 8)
  summary = json.loads((tmp_path / "doc" / "text_dataset.json").read_text())
  assert summary["pool_split"] == "document" and summary["num_train"] == 20
  assert summary["documents"]["heldout"] + summary["documents"]["train"] <= 12
  assert set(summary["heldout_overlap_with_train_pool"]) == {"span_4", "span_8"}
  # Pools that fit by sequence but not in whole documents: the message names the split.
  config.data.train_pool = by_sequence.dataset.num_sequences - 8
  with pytest.raises(ConfigError, match=r"^config\.data\.pool_split: split by document"):
    tx.load_data(tx.validate(config), str(tmp_path / "doc2"))
  # The training pool of every sequence left (train_pool=0) is smaller by document.
  config.data.train_pool = 0
  config.sweep.dataset_sizes = (4, by_sequence.dataset.num_sequences - 8)
  with pytest.raises(ConfigError, match=r"^config\.sweep\.dataset_sizes: dataset size .* split "
                                        r"by document"):
    tx.load_data(tx.validate(config), str(tmp_path / "doc3"))


# ---------------------------------------------------------------------------------------------
# Members, references, memorization.


def test_members_of_a_smaller_n_are_a_subset_and_the_reference_holds_them_all():
  settings = tx.validate(load_config("text"))
  small = tx.member_positions(settings, 100, 0, 10)
  large = tx.member_positions(settings, 100, 0, 40)
  ref = tx.member_positions(settings, 100, 0, 100)
  np.testing.assert_array_equal(large[:10], small)
  assert sorted(ref.tolist()) == list(range(100))
  assert not np.array_equal(tx.member_positions(settings, 100, 1, 10), small)
  shape = gpt2.ModelConfig(64, 64, 1, 16, 2)
  members = tx.shape_members(settings, shape, 8192)
  assert members[0].is_reference and members[0].spec.dataset_size == 8192
  assert [m.spec.dataset_size for m in members[1:]] == list(settings.dataset_sizes)
  assert not any(m.is_reference for m in members[1:])


def test_a_shape_is_cut_into_stacks_that_fit_the_device_memory(monkeypatch):
  from memjax.engine import sweep
  settings = tx.validate(load_config("text"))
  shape = gpt2.ModelConfig(64, 64, 1, 16, 2)
  members = tx.shape_members(settings, shape, 8192)
  assert [len(s) for s in tx._stacks(settings, members)] == [len(members)]  # 4 GiB: all fit
  one = sweep.model_memory(shape, settings.train, settings.eval_batch_size).total
  devices = len(jax.local_devices())
  # Room for 2 models a device: stacks of 2 a device, the last one smaller.
  monkeypatch.setattr(sweep, "DEFAULT_CPU_MEMORY_GIB",
                      2.5 * one * devices / sweep.MEMORY_HEADROOM / 2**30)
  sizes = [len(s) for s in tx._stacks(settings, members)]
  assert sum(sizes) == len(members) and max(sizes) == min(2 * devices, len(members))
  assert sizes == sorted(sizes, reverse=True)


def _scored(shape, n, seed, positions, logp, test_loss_bits, is_reference):
  member = tx.Member(shape, ModelSpec(n, seed, 1e-2), is_reference, not is_reference)
  return tx.Scored(member=member, key=f"{shape.d_model}-{n}-{seed}",
                   positions=np.asarray(positions), member_logp=np.asarray(logp, np.float64),
                   test_logp=np.full(4, -test_loss_bits, np.float64), steps=10, diverged=False,
                   extraction={}, stack_wall_s=1.0)


def test_memorization_against_the_same_size_and_the_oracle_reference():
  config = load_config("text")
  config.extraction.prefix_lengths = ()
  config.reference.alpha = 2.0
  settings = tx.validate(config)
  small = gpt2.ModelConfig(8, 4, 1, 4, 2)
  large = gpt2.ModelConfig(8, 4, 1, 8, 2)
  pool = np.arange(6)
  # Constructed log2-likelihoods (sequence sums, bits) of the six pool sequences.
  ref_small = _scored(small, 6, 0, pool, [-100.0] * 6, 30.0, True)
  ref_large = _scored(large, 6, 0, pool, [-80.0] * 6, 20.0, True)  # lower test loss: the oracle
  model = _scored(small, 3, 0, [2, 0, 5], [-90.0, -120.0, -60.0], 40.0, False)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 8, (10, 4))
  dataset = types.SimpleNamespace(tokens=tokens, vocab_size=8, num_sequences=10, num_documents=1,
                                  num_chars=40, num_duplicates_dropped=0)
  data = tx.Data(dataset, train_idx=np.arange(6), heldout_idx=np.arange(6, 10),
                 reference_idx=np.zeros(0, np.int32), identity="x")
  rows, summary, per_sample = tx.analyze(settings, data, [ref_small, ref_large, model])
  row = next(r for r in rows if r["key"] == model.key)
  # Same-size reference: differences (10, -20, 40) -> clipped 50, unclipped 30, data 300 bits.
  assert row["reference_same_size"] == "L1 d4 fp32 N=6 seed=0"
  assert row["mem_bits_same_size"] == 50.0 and row["mem_bits_unclipped_same_size"] == 30.0
  assert row["ref_bits_same_size"] == 300.0
  # Oracle (the larger model, better held-out loss): differences (-10, -40, 20).
  assert summary["reference"]["oracle"]["name"] == "L1 d8 fp32 N=6 seed=0"
  assert row["reference_oracle"] == "L1 d8 fp32 N=6 seed=0"
  assert row["mem_bits_oracle"] == 20.0 and row["mem_bits_unclipped_oracle"] == -30.0
  assert row["ref_bits_oracle"] == 240.0
  # The primary reference (oracle) gives mem_bits and the dataset size in bits.
  assert row["mem_bits"] == 20.0 and row["dataset_bits"] == 240.0
  np.testing.assert_allclose(per_sample[model.key]["mem"], [0.0, 0.0, 20.0])
  # Capacity = alpha x params; losses in nats per predicted token (position 0 excluded).
  assert row["capacity_bits"] == 2.0 * gpt2.n_params(small)
  assert row["dataset_bits_over_capacity"] == 240.0 / row["capacity_bits"]
  expected_train = np.mean([90, 120, 60]) - 3  # minus log2 V for position 0
  assert math.isclose(row["train_loss"], expected_train / 3 * math.log(2))
  assert math.isclose(row["test_loss"], (40 - 3) / 3 * math.log(2))
  # A reference measured against itself memorizes nothing.
  ref_row = next(r for r in rows if r["key"] == ref_small.key)
  assert ref_row["mem_bits_same_size"] == 0.0 and ref_row["role"] == "reference"
  # With alpha = 0 the capacity is measured: the largest seed-mean memorization of the shape.
  config.reference.alpha = 0.0
  rows, summary, _ = tx.analyze(tx.validate(config), data, [ref_small, ref_large, model])
  assert next(r for r in rows if r["key"] == model.key)["capacity_bits"] == 20.0
  assert summary["capacity"]["source"].startswith("measured")


def test_tfidf_is_the_mean_over_token_positions_with_idf_over_the_pool():
  pool = np.array([[0, 0, 1, 2], [0, 3, 3, 3], [0, 1, 1, 1]])
  idf = tfidf_lib.inverse_document_frequency(pool, 5)
  df = np.array([3, 2, 1, 1, 0])
  np.testing.assert_allclose(idf, np.log(4 / (1 + df)) + 1)
  got = tfidf_lib.sample_tfidf(pool, idf)
  for i, row in enumerate(pool):
    tf = np.array([np.mean(row == t) for t in row])
    np.testing.assert_allclose(got[i], np.mean(tf * idf[row]))
  np.testing.assert_allclose(tfidf_lib.mean_idf(pool, idf), idf[pool].mean(1))
  # Rare tokens score higher than common ones.
  assert tfidf_lib.sample_tfidf(np.array([[3, 2, 3, 2]]), idf)[0] > tfidf_lib.sample_tfidf(
      np.array([[0, 1, 0, 1]]), idf)[0]


def test_each_model_scores_exactly_its_own_members():
  cfg = gpt2.ModelConfig(vocab_size=23, seq_len=6, layers=1, d_model=8, num_heads=2)
  keys = jax.random.split(jax.random.key(0), 3)
  params_M = jax.vmap(lambda k: gpt2.init_params(cfg, k))(keys)
  params_M = jax.tree.map(lambda x: x * 5, params_M)
  corpus = jax.random.randint(jax.random.key(1), (30, 6), 0, 23)
  rows = [np.arange(3, 10), np.array([0, 29]), np.arange(12, 30)]
  got = tx.score_members(cfg, params_M, rows, corpus, batch=4, vocab_chunk=4096)
  one_model = jax.jit(lambda p, t: likelihood.token_logprobs(cfg, p, t).sum(-1))
  for m, r in enumerate(rows):
    want = one_model(jax.tree.map(lambda a: a[m], params_M), corpus[np.arange(30)])[r]
    np.testing.assert_allclose(got[m], want, rtol=1e-5)
  shared = tx.score_shared(cfg, params_M, np.arange(5), corpus, batch=2, vocab_chunk=4096)
  assert shared.shape == (3, 5)
  want = one_model(jax.tree.map(lambda a: a[2], params_M), corpus[np.arange(30)])[:5]
  np.testing.assert_allclose(shared[2], want, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The CLI end to end.


def run_main(config_path, workdir, *extra):
  return subprocess.run([sys.executable, "-m", "memjax.main", f"--config={config_path}",
                         f"--workdir={workdir}", *extra], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def write_config_file(path, corpus_dir):
  path.write_text(
      "import importlib.util, os\n"
      f"spec = importlib.util.spec_from_file_location('t', {os.path.abspath(__file__)!r})\n"
      "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
      f"def get_config():\n  return m.tiny_config({corpus_dir!r})\n")
  return str(path)


ROW_FIELDS = {"layers", "d_model", "n_params", "dataset_size", "seed", "train_loss", "test_loss",
              "reference_same_size", "reference_oracle", "ref_bits_same_size", "ref_bits_oracle",
              "mem_bits_same_size", "mem_bits_oracle", "mem_bits", "dataset_bits", "ref_bits",
              "capacity_bits", "dataset_bits_over_capacity", "extraction", "tfidf_spearman",
              "status", "role", "key"}


def test_cli_runs_a_tiny_text_sweep_end_to_end_and_resumes(tmp_path):
  corpus = write_corpus(tmp_path / "corpus")
  config = write_config_file(tmp_path / "tiny.py", corpus)
  workdir = tmp_path / "run"
  # 2 CPU devices: each stack of 3 models is padded to 4 and sharded; the copy is dropped.
  proc = run_main(config, workdir, "--cpu_devices=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  assert len(rows) == 2 * (2 + 1)  # shapes x (dataset sizes + the full-pool reference)
  for r in rows:
    assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
    assert r["status"] == "ok" and r["steps"] == 40
    assert r["ref_bits_oracle"] > 0 and r["mem_bits_oracle"] >= 0
    assert r["mem_bits_same_size"] <= r["ref_bits_same_size"] + r["dataset_size"] * 16 * 8
    assert set(r["extraction"]) == {"4", "8"}
    for scores in r["extraction"].values():
      assert 0 <= scores["train_exact"] <= 1 and 0 <= scores["test_token_match"] <= 1
  refs = [r for r in rows if r["role"] == "reference"]
  assert sorted(r["dataset_size"] for r in refs) == [48, 48]
  assert all(r["mem_bits_same_size"] == 0 for r in refs)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["reference"]["oracle"]["name"] in {r["name"] for r in refs}
  assert [m["d_model"] for m in summary["models"]] == [8, 16]
  assert summary["dataset"]["vocab_size"] == 256 and summary["dataset"]["train_pool"] == 48
  overlap = json.loads((workdir / "text_dataset.json").read_text())["heldout_overlap_with_train_pool"]
  assert set(overlap) == {"span_4", "span_8"} and 0 <= overlap["span_8"] <= overlap["span_4"] <= 1
  for png in ("memorization_vs_dataset_size.png", "double_descent.png",
              "extraction_vs_dataset_size.png", "tfidf_vs_memorization.png"):
    assert (workdir / png).stat().st_size > 1000
  top = (workdir / "top_memorized.txt").read_text()
  assert top.count("#1 mem") == 2 and any(w in top for w in WORDS)
  assert "6 models trained, 0 already done" in proc.stdout
  assert "oracle reference:" in proc.stdout and "mem_oracle" in proc.stdout

  proc = run_main(config, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "0 models trained, 6 already done" in proc.stdout
  again = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  strip = lambda r: {k: v for k, v in r.items() if k != "wall_s_per_stack"}
  assert [strip(r) for r in again] == [strip(r) for r in rows]

  # Other extraction settings: the stored parameters are scored again, nothing is retrained.
  proc = run_main(config, workdir, "--config.extraction.prefix_lengths=(6,)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "0 models trained, 6 rescored from stored parameters, 0 already done" in proc.stdout
  rescored = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  assert [set(r["extraction"]) for r in rescored] == [{"6"}] * 6
  assert [r["mem_bits_oracle"] for r in rescored] == [r["mem_bits_oracle"] for r in rows]

  # Damaged stored files (a truncated copy, say) are reported and redone, not a crash: the
  # first stack's scores and parameters, and the second stack's scores.
  stacks = workdir / "text_stacks"
  newest = sorted(stacks.glob("*.scores.npz"), key=os.path.getmtime)[-2:]
  first_params = stacks / ("-".join(newest[0].name.split("-")[:2]) + ".params.npz")
  for path in (*newest, first_params):
    path.write_bytes(path.read_bytes()[:300])
  proc = run_main(config, workdir, "--config.extraction.prefix_lengths=(6,)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "3 models trained, 3 rescored from stored parameters, 0 already done" in proc.stdout
  assert proc.stderr.count("do not load") == 3


def test_cli_bad_data_fails_in_one_line_before_training(tmp_path):
  corpus = write_corpus(tmp_path / "corpus", num_files=2, words=40)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "a.txt").write_text("   \n")
  bad_tokenizer = tmp_path / "tokenizer.json"
  bad_tokenizer.write_text("{not json")
  config = write_config_file(tmp_path / "tiny.py", corpus)
  cases = [
      # The corpus has only a few sequences: far fewer than the pools ask for.
      ([], "config.data.train_pool: the corpus (txt source"),
      ([f"--config.data.paths=('{tmp_path / 'missing.txt'}',)"],
       "config.data.paths: the source file"),
      ([f"--config.data.paths=('{empty}',)"], "config.data.paths: the txt source"),
      (["--config.data.tokenizer=file", f"--config.data.tokenizer_path={bad_tokenizer}"],
       "config.data.tokenizer_path: the tokenizer file"),
      (["--config.data.tokenizer=bpe", "--config.data.vocab_size=64"],
       "config.data.vocab_size: a byte-level BPE needs 257"),
  ]
  for extra, needle in cases:
    proc = run_main(config, tmp_path / "w", *extra)
    assert proc.returncode == 2, (extra, proc.stderr[-2000:])
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("memjax: error: "), proc.stderr[-2000:]
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "w" / "results.jsonl").exists()


def test_dry_run_prints_the_plan_without_reading_the_corpus(tmp_path, capsys):
  settings = tx.validate(load_config("text"))
  tx.dry_run(settings, str(tmp_path))
  out = capsys.readouterr().out
  assert "L1 d64 fp32: 119,744 params, 6 models" in out
  assert "total: 18 models" in out
  assert not os.listdir(tmp_path)


def test_the_memorization_figure_draws_each_shapes_own_dataset_bits(tmp_path, monkeypatch):
  # With the same-size reference every shape measures the data by its own model: one dotted line
  # a shape (a mean over shapes matched none of them); one line when all shapes agree.
  from memjax import report
  plt = report.pyplot()

  def rows_with(bits_by_d):
    return [{"status": "ok", "in_grid": True, "layers": 1, "d_model": d, "precision": "fp32",
             "dataset_size": n, "dataset_bits": bits * n, "mem_bits_oracle": 10.0 * n,
             "mem_bits_same_size": 5.0 * n, "train_loss": 1.0, "test_loss": 2.0,
             "dataset_bits_over_capacity": 0.1 * n, "mem_bits": 5.0 * n, "is_reference": False,
             "key": f"d{d}N{n}"} for d, bits in bits_by_d.items() for n in (32, 64)]

  summary = {"reference": {"primary": "same_size"}, "capacity": {"source": "measured"}}
  for bits_by_d, expected in (({16: 150.0, 32: 133.0}, {"L1 d16 fp32 dataset bits (same_size ref)":
                                                         [4800.0, 9600.0],
                                                         "L1 d32 fp32 dataset bits (same_size ref)":
                                                         [4256.0, 8512.0]}),
                              ({16: 150.0, 32: 150.0}, {"dataset bits (same_size ref)":
                                                         [4800.0, 9600.0]})):
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    tx.write_figures(rows_with(bits_by_d), summary, {}, [], str(tmp_path))
    lines = {l.get_label(): list(l.get_ydata()) for l in figures[0].axes[0].lines
             if "dataset bits" in l.get_label()}
    assert lines == expected


def test_a_rerun_without_extraction_or_top_k_leaves_no_stale_outputs(tmp_path):
  # A rerun in the same workdir that draws no extraction figure and writes no top_memorized.txt
  # must not leave the earlier run's files there: they describe results no longer reported.
  corpus = write_corpus(tmp_path / "corpus")
  config = tiny_config(corpus)
  config.sweep.d_model = (8,)
  workdir = str(tmp_path / "run")
  tx.run(tx.validate(config), workdir)
  for name in ("extraction_vs_dataset_size.png", "top_memorized.txt"):
    assert os.path.exists(os.path.join(workdir, name))
  config.extraction.prefix_lengths = ()
  config.analysis.top_k = 0
  rows, _, (trained, rescored, _) = tx.run(tx.validate(config), workdir)
  assert (trained, rescored) == (0, 3)
  assert all(r["extraction"] == {} for r in rows)
  assert not os.path.exists(os.path.join(workdir, "extraction_vs_dataset_size.png"))
  assert not os.path.exists(os.path.join(workdir, "top_memorized.txt"))
