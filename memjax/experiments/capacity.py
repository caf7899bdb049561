"""The capacity experiment: train each chunk of the sweep as one stack, score it, write results.

A chunk trains on the engine (engine/run.py: sharded over the local devices, checkpointed as it
goes, resumed from its newest good checkpoint when the command is run again), appends its rows to
the results file when done and deletes its checkpoints. See sweep.py for the plan.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from memjax.engine import checkpoint
from memjax import config as config_lib
from memjax.engine import jsonio
from memjax.engine import params_store
from memjax.engine import run as run_lib
from memjax.estimators import memorization
from memjax.model import gpt2
from memjax import report
from memjax.engine import sweep
from memjax import train as train_lib

validate = config_lib.validate
SCHEMA = config_lib.CAPACITY_SCHEMA  # its fields (--list_fields, docs/configuration.md)


def curve_points(tcfg, count: int) -> tuple:
  """The loop steps of the convergence record: `count` log-spaced points from the first call
  boundary to train.steps, each moved up to a call boundary (where the loop can score)."""
  if not count:
    return ()
  bounds = np.array(sorted({train_lib.next_boundary(tcfg, d)
                            for d in range(0, tcfg.steps, tcfg.steps_per_call)}))
  targets = np.geomspace(bounds[0], tcfg.steps, count)
  return tuple(sorted({int(bounds[np.searchsorted(bounds, t - 1e-6)]) for t in targets}))


class Curve(run_lib.Recorder):
  """Each model's memorization (the estimator of the final rows) at the curve points, recorded
  by the train loop; kept in the chunk's checkpoints so a resumed run keeps its points."""

  def __init__(self, settings, shape, tcfg, n, saved=None):
    self.settings, self.shape, self.tcfg, self.n = settings, shape, tcfg, n
    self.points = set(curve_points(tcfg, settings.curve_steps))
    self.bits = {int(k): v for k, v in (saved or {}).get("bits", {}).items()}
    self.wall_s = (saved or {}).get("wall_s", 0.0)

  def record(self, step, state, losses_M=None):
    if step not in self.points:
      return
    start = time.time()
    mem = memorization.memorization_bits(self.shape, state, self.settings.eval_batch_size,
                                         self.tcfg.vocab_chunk)
    self.bits[step] = [float(b) for b in mem[:self.n]]
    self.wall_s += time.time() - start

  def saved(self):
    return {"bits": {str(k): v for k, v in self.bits.items()}, "wall_s": self.wall_s}

  def of_model(self, i):
    steps = sorted(self.bits)
    return {"curve_steps": steps, "curve_bits": [self.bits[s][i] for s in steps],
            "curve_wall_s_per_chunk": self.wall_s}


