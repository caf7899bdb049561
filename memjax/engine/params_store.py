"""Trained parameters of a stack in one file (`write_stack`, `read_stack`: the text experiment's
text_stacks/*.params.npz), and those of a capacity run's chunks, kept by model key
(sweep.save_params=True).

One file a finished chunk, WORKDIR/capacity_params/chunk-<hash of its keys>.params.npz, written
whole or not at all before the chunk's rows are appended to results.jsonl (so a row in the
results always has its parameters, when the option is on). It holds `keys` (the chunk's model
keys, in stack order) and one fp32 array [M, ...] a parameter leaf, named by its pytree path
(`jax.tree_util.keystr`, as every stack file of write_stack), padding copies left out.
`find` gives the file and stack index of a key; `load_model` one model's parameters.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from memjax.engine import jsonio

DIR = "capacity_params"
KEYS = "keys"


def _path(workdir, keys):
  digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
  return os.path.join(workdir, DIR, f"chunk-{digest}.params.npz")


def write_stack(path: str, params_M, n: int | None = None, **extra):
  """A stack's parameters (its first n models: not its padding) in one file, whole or not at
  all: one fp32 array [M, ...] a leaf, named by its pytree path; `extra` arrays beside them."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params_M)
  arrays = {jax.tree_util.keystr(p): np.asarray(a[:n], np.float32) for p, a in leaves}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  jsonio.savez_atomic(path, **extra, **arrays)


def read_stack(path: str, template_M):
  """The parameters write_stack stored, as jax arrays of the template's structure and dtypes
  (the template may hold any number of models)."""
  import jax.numpy as jnp
  with np.load(path) as f:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template_M)
    new = [jnp.asarray(f[jax.tree_util.keystr(p)]).astype(a.dtype) for p, a in leaves]
  return jax.tree_util.tree_unflatten(treedef, new)


def save(workdir: str, keys, params_M, n: int) -> str:
  """Writes the first n models of params_M (the chunk's own, not its padding) under their keys."""
  path = _path(workdir, list(keys))
  write_stack(path, params_M, n, **{KEYS: np.asarray(list(keys))})
  return path


def save_beside_checkpoints(ckpt_dir: str, keys, params_M, n: int) -> str:
  """`save` for a chunk whose checkpoints are in WORKDIR/checkpoints/<chunk id>."""
  return save(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir))), keys, params_M, n)


def find(workdir: str, key: str):
  """(file, index in its stack) of the model with this key, or (None, None)."""
  root = os.path.join(workdir, DIR)
  if not os.path.isdir(root):
    return None, None
  for name in sorted(os.listdir(root)):
    if not name.endswith(".params.npz"):
      continue
    try:
      with np.load(os.path.join(root, name)) as f:
        keys = [str(k) for k in f[KEYS]]
    except (OSError, KeyError, ValueError):  # a foreign or torn file: not this key's
      continue
    if key in keys:
      return os.path.join(root, name), keys.index(key)
  return None, None


def load_model(path: str, index: int, template):
  """Model `index` of the file as numpy arrays shaped like `template` (a pytree of arrays or
  ShapeDtypeStructs of one model); KeyError / IndexError / ValueError when it does not fit."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  with np.load(path) as f:
    arrays = [f[jax.tree_util.keystr(p)][index] for p, _ in leaves]
  for (p, a), x in zip(leaves, arrays):
    if x.shape != a.shape:
      raise ValueError(f"{jax.tree_util.keystr(p)} has shape {list(x.shape)}, not "
                       f"{list(a.shape)}")
  return jax.tree_util.tree_unflatten(treedef, arrays)
