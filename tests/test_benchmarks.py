"""Smoke test of the throughput benchmark on a tiny CPU shape (the report's fields, not speed)."""

import json
import math

import jax.numpy as jnp
import pytest

from benchmarks import throughput
from memjax.model import gpt2

TINY = throughput.Preset(
    rows=(throughput.Row(1, 16, 4, (2, 4, 8), vocab_size=64, seq_len=8, heads=2, precision="fp32"),),
    scoring=(throughput.ScoreRow(64, 2, 32, 16, d_model=16, seq_len=8, heads=2,
                                 precision="fp32"),),
    steps_per_call=2, calls=1, torch_steps=2)


def test_tiny_run_reports_every_field(tmp_path, capsys, monkeypatch):
  # A stack of 4 "runs out of memory": recorded, and the sweep stops there (8 is never tried).
  real_compile_stack = throughput.compile_stack
  saved = []
  def compile_stack(cfg, tcfg, state, k):
    training = json.loads(out.read_text())["training"]  # written after the scoring rows
    if training:  # and after each stack size, before the next
      saved.append([s["models"] for s in training[-1]["stacks"]])
    if state.step_M.shape[0] >= 4:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0TiB.")
    return real_compile_stack(cfg, tcfg, state, k)
  monkeypatch.setattr(throughput, "compile_stack", compile_stack)
  out = tmp_path / "report.json"
  report = throughput.run(TINY, "tiny", out=str(out), use_torch=False)
  assert json.loads(out.read_text())["training"] == json.loads(json.dumps(report["training"]))
  assert saved == [[2]]  # before the stack of 4: the stack of 2 was already in the file
  for key in ("device", "jax", "commit", "date", "flops_formula", "training", "scoring",
              "scoring_vs_training"):
    assert key in report
  (row,) = report["training"]
  cfg = TINY.rows[0].cfg
  assert row["n_params"] == gpt2.n_params(cfg)
  assert row["flops_per_token"] == 6 * row["n_params"] + 6 * 1 * 8 * 16
  assert row["one_after_another"]["extrapolated_from"].startswith("1 model")
  assert row["torch"]["note"].startswith("skipped") and row["torch"]["tokens_per_s"] is None
  assert [s["models"] for s in row["stacks"]] == [2, 4]
  assert row["stacks"][1]["oom"] and "RESOURCE_EXHAUSTED" in row["stacks"][1]["error"]
  single_s = row["one_after_another"]["seconds_per_model_step"]
  for s in row["stacks"][:1]:
    assert s["tokens_per_s"] == pytest.approx(s["models"] * 4 * 8 / s["seconds_per_step"])
    assert s["model_steps_per_s"] == pytest.approx(s["models"] / s["seconds_per_step"])
    assert s["ratio_vs_one_after_another"] == pytest.approx(
        single_s * s["models"] / s["seconds_per_step"])
    # On a CPU: no peak FLOP/s and no device memory statistics unless given.
    assert s["mfu"] is None and s["ratio_vs_torch"] is None
    assert s["measured_peak_bytes_per_model"] is None
    # XLA's analysis of the program: at least the state (params + 2 Adam moments, fp32).
    assert s["program_bytes_per_model"] > 3 * 4 * row["n_params"]
  (score,) = report["scoring"]
  assert score["sequences_scored"] == 32 and math.isfinite(score["sequences_per_s"])
  assert score["program_bytes"] > 0 and score["measured_peak_bytes"] is None
  assert score["tokens_per_s"] == pytest.approx(score["sequences_per_s"] * 2 * 8)
  (cmp,) = report["scoring_vs_training"]
  assert cmp["ratio"] == pytest.approx(
      score["tokens_per_s"] / row["stacks"][0]["tokens_per_s"])
  printed = capsys.readouterr().out
  assert "x 1-by-1" in printed and "extrapolated from 1 model" in printed
  assert "out of memory: sweep stopped" in printed


def test_mfu_uses_the_peak_override():
  report = throughput.run(
      throughput.Preset(rows=(), scoring=TINY.scoring, steps_per_call=1, calls=1, torch_steps=1),
      "tiny", peak_override=1.0, verbose=False)
  (score,) = report["scoring"]
  flops = throughput.train_flops_per_token(TINY.scoring[0].cfg) / 3
  assert score["mfu"] == pytest.approx(score["tokens_per_s"] * flops / 1e12)


def test_peak_table_and_flops_formula():
  assert throughput.PEAK_TFLOPS["H100"]["bf16"] == 989.0
  cfg = gpt2.ModelConfig(2048, 64, 8, 256, 4, "bf16")
  assert throughput.train_flops_per_token(cfg) == 6 * 6_859_264 + 6 * 8 * 64 * 256


def test_peak_follows_the_compute_dtype_and_the_precision_and_kernel_flags_apply(monkeypatch):
  monkeypatch.setattr(throughput, "device_kind", lambda: "NVIDIA H200")
  assert [throughput.peak_tflops(p) for p in ("bf16", "bf16-mixed", "fp32")] == [989, 989, 494]
  seen = {}
  monkeypatch.setattr(throughput, "run", lambda preset, *a, **k: seen.setdefault("p", preset))
  throughput.main(["--precision=bf16-mixed", "--no_torch"])
  rows = seen["p"].rows + seen["p"].scoring
  assert rows and {r.precision for r in rows} == {"bf16-mixed"}
  assert {r.cfg.param_dtype for r in rows} == {jnp.float32}
  monkeypatch.setattr(throughput.likelihood, "KERNEL", "xla")  # restored after the test
  throughput.main(["--kernel=pallas", "--no_torch"])
  assert throughput.likelihood.KERNEL == "pallas"