def _rows(settings, shape, specs, state, evaluation, wall_s, tcfg=None, curve=None):
  tcfg = tcfg or settings.train
  bits_per_token = math.log2(shape.vocab_size)
  n = len(specs)
  diverged = np.asarray(state.diverged_M)[:n]
  steps = np.asarray(state.step_M)[:n]
  if state.saturation is not None:
    saturated = np.asarray(state.saturation.saturated_step_M)[:n]
    window_mem = np.asarray(state.saturation.prev_mem_M)[:n]
  else:
    saturated = np.full(n, -1)
    window_mem = np.full(n, np.nan)
  if tcfg.wsd:
    decay_start = np.asarray(state.opt_state.hyperparams["decay_start"])[:n]
  else:
    decay_start = np.full(n, -1)
  rows = []
  for i, spec in enumerate(specs):
    n_seq = spec.dataset_size
    mem = float(evaluation["mem_bits"][i])
    rows.append({
        "experiment": "capacity",
        "key": sweep.model_key(shape, spec, tcfg),
        "layers": shape.layers, "d_model": shape.d_model, "heads": shape.num_heads,
        "vocab_size": shape.vocab_size, "seq_len": shape.seq_len, "precision": shape.precision,
        "n_params": gpt2.n_params(shape),
        "dataset_size": n_seq, "seed": spec.seed, "learning_rate": spec.learning_rate,
        "steps": int(steps[i]), "batch_size": tcfg.batch_size,
        # The step at which the model's memorization stopped growing and it was frozen; None if
        # it never did (fixed budget, or still growing at the step limit).
        "saturated_step": int(saturated[i]) if saturated[i] >= 0 else None,
        "schedule": tcfg.schedule,
        # WSD: the step its decay started (its plateau, or the latest start that ends at steps).
        "decay_start_step": int(decay_start[i]) if decay_start[i] >= 0 else None,
        # The on-device estimate that decided saturation, from the last window's training loss.
        "mem_bits_window_estimate": (float(window_mem[i]) if np.isfinite(window_mem[i])
                                     else None),
        "train_loss": float(evaluation["train_loss"][i]),
        "test_loss": float(evaluation["test_loss"][i]),
        "test_size": settings.test_size,  # held-out sequences behind test_loss
        "data_bits": n_seq * shape.seq_len * bits_per_token,
        "memorizable_bits": n_seq * (shape.seq_len - 1) * bits_per_token,
        "mem_bits": mem,
        "mem_bits_unclipped": float(evaluation["mem_bits_unclipped"][i]),
        "mem_fraction": mem / (n_seq * (shape.seq_len - 1) * bits_per_token),
        "status": "diverged" if diverged[i] else "ok",
        "train": config_lib.to_jsonable(tcfg),
        "device": jax.local_devices()[0].device_kind,
        "wall_s_per_chunk": wall_s,
        **(curve.of_model(i) if curve is not None else {}),
    })
  return rows


def run_chunk(settings, chunk: sweep.Chunk, specs, ckpt_dir, sharding, position=""):
  """Train (resuming from a checkpoint if there is one) and score the given models of a chunk.

  The chunk trains on the engine (engine.run.train_stack), padded to the bucket's one compiled
  size; the copies are dropped from the results. Returns the result rows.
  """
  shape, tcfg = chunk.shape, chunk.train or settings.train
  start = time.time()
  n = len(specs)
  keys = [sweep.model_key(shape, s, tcfg) for s in specs]
  trained = run_lib.train_stack(
      shape, tcfg, specs, ckpt_dir, keys, label=f"{position}chunk {chunk.index} ({chunk.label})",
      quiet=settings.quiet, padded_size=chunk.padded_size, sharding=sharding,
      recorder=lambda saved: Curve(settings, shape, tcfg, n, saved), meta={"chunk": chunk.index})
  state = trained.state
  max_n = max(s.dataset_size for s in specs)
  with tqdm(total=max_n, desc=f"score {position}{chunk.label} x{n}", unit="seq",
            disable=settings.quiet, leave=False) as bar:
    evaluation = memorization.evaluate_synthetic(
        shape, state, settings.eval_batch_size, settings.test_size, tcfg.vocab_chunk, bar.update)
  if settings.save_params:  # before the rows are written: a row then always has its params
    params_store.save_beside_checkpoints(ckpt_dir, keys, state.params, n)
  return _rows(settings, shape, specs, state, evaluation, time.time() - start, tcfg,
               trained.recorder)


def _process():
  return jax.process_index(), jax.process_count()


