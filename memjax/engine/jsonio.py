"""JSON and npz files written whole or not at all.

Every summary and results file goes through `write_atomic`, and every array file an experiment
stores through `savez_atomic` (checkpoints have their own, `memjax.engine.checkpoint`): the file is
written to a temporary file beside the target and swapped in with os.replace, so a run killed
mid-write leaves the previous file intact instead of half a file, and a write that fails (a full
disk) leaves no temporary file. numpy scalars and arrays and dataclasses are written as plain
JSON values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import numpy as np


def default(x):
  """json.dump's `default`: numpy arrays and scalars, dataclasses."""
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  if isinstance(x, np.bool_):
    return bool(x)
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return dataclasses.asdict(x)
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


@contextlib.contextmanager
def swapped_in(path: str, tmp: str):
  """Yields `tmp` to write `path`'s new content to: swapped in for `path` when the block ends,
  removed when it fails (a full disk), so that no half file and no temporary file is left."""
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: str, value, indent: int = 2):
  # The pid keeps two processes writing the same file from sharing a temporary file.
  with swapped_in(path, f"{path}.tmp{os.getpid()}") as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(value, f, indent=indent, sort_keys=True, default=default, allow_nan=True)
      f.write("\n")


def write_lines_atomic(path: str, rows):
  """One JSON line per row (the rows of a results.jsonl), whole or not at all."""
  with swapped_in(path, f"{path}.tmp{os.getpid()}") as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, sort_keys=True, default=default, allow_nan=True) + "\n")


def savez_atomic(path: str, /, **arrays):
  """np.savez(path, **arrays), whole or not at all (see the module docstring)."""
  # One fixed name (unlike write_atomic's: no two processes write these files), so that a write
  # killed outright leaves a file the next write replaces. .npz: np.savez would append it.
  with swapped_in(path, f"{path}.tmp.npz") as tmp:
    np.savez(tmp, **arrays)
