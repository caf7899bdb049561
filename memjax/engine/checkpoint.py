"""Checkpoints of a chunk's stacked training state, as one numpy archive a step.

A chunk (sweep.Chunk) saves its whole stacked state, the loop step it reached and the models it
trains as <workdir>/checkpoints/<chunk id>/<step>.npz: every leaf of the StackState (parameters,
optimizer state, per-model step, data position, data key, saturation tracking) as a numpy array,
padding copies left out, so a checkpoint restores on any number of devices, plus a JSON metadata
string. The data position and the data key (the only RNG) are part of the state, so training
continues exactly where it stopped.

Why not orbax: a chunk's state lives on one process, and each process of a multi-process run
checkpoints its own chunks. Orbax checkpoints are global: it writes numpy leaves and JSON items on
process 0 only and refuses host-local jax.Arrays in a multi-process run, so the chunks of the other
processes could not be restored. A process-local file needs nothing of its machinery.

Safety against kills and bad files:
- a step is written to a hidden temporary file, flushed to disk and renamed into place, so a step
  killed mid-write is never listed; leftover temporary files are removed when the chunk is opened;
- the metadata holds a CRC32 of every leaf; a step that fails to load, or whose arrays do not
  match their checksums, is reported (a log warning), deleted and skipped for the previous one;
- the last `keep` steps are kept (2 by default), so there is a previous good one to fall back on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import zlib
from typing import Sequence

import jax
import numpy as np
from absl import logging

FORMAT = 2
_STEP_FILE = re.compile(r"^(\d+)\.npz$")
_TMP_PREFIX = ".tmp-"


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def state_to_host(state, n_models: int) -> list[np.ndarray]:
  """Leaves of a stacked state as numpy arrays of the first `n_models` models (keys as data)."""
  leaves = jax.tree.leaves(state)
  leaves = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
  host = jax.device_get(leaves)
  return [np.ascontiguousarray(np.asarray(x)[:n_models]) for x in host]


def host_to_state(template, leaves: Sequence[np.ndarray], sharding=None):
  """The inverse of state_to_host: padding rows repeat the last model, placed with `sharding`."""
  template_leaves, treedef = jax.tree.flatten(template)
  if len(template_leaves) != len(leaves):
    raise ValueError(f"checkpoint has {len(leaves)} arrays, the state has {len(template_leaves)}")
  out = []
  for t, x in zip(template_leaves, leaves):
    x = np.asarray(x)
    m = t.shape[0]
    if x.shape[0] < m:
      x = np.concatenate([x, np.repeat(x[-1:], m - x.shape[0], axis=0)])
    if _is_key(t):
      x = jax.random.wrap_key_data(jax.device_put(x, sharding) if sharding else x,
                                   impl=jax.random.key_impl(t))
    elif sharding is not None:
      x = jax.device_put(x, sharding)
    else:
      x = jax.numpy.asarray(x)
    out.append(x)
  return jax.tree.unflatten(treedef, out)


def _checksum(x: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1).data)


class ChunkCheckpoints:
  """The checkpoints of one chunk, in `directory` (one <step>.npz file per save)."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self._cleaned = False

  def close(self):
    """Nothing is held open between calls; kept so callers can say when they are done."""

  def exists(self) -> bool:
    return os.path.isdir(self.directory)

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, f"{step}.npz")

  def _names(self) -> list[str]:
    if not self.exists():
      return []
    names = os.listdir(self.directory)
    if not self._cleaned:  # a save killed mid-write left its temporary file
      for name in names:
        if name.startswith(_TMP_PREFIX):
          _remove(os.path.join(self.directory, name))
      self._cleaned = True
      names = os.listdir(self.directory)
    return names

  def steps(self) -> list[int]:
    return sorted(int(m.group(1)) for m in map(_STEP_FILE.match, self._names()) if m)

  def save(self, step: int, state, n_models: int, meta: dict):
    """Save the first `n_models` models of `state` at loop step `step` (replacing that step)."""
    leaves = state_to_host(state, n_models)
    meta = {**meta, "format": FORMAT, "step": step, "n_models": n_models,
            "shapes": [list(x.shape) for x in leaves], "dtypes": [str(x.dtype) for x in leaves],
            "crc32": [_checksum(x) for x in leaves]}
    os.makedirs(self.directory, exist_ok=True)
    self._names()
    tmp = os.path.join(self.directory, f"{_TMP_PREFIX}{step}-{os.getpid()}.npz")
    # bfloat16 has no numpy file type: every leaf is stored as unsigned ints of its width.
    arrays = {f"{i:04d}": _as_uint(x) for i, x in enumerate(leaves)}
    with open(tmp, "wb") as f:
      np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self._path(step))
    _sync_directory(self.directory)
    for old in self.steps()[:-self.keep]:
      _remove(self._path(old))

  def _read_meta(self, archive) -> dict:
    return json.loads(str(archive["meta"]))

  def restore(self, template, n_models: int, expect: dict | None = None):
    """The newest good checkpoint as (step, leaves, meta), or None.

    `template` is a state of the same structure (its first `n_models` rows give shapes and
    dtypes); `expect` holds metadata that must match (e.g. the chunk's model keys). A step that
    cannot be read or does not match is reported, deleted, and the previous one tried.
    """
    try:
      steps = sorted(self.steps(), reverse=True)
    except OSError as e:  # the directory itself is unreadable
      logging.warning("checkpoints in %s cannot be listed (%s); starting the chunk afresh",
                      self.directory, _short(e))
      shutil.rmtree(self.directory, ignore_errors=True)
      return None
    if not steps:
      if any(n.isdigit() for n in self._names()):
        logging.warning("%s holds checkpoints in the orbax format of an earlier memjax, which "
                        "this version does not read; starting the chunk afresh", self.directory)
      return None
    wanted = []
    for x in jax.tree.leaves(template):
      spec = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
      wanted.append(np.zeros((n_models, *spec.shape[1:]), spec.dtype))
    for step in steps:
      try:
        with np.load(self._path(step), allow_pickle=False) as archive:
          meta = self._read_meta(archive)
          if len(meta.get("dtypes", ())) != len(wanted):
            raise ValueError(f"checkpoint has {len(meta.get('dtypes', ()))} arrays, the state "
                             f"has {len(wanted)}")
          leaves = [_from_uint(archive[f"{i:04d}"], w.dtype) for i, w in enumerate(wanted)]
        _verify(meta, leaves, wanted, step, expect)
        return step, leaves, meta
      except Exception as e:  # zip, numpy, JSON and our checks all land here
        logging.warning("checkpoint %s is corrupt or incomplete (%s); skipping it for the "
                        "previous one", self._path(step), _short(e))
        _remove(self._path(step))
    logging.warning("no usable checkpoint in %s; starting the chunk afresh", self.directory)
    return None

  def model_keys(self) -> list | None:
    """The model keys saved with the newest checkpoint (None if there is none or it cannot be
    read): which models the chunk was training, without reading its arrays."""
    try:
      with np.load(self._path(self.steps()[-1]), allow_pickle=False) as archive:
        return list(self._read_meta(archive)["keys"])
    except Exception:  # noqa: BLE001 - no step, an unreadable or foreign directory
      return None

  def delete(self):
    """Remove every checkpoint of the chunk (once its rows are written)."""
    shutil.rmtree(self.directory, ignore_errors=True)