def _agreed_plan(settings, devices, pid, nproc, hours=24):
  """(plan, each chunk's model keys), the same on every process.

  Chunk c runs on process c % nproc of each process's own plan, so plans that differ (other
  local device counts or device memory, with sweep.models_per_chunk = 0) would train some models
  twice and others never. Each process publishes a digest of its plan, or the error that stopped
  it planning, in the coordination service's key-value store and reads every other's: a
  mismatch or another process's error is a ConfigError on every process, before anything trains
  (a process that failed alone would leave the others waiting for it)."""
  client = run_lib.coordination_client(nproc)
  try:
    plan = sweep.plan_chunks(settings, devices)
    chunk_keys = [[sweep.model_key(chunk.shape, s, chunk.train or settings.train)
                   for s in chunk.specs]
                  for chunk in plan.chunks]
  except config_lib.ConfigError as e:
    if client is not None:
      client.key_value_set(f"memjax/plan/{pid}", json.dumps({"error": str(e)}),
                           allow_overwrite=True)
    raise
  if client is None:
    return plan, chunk_keys
  digest = hashlib.sha256(json.dumps(chunk_keys).encode()).hexdigest()[:16]
  mine = {"digest": digest, "chunks": len(plan.chunks), "devices": plan.n_devices,
          "memory": plan.device_memory, "source": plan.memory_source}
  client.key_value_set(f"memjax/plan/{pid}", json.dumps(mine), allow_overwrite=True)
  others = [json.loads(client.blocking_key_value_get(f"memjax/plan/{i}",
                                                     int(hours * 3600 * 1000)))
            for i in range(nproc)]
  failed = [(i, o["error"]) for i, o in enumerate(others) if "error" in o]
  if failed:
    i, error = failed[0]
    raise config_lib.ConfigError(f"process {i} could not plan the sweep: {error}")
  if any(o["digest"] != digest for o in others):
    described = "; ".join(
        f"process {i}: {o['chunks']} chunks on {o['devices']} local device(s) of "
        f"{o['memory'] / 2**30:.3g} GiB ({o['source']})" for i, o in enumerate(others))
    raise config_lib.ConfigError(
        "the processes planned different chunks of the sweep, so some models would train twice "
        f"and others never ({described}); give every process the same local device count "
        "(--cpu_devices) and sweep.device_memory_gib, or set sweep.models_per_chunk")
  return plan, chunk_keys


def _warn_other_test_size(rows, test_size):
  """The evaluation settings are not part of a model's key: say so when finished rows that a
  rerun keeps were scored on another number of held-out sequences."""
  other = sorted({r["test_size"] for r in rows if r.get("test_size", test_size) != test_size})
  if other:
    logging.warning("models already in the results were scored on eval.test_size=%s held-out "
                    "sequences, not %d; their test_loss is kept as it was (a fresh --workdir "
                    "scores every model anew)", "/".join(map(str, other)), test_size)


def _cleanup_checkpoints(root, mine, live_ids, done_keys, sweep_keys=frozenset()):
  """Remove this process's chunk checkpoints whose models all have rows in the results (a kill
  between writing the rows and deleting the checkpoint leaves one). Any other checkpoint that
  no chunk of this plan continues is kept, with a warning saying why: its models are not in this
  sweep (the config changed), or they are but the plan cut them into other chunks (another
  device count or device memory); the run it came from continues it."""
  if not os.path.isdir(root):
    return
  for name in sorted(os.listdir(root)):
    if not name.startswith("chunk") or name in live_ids:
      continue
    try:
      index = int(name[5:10])
    except ValueError:
      continue
    if index not in mine:
      continue
    ckpts = checkpoint.ChunkCheckpoints(os.path.join(root, name))
    keys = ckpts.model_keys()
    if (keys is not None and set(keys) <= done_keys) or not os.listdir(ckpts.directory):
      ckpts.delete()
    elif keys is not None and set(keys) <= sweep_keys:
      logging.warning(
          "%s holds a partly trained chunk whose models this plan cuts into other chunks (were "
          "the local device count or sweep.device_memory_gib changed?): they train again from "
          "the start; to continue it, rerun on the devices it came from (sweep.models_per_chunk "
          "> 0 keeps chunks the same on any devices); it is kept until then, or delete it",
          ckpts.directory)
    else:
      logging.warning(
          "%s holds a partly trained chunk of models that this sweep does not train (was the "
          "config changed?); kept: rerun the config it came from to finish it, or delete it",
          ckpts.directory)
  try:
    os.rmdir(root)  # only when empty
  except OSError:
    pass


