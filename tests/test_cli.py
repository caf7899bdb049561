"""End-to-end runs of `python -m memjax.main`, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config=configs/capacity.py", "--config.quiet=True",
    "--config.data.vocab_size=16", "--config.data.seq_len=8",
    "--config.sweep.d_model=(8,16)", "--config.sweep.dataset_sizes=(4,32)",
    "--config.sweep.seeds=(0,1)", "--config.train.steps=60", "--config.train.steps_per_call=30",
    "--config.train.warmup_steps=5", "--config.eval.batch_size=16", "--config.eval.test_size=16",
]
ROW_FIELDS = {"layers", "d_model", "heads", "vocab_size", "seq_len", "n_params", "dataset_size",
              "seed", "precision", "steps", "train_loss", "test_loss", "data_bits", "mem_bits",
              "mem_bits_unclipped"}


def run_main(args, workdir):
  return subprocess.run([sys.executable, "-m", "memjax.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_writes_results_summary_and_figures_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(TINY, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  assert len(rows) == 2 * 2 * 2  # shapes x dataset sizes x seeds
  for r in rows:
    assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
    assert r["status"] == "ok" and r["steps"] == 60
    assert r["data_bits"] == r["dataset_size"] * 8 * 4
    assert 0 <= r["mem_bits"] <= r["dataset_size"] * 7 * 4 + 1e-6
  summary = json.loads((workdir / "summary.json").read_text())
  assert {"alpha_fit", "alpha_mean", "by_precision", "models"} <= set(summary)
  assert [m["d_model"] for m in summary["models"]] == [8, 16]
  for m in summary["models"]:
    assert m["bits_per_param"] == m["capacity_bits"] / m["n_params"] > 0
  assert "8 models trained, 0 already done" in proc.stdout
  assert "alpha (fp32)" in proc.stdout and "bits/param" in proc.stdout
  for png in ("memorization_vs_dataset_size.png", "capacity_vs_params.png"):
    assert (workdir / png).stat().st_size > 1000

  # A torn last line (a kill mid-write) is dropped; finished models are not trained again.
  with open(workdir / "results.jsonl", "a") as f:
    f.write('{"key": "half-writ')
  proc = run_main(TINY, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  assert again == rows
  assert "0 models trained, 8 already done" in proc.stdout

  # The eval settings are not part of a model's key: finished rows stay, with a warning.
  assert {r["test_size"] for r in rows} == {16}
  proc = run_main(TINY + ["--config.eval.test_size=8"], workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "0 models trained, 8 already done" in proc.stdout
  assert "scored on eval.test_size=16 held-out sequences, not 8" in proc.stderr


@pytest.mark.slow  # about 1 minute; bf16-mixed training and reporting are tested without the CLI
def test_cli_trains_mixed_and_pure_bf16_stacks_from_a_comma_list(tmp_path):
  # `--config.sweep.precisions=a,b` arrives as one string; it is split, and each precision is a
  # bucket of its own whose rows, table and alpha carry its name.
  workdir = tmp_path / "run"
  args = [a for a in TINY if not a.startswith(("--config.sweep.d_model", "--config.sweep.seeds"))]
  proc = run_main(args + ["--config.sweep.d_model=(8,)", "--config.sweep.seeds=(0,)",
                          "--config.sweep.precisions=bf16-mixed,bf16"], workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
  assert sorted((r["precision"], r["dataset_size"]) for r in rows) == [
      ("bf16", 4), ("bf16", 32), ("bf16-mixed", 4), ("bf16-mixed", 32)]
  assert len({r["n_params"] for r in rows}) == 1 and all(r["status"] == "ok" for r in rows)
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary["by_precision"]) == {"bf16", "bf16-mixed"}
  assert "alpha (bf16-mixed)" in proc.stdout and " bf16-mixed " in proc.stdout


def test_cli_bad_inputs_fail_in_one_line_before_compiling(tmp_path):
  flagfile = tmp_path / "flags.txt"
  flagfile.write_text("--config.sweep.seeds=(2,)\n")
  cases = [
      (["--config.train.stepz=3"], "config.train.stepz: unknown field"),
      (["--config.sweep.layers=(0,)"], "config.sweep.layers: must be integers in [1,"),
      (["--config.experiment=nope"], "config.experiment: must be one of capacity"),
      (["--config.data.vocab_size=2", "--config.data.seq_len=3", "--config.sweep.dataset_sizes=(9,)"],
       "config.sweep.dataset_sizes: dataset size 9 is too large"),
      (["--cpu_devices=-2"], "--cpu_devices: must be >= 0, got -2"),
      # TINY sets seeds too: ml_collections would join the two tuples into (0, 1, 2), also when
      # the second is given with one dash, with a space, or in a flagfile.
      (["--config.sweep.seeds=(2,)"], "config.sweep.seeds: overridden 2 times on the command"),
      (["-config.sweep.seeds", "(2,)"], "config.sweep.seeds: overridden 2 times on the command"),
      ([f"--flagfile={flagfile}"], "config.sweep.seeds: overridden 2 times on the command"),
      # A misspelt field after `--config PATH` (space form) is named too.
      (["--config", "configs/capacity.py", "--config.sweep.seedz=(1,)"],
       "config.sweep.seedz: unknown field; allowed here:"),
      # Precision lists written as a one-item tuple or in parentheses.
      (["--config.sweep.precisions=(bf16,fp16,)"],
       "config.sweep.precisions: must be a list of fp32, bf16, bf16-mixed, got ('bf16', 'fp16')"),
      (["--config.sweep.precisions=(fp16)"],
       "config.sweep.precisions: must be a list of fp32, bf16, bf16-mixed, got ('fp16',)"),
  ]
  for extra, needle in cases:
    # A field given in `extra` replaces TINY's (the seeds case repeats one on purpose).
    fields = {a.split("=")[0] for a in extra if a.startswith("--config.sweep.")
              and "sweep.seeds" not in a}
    proc = run_main([a for a in TINY if a.split("=")[0] not in fields] + extra, tmp_path / "w")
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines == [f"memjax: error: {lines[-1][len('memjax: error: '):]}"], proc.stderr
    assert needle in lines[0]
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("")
  proc = run_main(TINY, blocker / "sub")
  assert proc.returncode == 2 and "--workdir: cannot write to" in proc.stderr
  proc = run_main(TINY, blocker)
  assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr


def test_cli_bad_flags_and_config_files_fail_in_one_line(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n  pass\n")
  raising = tmp_path / "raising.py"
  raising.write_text("def get_config():\n  raise ValueError('no such dataset')\n")
  cases = [
      (["--config=configs/missing.py"], "--config: cannot load 'configs/missing.py': no such file"),
      ([f"--config={broken}"], "SyntaxError: invalid syntax (line 1)"),
      ([f"--config={broken}", "--config.train.steps=3"], "SyntaxError: invalid syntax (line 1)"),
      ([f"--config={raising}"], "ValueError: no such dataset"),
      ([], "--config: required"),
      (["--config=configs/"], "--config: cannot load 'configs/': a directory, not a config file"),
      (["--config=configs/capacity.py", "--bogus"], "Unknown command line flag 'bogus'"),
      (["--config=configs/capacity.py", "stray"], "unexpected arguments: stray"),
  ]
  for args, needle in cases:
    proc = run_main(args, tmp_path / "w")
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr[-2000:])
    assert lines[0].startswith("memjax: error: ") and needle in lines[0], (args, lines)


def test_cli_refuses_process_flags_for_experiments_that_do_not_split(tmp_path):
  # The pretrained experiments score in one process: with these flags every process would score
  # and write everything. The flags are refused before any process is joined.
  members = tmp_path / "members.txt"
  members.write_text("a sequence the checkpoint may have seen\n")
  proc = run_main(["--config=configs/pretrained_extraction.py",
                   f"--config.model.paths=('{os.path.join(ROOT, 'tests/data/hf/gpt2_a')}',)",
                   "--config.data.seq_len=32", "--config.extraction.prefix_lengths=(8,)",
                   f"--config.data.path={members}", "--coordinator_address=127.0.0.1:1",
                   "--num_processes=2", "--process_id=0"], tmp_path / "w")
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "experiment 'pretrained_extraction' runs in one process" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_cli_dry_run_with_process_flags_plans_without_waiting_for_the_others(tmp_path):
  # Nobody listens at the coordinator address: a dry run must not join (it would wait forever).
  proc = run_main([*TINY, "--dry_run", "--config.sweep.models_per_chunk=2",
                   "--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=1"],
                  tmp_path / "w")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "x 2 processes" in proc.stdout and "process 1 (this one)" in proc.stdout
  assert "process 0;" in proc.stdout and not (tmp_path / "w").exists()
  # with --distributed it cannot know which process it is: refused in one line
  proc = run_main([*TINY, "--dry_run", "--distributed"], tmp_path / "w")
  assert proc.returncode == 2 and "memjax: error: --dry_run, --distributed:" in proc.stderr


@pytest.mark.skipif(any(v in os.environ for v in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")),
                    reason="inside a cluster JAX can detect")
def test_cli_distributed_outside_a_cluster_fails_in_one_line(tmp_path):
  proc = run_main([*TINY, "--distributed"], tmp_path / "w")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("memjax: error: jax.distributed.initialize: ")
  assert "give --coordinator_address" in lines[0] and not (tmp_path / "w").exists()


def test_cli_expands_a_tilde_in_workdir(tmp_path):
  # "--workdir=~/x" is not expanded by the shell (the "~" is not at the start of the word): it
  # made a directory named "~" in the current directory. Here ~/taken is a file, so an expanded
  # workdir is refused.
  (tmp_path / "taken").write_text("")
  proc = subprocess.run(
      [sys.executable, "-m", "memjax.main", "--config=configs/capacity.py", "--dry_run",
       "--workdir=~/taken"], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)})
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert f"--workdir: '{tmp_path / 'taken'}' is a file" in proc.stderr


def test_cli_short_help_prints_usage_as_long_help_does():
  short, long = (subprocess.run([sys.executable, "-m", "memjax.main", flag], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
                 for flag in ("-h", "--help"))
  assert "memjax entry point" in short.stdout and "memjax: error" not in short.stderr
  assert (short.returncode, short.stdout) == (long.returncode, long.stdout)


# 4096: a chunk's first checkpoint is larger; 0: a disk full before the run starts, where the
# workdir's lock file is the first write (that was still a traceback).
@pytest.mark.parametrize("limit", [4096, 0], ids=["checkpoint", "lock_file"])
def test_a_full_disk_is_one_line(tmp_path, limit, memjax_main_under_limit):
  # A write that fails for want of space (here a file size limit: EFBIG, as ENOSPC needs a full
  # file system) was a traceback; it is one line. (A rerun continues from the files written:
  # checked by hand on a 2 MB tmpfs.)
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [*memjax_main_under_limit("RLIMIT_FSIZE", limit), *TINY, "--cpu_devices=1",
       f"--workdir={workdir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("memjax: error: a write failed") and "File too large" in lines[0]


def test_list_fields_prints_each_field_of_the_experiment_and_writes_nothing(tmp_path):
  workdir = tmp_path / "never_made"
  proc = run_main(["--config=configs/dynamics.py", "--config.train.steps=77", "--list_fields"],
                  workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0].split() == ["field", "type", "value", "allowed", "meaning"]
  by_name = {l.split()[0]: l for l in lines[1:-1]}
  from memjax.experiments import dynamics
  assert list(by_name) == [f.name for f in dynamics.SCHEMA.fields]
  assert by_name["train.steps"].split()[:3] == ["train.steps", "int", "77"]  # the override's
  assert "[1, train.steps]" in by_name["dynamics.checkpoints"]
  assert by_name["train.schedule"].split()[2:4] == ["'cosine'", "*"]  # not in the file
  assert lines[-1].startswith("* not in the config file")
  assert not workdir.exists()
