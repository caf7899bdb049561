"""The membership experiment: config validation, an end-to-end CLI run, bad input via the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from memjax.experiments import membership as me
from memjax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config=configs/membership.py", "--config.quiet=True",
    "--config.sweep.d_model=(16,)", "--config.sweep.dataset_sizes=(8,64,512,8192)",
    "--config.train.steps=200", "--config.train.warmup_steps=20",
    "--config.eval.eval_size=64", "--config.eval.bootstrap=20",
    "--config.lira.num_models=6", "--config.lira.candidates=32", "--config.lira.steps=200",
]


def _cached(settings, workdir, name, design, counts, compute, text=None):
  """A stack's rows as a run gets them: stored by an earlier run, else computed and stored."""
  stored = me.load_stored_stack(settings, workdir, name, counts, text)
  rows, part = stored or me.compute_stack(settings, workdir, name, compute, counts, text)
  design.update(part)
  return rows

def _config(**overrides):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs/membership.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field, value in overrides.items():
    section, name = field.split(".")
    config[section][name] = value
  return config


def test_default_config_validates():
  s = me.validate(_config())
  assert s.source == "synthetic" and s.lira_num_models == 8 and s.eval_size % 2 == 0


@pytest.mark.parametrize("field,value,needle", [
    ("lira.num_models", 3, "config.lira.num_models: must be 0 (no LiRA) or an even number >= 6"),
    ("lira.num_models", 4, "config.lira.num_models: must be 0 (no LiRA) or an even number >= 6"),
    ("lira.num_models", 1, "config.lira.num_models:"),
    ("eval.eval_size", 33, "config.eval.eval_size: must be even"),
    ("data.source", "web", "config.data.source: must be one of"),
    ("eval.min_k", 1.5, "config.eval.min_k:"),
    ("sweep.d_model", (15,), "config.sweep.d_model: each d_model must be divisible"),
])
def test_validate_rejects_bad_values(field, value, needle):
  with pytest.raises(ConfigError) as e:
    me.validate(_config(**{field: value}))
  assert str(e.value).startswith(needle), str(e.value)


@pytest.mark.parametrize("overrides,needle", [
    ({"data.source": "text", "data.corpus": "tfds"}, "config.data.tfds_name: data.corpus='tfds'"),
    ({"data.source": "text", "data.paths": ("a.txt",)},
     "config.data.paths: data.corpus='stdlib_docs' reads no files"),
    ({"data.paths": ("a.txt",)}, "config.data.paths: data.source='synthetic' reads no files"),
    ({"data.pool_split": "document"}, "config.data.pool_split: 'document' needs data.source="),
    ({"data.source": "text", "data.corpus": "txt", "data.paths": ("/nonexistent/a.txt",)},
     "config.data.paths: the source file '/nonexistent/a.txt' does not exist"),
])
def test_text_sources_are_checked_naming_the_field(overrides, needle):
  with pytest.raises(ConfigError) as e:
    me.validate(_config(**overrides))
  assert str(e.value).startswith(needle), str(e.value)