def run(settings: config_lib.CapacitySettings, workdir: str):
  """Run this process's chunks of the sweep, skipping models already in a results file.

  Returns (summary, number of models trained by this process now, number of models of the sweep
  already done when it started); the summary is None on a process other than 0 of a
  multi-process run (process 0 writes it).
  """
  pid, nproc = _process()
  sharding = train_lib.model_sharding()
  plan, chunk_keys = _agreed_plan(settings, list(sharding.mesh.devices.flat), pid, nproc)
  results = sweep.ResultsFile(sweep.results_path(workdir, pid, nproc))
  done_rows = sweep.read_all_rows(workdir)
  done = {r.get("key") for r in done_rows}
  ckpt_root = os.path.join(workdir, "checkpoints")
  all_keys = []
  mine = {c.index for c in plan.chunks if c.index % nproc == pid}
  work = []
  for chunk, keys in zip(plan.chunks, chunk_keys):
    all_keys.extend(keys)
    todo = [(s, k) for s, k in zip(chunk.specs, keys) if k not in done]
    if chunk.index in mine and todo:
      work.append((chunk, [s for s, _ in todo], sweep.chunk_id(chunk, [k for _, k in todo])))
  _cleanup_checkpoints(ckpt_root, mine, {w[2] for w in work}, done, set(all_keys))
  skipped = sum(len(c.specs) for c in plan.chunks if c.index in mine) - sum(
      len(w[1]) for w in work)
  if skipped:
    logging.info("%d models of this sweep are already done, skipping them", skipped)
    _warn_other_test_size(sweep.rows_for(done_rows, set(all_keys)), settings.test_size)

  trained = 0
  sweep_start = time.time()
  for i, (chunk, specs, cid) in enumerate(work):
    position = f"[{i + 1}/{len(work)}] "
    rows = run_chunk(settings, chunk, specs, os.path.join(ckpt_root, cid), sharding,
                     position)
    results.append(rows)
    checkpoint.ChunkCheckpoints(os.path.join(ckpt_root, cid)).delete()
    trained += len(rows)
    saturated = sum(r["saturated_step"] is not None for r in rows)
    wall = rows[0]["wall_s_per_chunk"]
    steps = max(r["steps"] for r in rows)
    logging.info("chunk %d %s(%s): %d models, up to %d steps, %d saturated, %d diverged, trained "
                 "and scored in %.1fs; %d of %d chunks of this process done (%.0fs)",
                 chunk.index, position, chunk.label, len(rows), steps, saturated,
                 sum(r["status"] == "diverged" for r in rows), wall, i + 1, len(work),
                 time.time() - sweep_start)
  try:
    os.rmdir(ckpt_root)
  except OSError:
    pass

  run_lib.Processes(pid, nproc).barrier("memjax: every chunk trained")
  complete = sweep.merge_results(workdir, all_keys, writer=pid)
  if not complete:
    logging.warning("results.jsonl not merged: some models of the sweep have no row yet")
  already = len(set(all_keys) & done)
  if pid != 0:
    return None, trained, already
  rows = sweep.rows_for(sweep.read_all_rows(workdir), set(all_keys))
  summary = memorization.summarize(rows)
  jsonio.write_atomic(os.path.join(workdir, "summary.json"), summary)
  report.write_capacity_figures(rows, summary, workdir)
  return summary, trained, already


def dry_run(settings, workdir, process=None):
  """Print the plan (buckets, chunks, models, memory, tokens) and train nothing. `process`:
  (index, count) from the process flags, which a dry run does not join (it would wait for every
  process); by default this process's own."""
  pid, nproc = process or _process()
  plan = sweep.plan_chunks(settings, jax.local_devices())
  done = {r.get("key") for r in sweep.read_all_rows(workdir, repair=False)}  # writes nothing
  print(sweep.format_plan(plan, settings, done, pid, nproc))


def main(settings, workdir):
  """Run and print the capacity table (the CLI's job for config.experiment = "capacity")."""
  start = time.time()
  summary, trained, skipped = run(settings, workdir)
  if summary is None:
    print(run_lib.other_process_line(trained, "models", start))
    return
  print(report.capacity_table_text(summary))
  others = "" if jax.process_count() == 1 else " (by this process)"
  print(f"{trained} models trained{others}, {skipped} already done; results in {workdir}: "
        f"results.jsonl, summary.json, figures ({time.time() - start:.0f}s)")
