"""Sweep plan (grid -> buckets of same-shape models) and the resumable results file."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from typing import Iterable, Sequence

from absl import logging

from memjax import config as config_lib
from memjax import model as model_lib
from memjax.train import ModelSpec, TrainConfig


@dataclasses.dataclass(frozen=True)
class Bucket:
  """Models of one shape and precision: they train together in one compiled program."""
  shape: model_lib.ModelConfig
  specs: tuple  # of ModelSpec


def plan(settings: config_lib.CapacitySettings) -> list[Bucket]:
  lrs = settings.learning_rates or (settings.train.learning_rate,)
  buckets = []
  for shape in config_lib.model_shapes(settings):
    sizes = config_lib.dataset_sizes_for(settings, shape)
    specs = tuple(ModelSpec(n, seed, lr) for n, seed, lr in itertools.product(sizes, settings.seeds, lrs))
    buckets.append(Bucket(shape, specs))
  return buckets


def model_key(shape: model_lib.ModelConfig, spec: ModelSpec, tcfg: TrainConfig, extra=()) -> str:
  """A stable id of everything that determines a trained model, for skipping finished work."""
  identity = {"shape": dataclasses.asdict(shape), "spec": dataclasses.asdict(spec),
              "train": dataclasses.asdict(tcfg), "extra": list(extra)}
  # steps_per_call only changes how steps are dispatched, not the result.
  identity["train"].pop("steps_per_call")
  blob = json.dumps(identity, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


class ResultsFile:
  """results.jsonl: one JSON object a line, appended whole, read back tolerating a torn tail.

  A process killed mid-write can leave a last line without its newline; reading drops it (with a
  warning) and truncates the file to the last complete line, so later appends stay valid.
  """

  def __init__(self, path: str):
    self.path = path

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
      logging.warning("%s: dropping a half-written last line (%d bytes)", self.path,
                      len(data) - len(complete))
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))
    rows = []
    for i, line in enumerate(complete.splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          logging.warning("%s:%d: skipping a line that is not JSON", self.path, i)
    return rows

  def done_keys(self) -> set:
    return {row.get("key") for row in self.read()}

  def append(self, rows: Sequence[dict]):
    """Append rows in one write, then fsync, so a kill leaves whole lines or a torn tail."""
    if not rows:
      return
    blob = "".join(json.dumps(r, sort_keys=True, allow_nan=True) + "\n" for r in rows).encode()
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, blob)
      os.fsync(fd)
    finally:
      os.close(fd)


def write_json_atomic(path: str, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, allow_nan=True)
    f.write("\n")
  os.replace(tmp, path)


def rows_for(rows: Iterable[dict], keys: set) -> list[dict]:
  """The rows of this sweep (a workdir may also hold rows of earlier, different sweeps)."""
  latest = {}
  for row in rows:
    if row.get("key") in keys:
      latest[row["key"]] = row
  return list(latest.values())
