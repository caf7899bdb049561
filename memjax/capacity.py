"""The capacity experiment: train each bucket as one stack, score memorization, write results."""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from memjax import config as config_lib
from memjax import memorization
from memjax import model as model_lib
from memjax import report
from memjax import sweep
from memjax import train as train_lib

validate = config_lib.validate


def _rows(settings, bucket, specs, state, evaluation, wall_s):
  shape = bucket.shape
  tcfg = settings.train
  bits_per_token = math.log2(shape.vocab_size)
  diverged = np.asarray(state.diverged_M)
  steps = np.asarray(state.step_M)
  rows = []
  for i, spec in enumerate(specs):
    n = spec.dataset_size
    mem = float(evaluation["mem_bits"][i])
    rows.append({
        "experiment": "capacity",
        "key": sweep.model_key(shape, spec, tcfg),
        "layers": shape.layers, "d_model": shape.d_model, "heads": shape.num_heads,
        "vocab_size": shape.vocab_size, "seq_len": shape.seq_len, "precision": shape.precision,
        "n_params": model_lib.n_params(shape),
        "dataset_size": n, "seed": spec.seed, "learning_rate": spec.learning_rate,
        "steps": int(steps[i]), "batch_size": tcfg.batch_size,
        "train_loss": float(evaluation["train_loss"][i]),
        "test_loss": float(evaluation["test_loss"][i]),
        "data_bits": n * shape.seq_len * bits_per_token,
        "memorizable_bits": n * (shape.seq_len - 1) * bits_per_token,
        "mem_bits": mem,
        "mem_bits_unclipped": float(evaluation["mem_bits_unclipped"][i]),
        "mem_fraction": mem / (n * (shape.seq_len - 1) * bits_per_token),
        "status": "diverged" if diverged[i] else "ok",
        "train": config_lib.to_jsonable(tcfg),
        "device": jax.devices()[0].device_kind,
        "wall_s_per_bucket": wall_s,
    })
  return rows


def run_bucket(settings, bucket, specs):
  """Train the given models of a bucket together and evaluate them; returns result rows."""
  shape, tcfg = bucket.shape, settings.train
  start = time.time()
  state = train_lib.init_stack_from_specs(shape, tcfg, specs)
  label = f"L{shape.layers} d{shape.d_model} {shape.precision} x{len(specs)}"
  with tqdm(total=tcfg.steps, desc=f"train {label}", unit="step", disable=settings.quiet,
            leave=False) as bar:
    def on_chunk(k, losses_M):
      bar.update(k)
      bar.set_postfix(loss=f"{float(np.nanmean(np.asarray(losses_M))):.3f}")
    state, _ = train_lib.train(shape, tcfg, state, on_chunk)
  max_n = max(s.dataset_size for s in specs)
  with tqdm(total=max_n, desc=f"score {label}", unit="seq", disable=settings.quiet,
            leave=False) as bar:
    evaluation = memorization.evaluate_synthetic(
        shape, state, settings.eval_batch_size, settings.test_size, tcfg.vocab_chunk, bar.update)
  return _rows(settings, bucket, specs, state, evaluation, time.time() - start)


def run(settings: config_lib.CapacitySettings, workdir: str):
  """Run the sweep, skipping models already in results.jsonl.

  Returns (summary, number of models trained now, number found done).
  """
  results = sweep.ResultsFile(os.path.join(workdir, "results.jsonl"))
  done = results.done_keys()
  buckets = sweep.plan(settings)
  all_keys = set()
  trained = 0
  for bucket in buckets:
    keys = [sweep.model_key(bucket.shape, s, settings.train) for s in bucket.specs]
    all_keys.update(keys)
    todo = [s for s, k in zip(bucket.specs, keys) if k not in done]
    shape = bucket.shape
    if not todo:
      logging.info("L%d d%d %s: all %d models done, skipping", shape.layers, shape.d_model,
                   shape.precision, len(keys))
      continue
    rows = run_bucket(settings, bucket, todo)
    results.append(rows)
    trained += len(rows)
    wall = rows[0]["wall_s_per_bucket"]
    logging.info("L%d d%d %s: %d models trained and scored in %.1fs", shape.layers,
                 shape.d_model, shape.precision, len(rows), wall)
  rows = sweep.rows_for(results.read(), all_keys)
  summary = memorization.summarize(rows)
  sweep.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  report.write_capacity_figures(rows, summary, workdir)
  return summary, trained, len(all_keys) - trained


def main(settings, workdir):
  """Run and print the capacity table (the CLI's job for config.experiment = "capacity")."""
  start = time.time()
  summary, trained, skipped = run(settings, workdir)
  print(report.capacity_table_text(summary))
  print(f"{trained} models trained, {skipped} already done; results in {workdir}: "
        f"results.jsonl, summary.json, figures ({time.time() - start:.0f}s)")
