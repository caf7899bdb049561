"""Checkpoints of a chunk's stacked training state, with orbax.

A chunk (sweep.Chunk) saves its whole stacked state, the loop step it reached and the models it
trains under <workdir>/checkpoints/<chunk id>/<step>/: every leaf of the StackState (parameters,
optimizer state, per-model step, data position, data key, saturation tracking) as a numpy array,
padding copies left out, so a checkpoint restores on any number of devices. The data position and
the data key (the only RNG) are part of the state, so training continues exactly where it stopped.

Safety against kills and bad files:
- orbax writes a step to a temporary directory and commits it at the end; a step killed
  mid-write is never listed and its leftovers are cleaned up when the chunk is opened again;
- the metadata holds a CRC32 of every leaf; a step that fails to load, or whose arrays do not
  match their checksums, is reported (a log warning), deleted and skipped for the previous one;
- the last `keep` steps are kept (2 by default), so there is a previous good one to fall back on.
"""

from __future__ import annotations

import logging as py_logging
import os
import shutil
import signal
import threading
import zlib
from typing import Sequence

import jax
import numpy as np
from absl import logging

FORMAT = 1


class _QuietOrbax(py_logging.Filter):
  """Orbax logs every save at INFO; keep its warnings, drop its chatter."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "orbax" not in (record.pathname or "")


logging.get_absl_logger().addFilter(_QuietOrbax())


def _ocp():
  import orbax.checkpoint as ocp  # imported lazily: it is slow to import
  return ocp


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
  """The checkpoints of one chunk, in `directory` (one orbax step directory per save)."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self._manager = None

  def _open(self):
    if self._manager is None:
      ocp = _ocp()
      pid = jax.process_index()
      os.makedirs(self.directory, exist_ok=True)
      # Each process checkpoints its own chunks alone: no barriers with the other processes.
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self.keep, create=False, cleanup_tmp_directories=True,
          enable_async_checkpointing=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=pid, active_processes={pid},
              barrier_sync_key_prefix=f"memjax-{pid}-{os.path.basename(self.directory)}"))
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "meta"))
    return self._manager

  def close(self):
    if self._manager is not None:
      self._manager.close()
      self._manager = None

  def exists(self) -> bool:
    return os.path.isdir(self.directory)

  def steps(self) -> list[int]:
    if not self.exists():
      return []
    return sorted(self._open().all_steps())

  def save(self, step: int, state, n_models: int, meta: dict):
    """Save the first `n_models` models of `state` at loop step `step` (replacing that step)."""
    leaves = state_to_host(state, n_models)
    manager = self._open()
    if step in manager.all_steps():
      manager.delete(step)
    meta = {**meta, "format": FORMAT, "step": step, "n_models": n_models,
            "shapes": [list(x.shape) for x in leaves], "dtypes": [str(x.dtype) for x in leaves],
            "crc32": [_checksum(x) for x in leaves]}
    ocp = _ocp()
    tree = {f"{i:04d}": x for i, x in enumerate(leaves)}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()

  def restore(self, template, n_models: int, expect: dict | None = None):
    """The newest good checkpoint as (step, leaves, meta), or None.

    `template` is a state of the same structure (its first `n_models` rows give shapes and
    dtypes); `expect` holds metadata that must match (e.g. the chunk's model keys). A step that
    cannot be read or does not match is reported, deleted, and the previous one tried.
    """
    if not self.exists():
      return None
    ocp = _ocp()
    try:
      steps = sorted(self._open().all_steps(), reverse=True)
    except Exception as e:  # the directory itself is unreadable
      logging.warning("checkpoints in %s cannot be listed (%s); starting the chunk afresh",
                      self.directory, _short(e))
      self.close()
      shutil.rmtree(self.directory, ignore_errors=True)
      return None
    wanted = []
    for x in jax.tree.leaves(template):
      spec = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
      wanted.append(np.zeros((n_models, *spec.shape[1:]), spec.dtype))
    for step in steps:
      try:
        restored = self._open().restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({f"{i:04d}": x for i, x in enumerate(wanted)}),
            meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        leaves = [np.asarray(restored["state"][f"{i:04d}"]) for i in range(len(wanted))]
        _verify(meta, leaves, wanted, step, expect)
        return step, leaves, meta
      except Exception as e:  # orbax, tensorstore, JSON and our checks all land here
        logging.warning("checkpoint %s/%d is corrupt or incomplete (%s); skipping it for the "
                        "previous one", self.directory, step, _short(e))
        self._drop(step)
    logging.warning("no usable checkpoint in %s; starting the chunk afresh", self.directory)
    return None

  def model_keys(self) -> list | None:
    """The model keys saved with the newest checkpoint (None if there is none or it cannot be
    read): which models the chunk was training, without restoring its arrays."""
    ocp = _ocp()
    try:
      step = max(self._open().all_steps())
      restored = self._open().restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return list(restored["meta"]["keys"])
    except Exception:  # noqa: BLE001 - no step, an unreadable or foreign directory
      return None
    finally:
      self.close()

  def _drop(self, step):
    self.close()
    shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)

  def delete(self):
    """Remove every checkpoint of the chunk (once its rows are written)."""
    self.close()
    shutil.rmtree(self.directory, ignore_errors=True)


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