def test_a_tfds_corpus_gives_members_and_nonmembers_and_its_errors_name_the_field(tmp_path):
  from test_text import prepare_tiny_tfds  # pytest puts tests/ on sys.path
  letters = np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz"), (60, 56))
  docs = ["".join(row) for row in letters]  # 56 random bytes: 7 distinct 8-byte sequences each
  name = prepare_tiny_tfds(str(tmp_path / "tfds"), {"train": docs})
  text = {"data.source": "text", "data.corpus": "tfds", "data.tfds_name": name,
          "data.tfds_data_dir": str(tmp_path / "tfds"), "data.tokenizer": "bytes",
          "data.seq_len": 8, "data.train_pool": 40, "data.heldout_pool": 20,
          "data.reference_pool": 0, "sweep.dataset_sizes": (8, 32), "eval.eval_size": 16,
          "lira.candidates": 16}
  data = me.load_text(me.validate(_config(**text)), str(tmp_path / "w"))
  assert data.vocab_size == 256 and data.train_idx.size == 40 and data.heldout_idx.size == 20
  assert not set(data.train_idx) & set(data.heldout_idx)
  assert data.pools["pool_split"] == "sequence"
  assert "pool_split" not in me.validate(_config(**text)).text  # stored stacks keep their keys
  by_document = me.load_text(me.validate(_config(**text, **{"data.pool_split": "document"})),
                             str(tmp_path / "wd"))
  assert by_document.pools["pool_split"] == "document"
  assert by_document.train_idx.size == 40 and by_document.heldout_idx.size == 20
  # Each document gives 7 sequences of 8 bytes: 20 non-members come from 3 whole documents.
  summary = json.loads((tmp_path / "wd" / "text_dataset.json").read_text())
  assert summary["documents"]["heldout"] == 3 and summary["pool_split"] == "document"
  assert set(summary["heldout_overlap_with_train_pool"]) == {"span_2", "span_4"}
  assert json.loads((tmp_path / "w" / "text_dataset.json").read_text())["documents"]["heldout"] > 10
  too_many = len(data.tokens) - 20  # fits by sequence, not beside 3 whole held-out documents
  for bad, field in (({"data.tfds_split": "validation"}, "config.data.tfds_split: "),
                     ({"data.pool_split": "document", "data.train_pool": too_many},
                      "config.data.pool_split: split by document"),
                     ({"data.train_pool": 10**6}, "config.data.train_pool: "),
                     ({"data.tfds_name": "nothing_here"}, "config.data.tfds_name: ")):
    overrides = {**text, **bad, "sweep.dataset_sizes": (8,)}
    with pytest.raises(ConfigError, match="^" + field):
      me.load_text(me.validate(_config(**overrides)), str(tmp_path / "w"))


