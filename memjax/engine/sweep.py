"""Sweep plan (grid -> buckets -> chunks), memory estimates, results files, processes.

A sweep config expands into buckets of same-shape models (one compiled program each); a bucket is
split into chunks of models that fit the device memory together (`plan_chunks`). A chunk is the
unit of work: it trains as one stack sharded over the local devices, is checkpointed on its own,
and appends its rows to the results file when it finishes. With several processes
(`jax.distributed`), chunk i belongs to process i % process_count; each process appends to its
own results.<process>.jsonl and results.jsonl is merged from them once every model is present.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np
from absl import logging

from memjax import config as config_lib
from memjax.model import gpt2
from memjax.train import ModelSpec, TrainConfig, drop_fields_at_old_behaviour


@dataclasses.dataclass(frozen=True)
class Bucket:
  """Models of one shape and precision: they train together in one compiled program."""
  shape: gpt2.ModelConfig
  specs: tuple  # of ModelSpec
  train: TrainConfig | None = None  # the bucket's own (its batch size); None: settings.train


def bucket_train(settings, dataset_size: int) -> TrainConfig:
  """The train config a model of N = dataset_size trains under: train.batch_fraction sets its
  batch (TrainConfig.batch_for), and a stack shares one compiled batch."""
  tcfg = settings.train
  return dataclasses.replace(tcfg, batch_size=tcfg.batch_for(dataset_size))


def plan(settings: config_lib.CapacitySettings) -> list[Bucket]:
  """One bucket a shape, split by batch size when train.batch_fraction makes it depend on N."""
  lrs = settings.learning_rates or (settings.train.learning_rate,)
  buckets = []
  for shape in config_lib.model_shapes(settings):
    sizes = config_lib.dataset_sizes_for(settings, shape)
    by_batch = {}
    for n in sizes:
      by_batch.setdefault(settings.train.batch_for(n), []).append(n)
    for batch, group in by_batch.items():
      specs = tuple(ModelSpec(n, seed, lr)
                    for n, seed, lr in itertools.product(group, settings.seeds, lrs))
      buckets.append(Bucket(shape, specs, bucket_train(settings, group[0])))
  return buckets


def model_key(shape: gpt2.ModelConfig, spec: ModelSpec, tcfg: TrainConfig, extra=()) -> str:
  """A stable id of everything that determines a trained model, for skipping finished work."""
  identity = {"shape": dataclasses.asdict(shape), "spec": dataclasses.asdict(spec),
              "train": dataclasses.asdict(tcfg), "extra": list(extra)}
  # The model trains at its spec's rate: train.learning_rate is only the default rate of a sweep
  # without sweep.learning_rates (where the two are equal, so those keys are unchanged).
  identity["train"]["learning_rate"] = spec.learning_rate
  # steps_per_call only changes how steps are dispatched, not the result.
  identity["train"].pop("steps_per_call")
  # Nor does how often it is checkpointed.
  identity["train"].pop("checkpoint_every", None)
  # With a fixed step budget the saturation settings do nothing: leave them out, so keys of
  # fixed-budget runs are the same as before saturation existed.
  if not identity["train"].get("saturation_tolerance"):
    for name in ("saturation_tolerance", "saturation_window", "saturation_patience"):
      identity["train"].pop(name, None)
  # Nor do the fields added later, at the values that train as before they existed.
  drop_fields_at_old_behaviour(identity["train"])
  blob = json.dumps(identity, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


class ResultsFile:
  """results.jsonl: one JSON object a line, appended whole, read back tolerating a torn tail.

  A process killed mid-write can leave a last line without its newline; reading drops it (with a
  warning) and truncates the file to the last complete line, so later appends stay valid.
  """

  def __init__(self, path: str):
    self.path = path

  def read(self, repair: bool = True) -> list[dict]:
    """The complete rows; `repair=False` (a dry run) leaves a torn tail in the file, which a
    live run may still be writing."""
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data) and repair:
      logging.warning("%s: dropping a half-written last line (%d bytes)", self.path,
                      len(data) - len(complete))
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))
    rows = []
    for i, line in enumerate(complete.splitlines(), 1):
      if line.strip():
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          row = None
        if isinstance(row, dict):  # a damaged line can still parse, e.g. as a number or null
          rows.append(row)
        else:
          logging.warning("%s:%d: skipping a line that is not a JSON object", self.path, i)
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
      # os.write may write only part of the blob (a disk filling up): write the rest, so a full
      # disk raises here (keeping the chunk's checkpoint) instead of leaving rows torn off.
      view = memoryview(blob)
      while view:
        view = view[os.write(fd, view):]
      os.fsync(fd)
    finally:
      os.close(fd)


def rows_for(rows: Iterable[dict], keys: set) -> list[dict]:
  """The rows of this sweep (a workdir may also hold rows of earlier, different sweeps)."""
  latest = {}
  for row in rows:
    if row.get("key") in keys:
      latest[row["key"]] = row
  return list(latest.values())


# ---------------------------------------------------------------------------------------------
# Memory estimate and chunks.

# Bytes assumed for one device's chunk when the device does not report its memory (the CPU) and
# sweep.device_memory_gib is 0; shared by the process's local devices.
DEFAULT_CPU_MEMORY_GIB = 4.0
# k: activation values per token, per layer and per d_model kept for the backward pass of one
# block (LayerNorm outputs 2d, q/k/v 3d, attention output d, residuals 2d, MLP in/out 4d + 4d).
ACTIVATION_FLOATS_PER_LAYER = 16
# Only this fraction of a device's memory is planned for; the rest is left to XLA's workspace,
# fragmentation and the estimate's errors.
MEMORY_HEADROOM = 0.85


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes one model of a stack needs on its device: a simple, documented upper estimate.

  - state: parameters, gradients and Adam's two moments, all in the parameter dtype (4 copies),
    and for mixed precision the parameters' copy in the compute dtype;
  - activations: B*S*(layers*k*d) values in the compute dtype (k = ACTIVATION_FLOATS_PER_LAYER),
    plus the fp32 attention scores and probabilities, B*heads*S*S per layer;
  - likelihood: the kernel's [B*S, vocab_chunk] fp32 logits chunk and its exponentials (2 x);
  - eval: scoring eval.batch_size sequences (forward only) while the state stays resident.
  A model needs state + max(activations + likelihood, eval).
  """
  state: int
  activations: int
  likelihood: int
  eval: int

  @property
  def total(self) -> int:
    return self.state + max(self.activations + self.likelihood, self.eval)

  def dominant_field(self) -> str:
    """The config field that would shrink the largest term."""
    parts = {"state": self.state, "activations": self.activations,
             "likelihood": self.likelihood, "eval": self.eval}
    return {"state": "sweep.d_model", "activations": "train.batch_size",
            "likelihood": "train.vocab_chunk", "eval": "eval.batch_size"}[max(parts, key=parts.get)]