def _as_uint(x: np.ndarray) -> np.ndarray:
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _from_uint(x: np.ndarray, dtype) -> np.ndarray:
  dtype = np.dtype(dtype)
  if x.dtype != np.dtype(f"u{dtype.itemsize}"):
    raise ValueError(f"an array stored as {x.dtype} cannot hold {dtype}")
  return x.view(dtype)


def _remove(path: str):
  try:
    os.remove(path)
  except OSError:
    pass


def _sync_directory(directory: str):
  """Make the rename durable (a crash right after it keeps the new file)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _short(e: Exception) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}"


def _verify(meta, leaves, wanted, step, expect):
  if meta.get("format") != FORMAT or meta.get("step") != step:
    raise ValueError(f"metadata of another format or step: {meta.get('format')}, "
                     f"{meta.get('step')}")
  for name, value in (expect or {}).items():
    if meta.get(name) != value:
      raise ValueError(f"metadata field {name!r} does not match this chunk")
  if len(meta.get("crc32", ())) != len(leaves):
    raise ValueError("checksums missing")
  for i, (x, w, crc) in enumerate(zip(leaves, wanted, meta["crc32"])):
    if x.shape != w.shape or x.dtype != w.dtype:
      raise ValueError(f"array {i} is {x.dtype}{list(x.shape)}, expected {w.dtype}{list(w.shape)}")
    if _checksum(x) != crc:
      raise ValueError(f"array {i} does not match its checksum")


class StopSignals:
  """Within the block, SIGTERM and SIGINT ask the training loop to stop at its next call boundary
  (it then saves a checkpoint and exits) instead of killing the process; a second signal kills it.

  Only the main thread can install signal handlers; elsewhere this does nothing.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def _handle(self, signum, frame):
    if self.signum is not None:  # a second signal: give up waiting
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      os.kill(os.getpid(), signum)
      return
    self.signum = signum
    logging.warning("signal %d: stopping at the next step boundary, after a checkpoint "
                    "(send it again to stop at once)", signum)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    return False


class Interrupted(SystemExit):
  """Raised after a checkpoint when a stop signal arrived; exits with 128 + the signal number."""

  def __init__(self, signum: int, message: str):
    super().__init__(128 + signum)
    self.message = message

