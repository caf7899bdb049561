"""One run of memjax a workdir (a process index) at a time.

Two runs of the same command in one workdir (a job submitted twice, a second terminal) would
train the same chunks at once, overwrite each other's checkpoints and delete them under each
other. Each process of a run therefore holds an exclusive `flock` on `<workdir>/.memjax-lock.<i>`
(i: its process index) while it runs; a second run stops at once with one line naming the
holder. The kernel drops the lock when its process ends, however it ends (SIGKILL included), so
a killed run leaves nothing to clean up. On a file system without locks (some network mounts)
the run goes on with a warning.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from absl import logging

LOCK_PREFIX = ".memjax-lock"


class WorkdirBusy(Exception):
  """Another process holds the lock."""


def lock_path(workdir: str, process_index: int = 0) -> str:
  return os.path.join(workdir, f"{LOCK_PREFIX}.{process_index}")


def hold(workdir: str, process_index: int = 0):
  """Takes the workdir's lock for this process index; returns the open lock file, which must
  stay open (referenced) as long as the run. WorkdirBusy when another run holds it."""
  path = lock_path(workdir, process_index)
  f = open(path, "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = _describe(f.read())
    f.close()
    raise WorkdirBusy(
        f"--workdir: another memjax run is using {os.path.dirname(path) or '.'} ({holder}); "
        f"wait for it to end, or give another --workdir (if that process is gone, as after a "
        f"host crash on a network file system, remove {path})") from None
  except OSError as e:  # ENOLCK and the like: no locks on this file system
    logging.warning("cannot lock %s (%s): nothing keeps a second run out of this workdir",
                    path, e)
    return f
  f.seek(0)
  f.truncate()
  f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
  f.flush()
  return f


def _describe(text: str) -> str:
  try:
    holder = json.loads(text)
    return f"process {holder['pid']} on {holder['host']}, since {holder['started']}"
  except (ValueError, TypeError, KeyError):  # not written yet, or by another version
    return "a process that has not said which"


def release(lock_file, workdir: str, process_index: int = 0) -> None:
  """Closes the lock file and removes it (for a run that stops having written nothing)."""
  try:
    os.remove(lock_path(workdir, process_index))
  except OSError:
    pass
  lock_file.close()
