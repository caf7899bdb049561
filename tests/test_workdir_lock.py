"""One memjax run a workdir at a time (memjax/engine/workdir_lock.py)."""

import os
import subprocess
import sys

import pytest

from memjax.engine import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path):
  first = workdir_lock.hold(str(tmp_path))
  with pytest.raises(workdir_lock.WorkdirBusy, match=rf"process {os.getpid()} on .*, since "):
    workdir_lock.hold(str(tmp_path))
  other_index = workdir_lock.hold(str(tmp_path), process_index=1)  # another process of a run
  first.close()  # as when the run ends, however it ends
  workdir_lock.hold(str(tmp_path)).close()
  workdir_lock.release(other_index, str(tmp_path), 1)
  assert os.listdir(tmp_path) == [".memjax-lock.0"]


def test_the_cli_refuses_a_workdir_another_run_is_using(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "results.jsonl").write_text('{"key": "x"}\n')
  held = workdir_lock.hold(str(workdir))
  proc = subprocess.run(
      [sys.executable, "-m", "memjax.main", "--config=configs/capacity.py", "--config.quiet=True",
       "--config.train.steps=20", "--config.train.warmup_steps=5", f"--workdir={workdir}"],
      cwd=ROOT, capture_output=True,
      text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("memjax: error: --workdir: another memjax run is using")
  assert (workdir / "results.jsonl").read_text() == '{"key": "x"}\n'  # nothing touched
  held.close()