def test_torch_baseline_has_the_same_parameter_count():
  pytest.importorskip("torch")
  from benchmarks import torch_gpt2
  seconds, n = torch_gpt2.time_training(64, 8, 2, 16, 2, batch_size=2, steps=1, calls=1,
                                        warmup_steps=1)
  assert n == gpt2.n_params(gpt2.ModelConfig(64, 8, 2, 16, 2)) and seconds > 0


def test_bf16_rounding_counts_the_updates_that_leave_a_parameter_unchanged():
  from benchmarks import bf16_rounding
  from memjax.model import gpt2
  from memjax import train as train_lib

  def lost(precision, lr):
    cfg = gpt2.ModelConfig(32, 8, 1, 16, 2, precision)
    tcfg = train_lib.TrainConfig(steps=10, batch_size=4, learning_rate=lr, warmup_steps=0)
    state = train_lib.init_stack_from_specs(cfg, tcfg, [train_lib.ModelSpec(8, 0, lr)])
    return bf16_rounding.lost_fraction(cfg, tcfg, state)

  # fp32 keeps every step of 1e-2; bf16 weights of ~0.02 (ulp ~1e-4) lose steps of ~1e-7 (only
  # the zero-initialized biases and LayerNorm offsets, and the LayerNorm gains of 1, can move).
  assert lost("fp32", 1e-2) < 0.01
  assert lost("bf16", 1e-7) > 0.5


def test_variant_layouts_time_the_same_training():
  from benchmarks import variants
  cfg = gpt2.ModelConfig(64, 8, 1, 16, 2, "fp32")
  for layout in ("vmap", "map", None):
    seconds, tokens_s = variants.train_row(cfg, batch=4, models=2, steps=2, calls=1,
                                           layout=layout)
    assert seconds > 0 and tokens_s == pytest.approx(2 * 4 * 8 / seconds)


@pytest.mark.parametrize("flag", ["--calls=0", "--steps_per_call=0", "--max_minutes=0",
                                  "--calls=-1", "--peak_tflops=-5", "--cpu_devices=-1",
                                  "--calls=two", "--max_minutes=nan"])
def test_throughput_flags_out_of_range_are_refused_with_the_flag(flag, capsys):
  with pytest.raises(SystemExit) as exit_info:
    throughput.main([flag])
  assert exit_info.value.code == 2
  name = flag.split("=")[0]
  assert f"argument {name}:" in capsys.readouterr().err


def test_variants_flags_and_a_bad_out_path_fail_before_any_timing(tmp_path, capsys):
  from benchmarks import variants
  for argv, words in ((["--budget_s=0"], "argument --budget_s: must be above 0"),
                      (["--calls=0"], "argument --calls: must be above 0"),
                      ([f"--out={tmp_path}/missing/v.json"], "does not exist"),
                      ([f"--out={tmp_path}"], "is a directory")):
    with pytest.raises(SystemExit):
      variants.main(argv)
    assert words in capsys.readouterr().err
  with pytest.raises(SystemExit):
    throughput.main([f"--out={tmp_path}/missing/report.json"])
  assert "does not exist" in capsys.readouterr().err


def test_a_row_whose_stacks_were_all_skipped_reports_nothing_timed(capsys):
  report = throughput.run(TINY, "tiny", use_torch=False, max_minutes=1e-9)
  (row,) = report["training"]
  assert all(s.get("skipped") for s in row["stacks"])
  assert row["one_after_another"]["tokens_per_s"] is None
  assert "one model alone: not timed" in capsys.readouterr().out


def test_score_pretrained_on_a_tiny_neox_reports_every_case(capsys):
  from benchmarks import score_pretrained as sp
  from memjax.model import gpt_neox
  cfg = gpt_neox.NeoXConfig(vocab_size=64, seq_len=32, layers=1, d_model=16, num_heads=2,
                            intermediate_size=32)
  cases = (sp.Case(8, 2), sp.Case(16, 1))
  report = sp.run(cfg, cases, models=2, rounds=1, use_torch=False)
  assert [(r["seq_len"], r["batch"], r["models"]) for r in report["cases"]] == [
      (8, 2, 2), (16, 1, 2)]
  for r in report["cases"]:
    assert r["memjax_seq_per_s"] == pytest.approx(r["batch"] / r["seconds"]["one"])
    assert r["stack_vs_loop"] == pytest.approx(r["seconds"]["loop"] / r["seconds"]["stack"])
    assert r["torch_seq_per_s"] is None and r["torch_note"].startswith("skipped")
  printed = capsys.readouterr().out
  assert "| S | batch | memjax seq/s | transformers seq/s" in printed and "| 16 | 1 |" in printed
  assert "1-minute load average" in printed and "load_avg_end" in report
  assert "cores" in report["device"] or not report["device"].startswith("cpu")


def test_score_pretrained_matches_transformers_when_installed():
  pytest.importorskip("transformers")
  pytest.importorskip("torch")
  from benchmarks import score_pretrained as sp
  from memjax.model import gpt_neox
  cfg = gpt_neox.NeoXConfig(vocab_size=64, seq_len=16, layers=2, d_model=16, num_heads=2,
                            intermediate_size=32)
  report = sp.run(cfg, (sp.Case(16, 2),), models=1, rounds=1, log=lambda _: None)
  (r,) = report["cases"]
  assert r["torch_seq_per_s"] > 0 and r["max_abs_logp2_diff"] < 1e-4


def test_score_pretrained_flags_are_checked():
  from benchmarks import score_pretrained as sp
  assert sp.parse_cases("64x16,2048x2") == sp.DEFAULT_CASES
  for bad in ("64", "1x1", "64x0", "ax8"):
    with pytest.raises(SystemExit):
      sp.main([f"--cases={bad}"])