def run_main(args, workdir):
  return subprocess.run([sys.executable, "-m", "memjax.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(TINY, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  targets = [r for r in rows if r["role"] == "target"]
  lira = [r for r in rows if r["role"] == "lira_target"]
  assert [r["dataset_size"] for r in targets] == [8, 64, 512, 8192] and len(lira) == 6
  for r in targets:
    assert {"n_params", "seed", "x_tokens", "x_capacity", "capacity_bits"} <= set(r)
    assert set(r["attacks"]) == set(me.ATTACKS)
    for a in r["attacks"].values():
      assert a["valid"] and 0 <= a["auc"] <= 1 and len(a["auc_ci"]) == 2
      assert a["n_members"] == a["n_nonmembers"] == min(32, r["dataset_size"])
  # Memorized small sets are detected; far past capacity the attack falls toward chance.
  f1 = [r["attacks"]["loss"]["f1_median"] for r in targets]
  assert f1[0] > 0.9 and targets[0]["attacks"]["loss"]["auc"] > 0.95
  assert f1[-1] < 0.7 and f1[-1] < f1[0]
  # LiRA: 5 shadows per target, 2 IN and 2 OUT used for each candidate.
  for r in lira:
    assert r["num_shadow_models"] == 5 and r["shadows_per_group"] == 2
    assert all(a["valid"] for a in r["attacks"].values())
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary["law_fits"]) == {"tokens", "capacity"}
  assert summary["law_fits"]["tokens"]["n_points"] == 4
  assert summary["lira"]["targets"] == 6
  design = np.load(workdir / "design.npz")
  mat = design["lira/membership"]
  assert mat.shape == (6, 32) and (mat.sum(0) == 3).all()
  assert json.loads((workdir / "design.json").read_text())["seeds"]["lira_seed"] == 0
  for png in ("f1_vs_dataset_size.png", "roc.png", "law_fit.png"):
    assert (workdir / png).stat().st_size > 1000
  assert "law fit (x_form=tokens" in proc.stdout and "LiRA (6 targets, 5 shadows each, 2 IN + 2 OUT per candidate)" in proc.stdout
  assert "2 stacks trained, 0 already done" in proc.stdout

  # A rerun loads every stored stack: nothing trains, and the results are the same.
  proc = run_main(TINY, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "0 stacks trained, 2 already done" in proc.stdout
  again = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  assert again == rows
  assert (np.load(workdir / "design.npz")["lira/membership"] == mat).all()


def test_a_stored_stack_is_reused_and_an_unreadable_one_is_trained_again(tmp_path, caplog):
  settings = me.validate(_config())
  calls = []

  def compute(part, checkpoint_dir):
    calls.append(1)
    part["stack/members"] = np.arange(3)
    return [{"role": "target", "f1": 0.75, "_roc": {"loss": (np.array([0.1, 0.9]),
                                                             np.array([False, True]))}}]

  design = {}
  _cached(settings, str(tmp_path), "targets L1 d8", design, None, compute)
  design_again, counts = {}, {}
  second = _cached(settings, str(tmp_path), "targets L1 d8", design_again, counts,
                           compute)
  assert len(calls) == 1 and counts == {"loaded": 1}
  assert second[0]["f1"] == 0.75 and (second[0]["_roc"]["loss"][1] == [False, True]).all()
  assert (design_again["stack/members"] == design["stack/members"]).all()
  # Other settings are another stack; another shape in the sweep is not.
  wider = me.validate(_config(**{"sweep.d_model": (8, 16)}))
  _cached(wider, str(tmp_path), "targets L1 d8", {}, None, compute)
  assert len(calls) == 1
  other = me.validate(_config(**{"train.steps": 7}))
  _cached(other, str(tmp_path), "targets L1 d8", {}, None, compute)
  assert len(calls) == 2
  # A damaged file (not an npz; a truncated copy) is reported and the stack computed again.
  path = me.stack_path(settings, str(tmp_path), "targets L1 d8")
  for damaged in (b"not an npz", open(path, "rb").read()[:100]):
    with open(path, "wb") as f:
      f.write(damaged)
    counts = {}
    _cached(settings, str(tmp_path), "targets L1 d8", {}, counts, compute)
    assert counts == {"trained": 1}
  assert len(calls) == 4 and caplog.text.count("does not load") == 2


def test_a_text_stack_is_trained_again_when_the_corpus_changes(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  letters = np.random.default_rng(1).choice(list("abcdefghij"), (40, 64))
  for i, row in enumerate(letters):
    (corpus / f"{i:02d}.txt").write_text("".join(row))
  settings = me.validate(_config(**{
      "data.source": "text", "data.corpus": "txt", "data.paths": (str(corpus),),
      "data.tokenizer": "bytes", "data.seq_len": 8, "data.train_pool": 64,
      "data.heldout_pool": 32, "data.reference_pool": 0, "sweep.dataset_sizes": (8, 32),
      "eval.eval_size": 16, "lira.candidates": 16}))
  workdir = str(tmp_path / "w")
  calls = []

  def compute(part, checkpoint_dir):
    calls.append(1)
    return [{"role": "target"}]

  text = me.load_text(settings, workdir)
  _cached(settings, workdir, "targets L1 d16", {}, None, compute, text)
  _cached(settings, workdir, "targets L1 d16", {}, None, compute, me.load_text(settings,
                                                                                        workdir))
  assert len(calls) == 1  # the same corpus: the stored stack
  (corpus / "00.txt").write_text("".join(letters[0][::-1]) + "xyz")
  edited = me.load_text(settings, workdir)
  assert edited.key != text.key
  _cached(settings, workdir, "targets L1 d16", {}, None, compute, edited)
  assert len(calls) == 2  # models of the old text are not this corpus's results


def test_cli_bad_input_fails_in_one_line(tmp_path):
  # (Other bad values are covered through validate above; each CLI start costs ~10 s.)
  needle = "config.lira.num_models: must be 0 (no LiRA) or an even number >= 6"
  proc = run_main(TINY + ["--config.lira.num_models=3"], tmp_path / "w")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("memjax: error: config."), proc.stderr
  assert needle in lines[0]


def test_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, memjax_main_under_limit):
  limit = 12 * 2**30  # address space: the 228 GB batch below cannot be allocated
  proc = subprocess.run(
      [*memjax_main_under_limit("RLIMIT_AS", limit),
       *[a for a in TINY if not a.startswith(("--config.sweep.d_model", "--config.sweep.data"))],
       "--config.sweep.d_model=(256,)",
       "--config.sweep.dataset_sizes=(1024,)", "--config.train.batch_size=200000",
       "--config.lira.num_models=0", f"--workdir={tmp_path / 'w'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("memjax: error: out of device memory (")
  assert "RESOURCE_EXHAUSTED" in lines[0] or "Out of memory allocating" in lines[0]
  assert "lower train.batch_size" in lines[0]


def test_untrained_model_is_at_chance():
  """Members and held-out samples of an untrained model: AUC within 0.05 of 0.5 (512 each)."""
  import jax.numpy as jnp
  from memjax import likelihood
  from memjax.estimators import membership as mi
  from memjax.model import gpt2
  from memjax import train as train_lib
  from memjax.data import synthetic
  cfg = gpt2.ModelConfig(vocab_size=32, seq_len=16, layers=1, d_model=32, num_heads=2)
  tcfg = train_lib.TrainConfig(steps=1, batch_size=16)
  state = train_lib.init_stack_from_specs(cfg, tcfg, [train_lib.ModelSpec(512, 0, 1e-2)])
  key = state.data_key_M[0]
  params = train_lib.model_slice(state.params, 0)
  lp = lambda k: np.asarray(likelihood.token_logprobs(
      cfg, params, synthetic.sequences(k, jnp.arange(512), 16, 32)))
  mem, non = lp(synthetic.train_key(key)), lp(synthetic.test_key(key))
  y = np.r_[np.ones(512, bool), np.zeros(512, bool)]
  for fn in (mi.loss_score, mi.min_k_score):
    assert abs(mi.roc_auc(np.r_[fn(mem), fn(non)], y) - 0.5) < 0.05


def test_a_stack_is_keyed_only_by_the_settings_it_reads(tmp_path):
  settings = me.validate(_config())
  calls = []

  def compute(part, checkpoint_dir):
    calls.append(1)
    return [{"role": "target", "f1": 0.75}]

  def run(s, name):
    counts = {}
    _cached(s, str(tmp_path), name, {}, counts, compute)
    return counts

  run(settings, "targets L1 d16")
  run(settings, "lira shadows 0-7")
  assert len(calls) == 2
  # The law's capacity is read after the stacks are stored: no stack trains again for it.
  law = me.validate(_config(**{"law.bits_per_param": 3.6}))
  assert run(law, "targets L1 d16") == {"loaded": 1} and run(law, "lira shadows 0-7") == {"loaded": 1}
  # The targets do not read the LiRA settings; the shadows do not read the targets' sweep.
  lira = me.validate(_config(**{"lira.num_models": 16}))
  assert run(lira, "targets L1 d16") == {"loaded": 1} and run(lira, "lira shadows 0-7") == {
      "trained": 1}
  sweep = me.validate(_config(**{"sweep.dataset_sizes": (16, 128), "eval.min_k": 0.1}))
  assert run(sweep, "lira shadows 0-7") == {"loaded": 1} and run(sweep, "targets L1 d16") == {
      "trained": 1}
  # A stack stored under the earlier key (every setting) is still found, then kept under both.
  legacy_dir = tmp_path / "legacy"
  old = me.stack_path(settings, str(legacy_dir), "targets L1 d16", legacy=True)
  me._save_stack(old, [{"role": "target", "f1": 0.5}], {})
  counts = {}
  rows = _cached(settings, str(legacy_dir), "targets L1 d16", {}, counts, compute)
  assert counts == {"loaded": 1} and rows[0]["f1"] == 0.5
  assert os.path.exists(me.stack_path(settings, str(legacy_dir), "targets L1 d16"))


def _fake_target(n, seed, auc, mem_bits_est=None):
  attack = {"valid": True, **{m: auc for m in me.METRICS}}
  return {"role": "target", "shape": "L1 d16 fp32", "status": "ok", "n_params": 5000,
          "dataset_size": n, "seed": seed, "x_tokens": n / 10, "x_capacity": None,
          "capacity_bits": None, "capacity_source": "measured", "mem_bits_est": mem_bits_est,
          "attacks": {a: dict(attack) for a in me.ATTACKS}}


def test_report_tells_seeds_apart_and_says_why_no_capacity_law():
  settings = me.validate(_config(**{"sweep.seeds": (0, 1)}))
  rows = [_fake_target(n, s, 0.9 - n / 1e4) for s in (0, 1) for n in (8, 64, 512, 4096)]
  summary = me.summarize(settings, rows, 1.0)
  # no target has a capacity estimate (text without a reference model): the reason says so
  assert summary["law_fits"]["capacity"]["reason"].startswith("no capacity estimate")
  text = me.report_text(rows, summary)
  header, first, second = text.splitlines()[:3]
  assert header.split()[:4] == ["model", "params", "N", "seed"]
  assert first.split()[4:6] == ["8", "0"] and second.split()[4:6] == ["64", "0"]  # shape is 3 words
  assert "law fit (x_form=capacity): not valid: no capacity estimate" in text
  # estimates that are all 0 bits: a capacity of 0, not a missing reference model
  zero = [_fake_target(n, 0, 0.5, mem_bits_est=0.0) for n in (8, 64, 512, 4096)]
  assert "capacity is 0 bits" in me.summarize(settings, zero, 1.0)["law_fits"]["capacity"][
      "reason"]
  # one seed: no seed column
  one = [r for r in rows if r["seed"] == 0]
  assert me.report_text(one, me.summarize(settings, one, 1.0)).splitlines()[0].split()[:4] == [
      "model", "params", "N", "x_tok"]


@pytest.mark.slow  # a minute; tests/test_engine.py's 2-process membership run also cuts them
def test_lira_shadows_cut_into_stacks_give_the_rows_of_one_stack(tmp_path):
  # Each stack of shadows is a unit of work (another process can train it); the leave-one-out
  # attacks read the losses of all of them. On the CPU a model's floats do not depend on the
  # others in its stack, so the rows are the same.
  small = {"sweep.d_model": (8,), "sweep.dataset_sizes": (8,), "train.steps": 60,
           "eval.eval_size": 16, "eval.bootstrap": 5, "lira.num_models": 6,
           "lira.candidates": 16, "lira.steps": 60, "lira.d_model": 8, "lira.max_targets": 2}
  rows = {}
  for per_stack in (0, 2):
    settings = me.validate(_config(**small, **{"lira.models_per_stack": per_stack}))
    assert len(me.stack_units(settings, None)) == 1 + (1 if per_stack == 0 else 3)
    found, _ = me.run(settings, str(tmp_path / f"w{per_stack}"))
    rows[per_stack] = [{k: v for k, v in r.items() if not k.startswith("wall")}
                       for r in found if r["role"] == "lira_target"]
  assert len(rows[0]) == 2 and rows[0] == rows[2]
  stored = os.listdir(tmp_path / "w2" / "stacks")
  assert sorted(n.split("-")[0] for n in stored if n.startswith("lira")) == [
      "lira_shadows_0_1", "lira_shadows_2_3", "lira_shadows_4_5"]