def model_memory(shape: gpt2.ModelConfig, tcfg: TrainConfig,
                 eval_batch: int) -> MemoryEstimate:
  nbytes = np.dtype(shape.dtype).itemsize  # activations
  param_bytes = np.dtype(shape.param_dtype).itemsize
  b, s, d, l, h = tcfg.batch_size, shape.seq_len, shape.d_model, shape.layers, shape.num_heads
  chunk = min(tcfg.vocab_chunk, shape.vocab_size)
  n = gpt2.n_params(shape)
  # Mixed precision also holds the parameters' compute-dtype copy while a step runs.
  state = 4 * n * param_bytes + (n * nbytes if nbytes != param_bytes else 0)
  attention = l * b * h * s * s * (4 + nbytes)
  activations = b * s * l * ACTIVATION_FLOATS_PER_LAYER * d * nbytes + attention
  likelihood = 2 * b * s * chunk * 4
  eval_bytes = (eval_batch * s * 8 * d * nbytes + eval_batch * h * s * s * (4 + nbytes)
                + 2 * eval_batch * s * chunk * 4)
  return MemoryEstimate(state=state, activations=activations, likelihood=likelihood,
                        eval=eval_bytes)


def device_memory_bytes(device_memory_gib: float, devices) -> tuple[int, str]:
  """Memory one device may use for a chunk, and where that number comes from."""
  if device_memory_gib > 0:
    return int(device_memory_gib * 2**30), "sweep.device_memory_gib"
  try:
    stats = devices[0].memory_stats()
  except Exception:  # some backends do not implement it
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{devices[0].platform} bytes_limit"
  share = DEFAULT_CPU_MEMORY_GIB / len(devices)
  return int(share * 2**30), (f"default {DEFAULT_CPU_MEMORY_GIB:g} GiB shared by {len(devices)} "
                              "device(s); set sweep.device_memory_gib")


def models_per_device(shape, tcfg: TrainConfig, eval_batch: int, budget: int) -> int:
  """How many models of `shape` fit a device of `budget` bytes together (0: not even one)."""
  return int(budget * MEMORY_HEADROOM // model_memory(shape, tcfg, eval_batch).total)


def models_that_fit(shape, tcfg: TrainConfig, eval_batch: int, devices) -> int:
  """How many models of `shape` fit the local `devices` together, by the estimate (at least 1:
  a model that does not fit fails with the out-of-memory line when it trains)."""
  budget, _ = device_memory_bytes(0.0, devices)
  return max(1, models_per_device(shape, tcfg, eval_batch, budget)) * len(devices)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Models of one bucket trained together: the unit of work, checkpointing and results."""
  index: int  # over the whole sweep; process index % process_count runs it
  bucket: int
  shape: gpt2.ModelConfig
  specs: tuple  # of ModelSpec
  padded_size: int  # models on the devices: specs, then copies of the last one
  memory: MemoryEstimate  # one model
  train: TrainConfig | None = None  # the bucket's train config (its batch size)

  @property
  def label(self) -> str:
    s = self.shape
    return f"L{s.layers} d{s.d_model} {s.precision}"


@dataclasses.dataclass(frozen=True)
class Plan:
  buckets: list
  chunks: list
  n_devices: int
  device_memory: int
  memory_source: str


def _pad(n, multiple):
  return -(-n // multiple) * multiple


def _gib(n):
  if n >= 2**28:
    return f"{n / 2**30:.2f} GiB"
  return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def plan_chunks(settings, devices, buckets=None) -> Plan:
  """Split every bucket into chunks that fit `devices` (the local devices of this process).

  The chunk size is `sweep.models_per_chunk` if set, else as many models as fit: the usable memory
  of a device (MEMORY_HEADROOM of its limit) over one model's estimate, times the device count.
  A bucket of M models is cut into ceil(M / size) chunks whose sizes differ by at most one, all
  padded to the same multiple of the device count (one compile serves them all). Raises
  ConfigError, naming the field to change, when not even one model fits a device.
  """
  buckets = plan(settings) if buckets is None else buckets
  n_dev = len(devices)
  budget, source = device_memory_bytes(settings.device_memory_gib, devices)
  chunks = []
  for b, bucket in enumerate(buckets):
    tcfg = bucket.train or settings.train
    mem = model_memory(bucket.shape, tcfg, settings.eval_batch_size)
    per_device = models_per_device(bucket.shape, tcfg, settings.eval_batch_size, budget)
    if per_device < 1:
      field = mem.dominant_field()
      raise config_lib.ConfigError(
          f"config.{field}: one L{bucket.shape.layers} d{bucket.shape.d_model} "
          f"{bucket.shape.precision} model needs about {_gib(mem.total)} (optimizer state "
          f"{_gib(mem.state)}, activations {_gib(mem.activations)}, likelihood chunk "
          f"{_gib(mem.likelihood)}, scoring {_gib(mem.eval)}) but a device offers "
          f"{_gib(budget * MEMORY_HEADROOM)} ({MEMORY_HEADROOM:.0%} of {_gib(budget)}, {source}); "
          f"lower {field} or raise sweep.device_memory_gib")
    if settings.models_per_chunk:
      size = settings.models_per_chunk
      if _pad(size, n_dev) // n_dev > per_device:
        logging.warning("sweep.models_per_chunk=%d puts %d models on a device, but only about "
                        "%d L%d d%d %s models fit its %s by the estimate", size,
                        _pad(size, n_dev) // n_dev, per_device, bucket.shape.layers,
                        bucket.shape.d_model, bucket.shape.precision, _gib(budget))
    else:
      size = per_device * n_dev
    m = len(bucket.specs)
    n_chunks = -(-m // size)
    base, extra = divmod(m, n_chunks)
    padded = _pad(base + (extra > 0), n_dev)  # one size for all chunks of a bucket: one compile
    start = 0
    for c in range(n_chunks):
      count = base + (c < extra)
      chunks.append(Chunk(index=len(chunks), bucket=b, shape=bucket.shape,
                          specs=tuple(bucket.specs[start:start + count]), padded_size=padded,
                          memory=mem, train=tcfg))
      start += count
  return Plan(buckets=buckets, chunks=chunks, n_devices=n_dev, device_memory=budget,
              memory_source=source)


def chunk_id(chunk: Chunk, keys: Sequence[str]) -> str:
  """Directory name of a chunk's checkpoints: its index and a digest of the models it trains."""
  digest = hashlib.sha256(",".join(keys).encode()).hexdigest()[:12]
  return f"chunk{chunk.index:05d}-{digest}"


def _count(n: int, word: str, plural: str | None = None) -> str:
  return f"{n:,} {word if n == 1 else plural or word + 's'}"


def format_plan(plan_: Plan, settings, done_keys=frozenset(), process_index=0,
                process_count=1) -> str:
  """The --dry_run report: buckets, chunks, models, memory and tokens."""
  tcfg = settings.train
  largest_batch = tcfg.batch_max if tcfg.batch_fraction else tcfg.batch_size
  tokens_per_model = tcfg.steps * largest_batch * settings.seq_len
  n_models = sum(len(c.specs) for c in plan_.chunks)
  lines = [f"plan: {_count(len(plan_.buckets), 'bucket')}, {_count(len(plan_.chunks), 'chunk')}, "
           f"{_count(n_models, 'model')} on {_count(plan_.n_devices, 'device')} a process x "
           f"{_count(process_count, 'process', 'processes')}; "
           f"{_gib(plan_.device_memory)} a device ({plan_.memory_source})"]
  mode = (f"until saturated (tolerance {tcfg.saturation_tolerance:g} over windows of "
          f"{tcfg.saturation_window} steps), at most {tcfg.steps:,} steps" if tcfg.saturation
          else f"a fixed {tcfg.steps:,} steps")
  batch = (f"{tcfg.batch_fraction:g} of N ({tcfg.batch_min}..{tcfg.batch_max})"
           if tcfg.batch_fraction else f"{tcfg.batch_size}")
  lines.append(f"training: {mode}, {tcfg.schedule} schedule, {batch} sequences of "
               f"{settings.seq_len} tokens a step, so at most {tokens_per_model:,} tokens a model")
  total_tokens = 0
  todo_models = 0
  for b, bucket in enumerate(plan_.buckets):
    chunks = [c for c in plan_.chunks if c.bucket == b]
    mem = chunks[0].memory
    lines.append(f"bucket {b}: {chunks[0].label}, {gpt2.n_params(bucket.shape):,} params, "
                 f"{_count(len(bucket.specs), 'model')} in {_count(len(chunks), 'chunk')}; one "
                 f"model ~"
                 f"{_gib(mem.total)} (optimizer state {_gib(mem.state)}, activations "
                 f"{_gib(mem.activations)}, likelihood {_gib(mem.likelihood)}, scoring "
                 f"{_gib(mem.eval)})")
    for c in chunks:
      ctcfg = c.train or tcfg
      keys = [model_key(c.shape, s, ctcfg) for s in c.specs]
      chunk_tokens = ctcfg.steps * ctcfg.batch_size * settings.seq_len
      todo = sum(k not in done_keys for k in keys)
      per_device = c.padded_size // plan_.n_devices
      sizes = sorted({s.dataset_size for s in c.specs})
      owner = c.index % process_count
      status = "done" if not todo else (f"{todo} to train" if todo < len(keys) else "to train")
      lines.append(
          f"  chunk {c.index}: {_count(len(c.specs), 'model')} (padded to {c.padded_size}, "
          f"{per_device} a device, ~{_gib(per_device * mem.total)} a device), N "
          f"{sizes[0]:,}{f'..{sizes[-1]:,}' if len(sizes) > 1 else ''}, "
          f"batch {ctcfg.batch_size}, {c.padded_size * chunk_tokens:,} tokens at most; process "
          f"{owner}"
          f"{' (this one)' if owner == process_index and process_count > 1 else ''}; {status}")
      if todo:
        total_tokens += c.padded_size * chunk_tokens
        todo_models += todo
  lines.append(f"total: {todo_models} of {_count(n_models, 'model')} to train, at most "
               f"{total_tokens:,} "
               "tokens (fewer when models saturate)")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Results files of several processes.

def results_path(workdir: str, process_index: int = 0, process_count: int = 1) -> str:
  """Where this process appends rows: results.jsonl alone, results.<process>.jsonl with several."""
  if process_count == 1:
    return os.path.join(workdir, "results.jsonl")
  return os.path.join(workdir, f"results.{process_index}.jsonl")


def result_files(workdir: str) -> list[str]:
  """results.jsonl and every per-process results.<i>.jsonl in the workdir."""
  # Only numbered files: a user's copy such as results.bak.jsonl is not read as results.
  per_process = sorted((p for p in glob.glob(os.path.join(workdir, "results.*.jsonl"))
                        if re.fullmatch(r"results\.\d+\.jsonl", os.path.basename(p))),
                       key=lambda p: (len(p), p))
  return [os.path.join(workdir, "results.jsonl")] + per_process


def read_all_rows(workdir: str, repair: bool = True) -> list[dict]:
  rows = []
  for path in result_files(workdir):
    rows.extend(ResultsFile(path).read(repair))
  return rows


def merge_results(workdir: str, keys_in_order: Sequence[str], writer: int = 0) -> bool:
  """Write results.jsonl with every row of this sweep once, if all are present.

  Rows already in results.jsonl keep their place; missing rows of the sweep are added from the
  per-process files in plan order. Written to a temporary file and renamed, so a reader never sees
  a partial file; several processes may merge at once (the content is the same).
  Returns True when every key of the sweep is in results.jsonl afterwards.
  """
  main_path = os.path.join(workdir, "results.jsonl")
  existing = ResultsFile(main_path).read()
  have = {r.get("key") for r in existing}
  wanted = [k for k in keys_in_order if k not in have]
  if not wanted:
    return True
  found = {}
  for path in result_files(workdir)[1:]:
    for row in ResultsFile(path).read():
      found.setdefault(row.get("key"), row)
  if any(k not in found for k in wanted):
    return False
  rows = existing + [found[k] for k in wanted]
  blob = "".join(json.dumps(r, sort_keys=True, allow_nan=True) + "\n" for r in rows)
  tmp = f"{main_path}.merge{writer}.tmp"
  with open(tmp, "w") as f:
    f.write(blob)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, main_path)
  return True


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           auto=False) -> bool:
  """jax.distributed.initialize() for a multi-process run; returns whether it was called.

  Explicit flags win; `auto` lets JAX detect the cluster (SLURM, Open MPI, ...). Nothing is
  detected without it: a process started by hand inside a SLURM allocation stays single.
  """
  import jax
  explicit = coordinator_address is not None or num_processes is not None
  if not (explicit or auto):
    return False
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d, %d local device(s)", jax.process_index(),
               jax.process_count(), jax.local_device_count())
  return True
