"""Schedules for training to capacity (issue 22): cosine, WSD with a fixed decay, and
saturation-triggered freezing (cosine) or decay (WSD), on one CPU shape.

  python -m benchmarks.capacity_schedules            # L1 d16 V128 S32, N 256 and 512, ~3 min

For each mode: bits/param of each N at the step budget (the final rows' estimator), the steps
each needs to reach 95% of the best bits/param any mode reached at that N (from the convergence
record, every call boundary), the step where it was frozen, and for the saturation modes the
difference between the frozen model and the same model trained on to the limit (its mode without
saturation: cosine frozen at a plateau vs the full cosine; WSD decayed at its plateau vs WSD
decayed at the end). Not a timed test: it trains, so run it by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from memjax.estimators import memorization
from memjax.model import gpt2
from memjax import train as train_lib
from memjax.train import ModelSpec, TrainConfig


def modes(steps):
  base = TrainConfig(steps=steps, batch_size=64, learning_rate=1e-2, warmup_steps=100,
                     min_lr_ratio=0.1, steps_per_call=100)
  sat = dict(saturation_tolerance=0.01, saturation_window=100, saturation_patience=2)
  wsd = dataclasses.replace(base, schedule="wsd", decay_fraction=0.2)
  return {"cosine": base, "cosine+freeze": dataclasses.replace(base, **sat),
          "wsd": wsd, "wsd+sat-decay": dataclasses.replace(wsd, **sat)}


def run_mode(cfg, tcfg, sizes):
  """Train one stack; returns (curve steps, bits [points, M], final steps_M, wall s)."""
  state = train_lib.init_stack_from_specs(cfg, tcfg, [ModelSpec(n, i, tcfg.learning_rate)
                                                      for i, n in enumerate(sizes)])
  points, bits = [], []

  def on_call(step, st):
    points.append(step)
    bits.append(memorization.memorization_bits(cfg, st, 512, tcfg.vocab_chunk))

  start = time.time()
  state, _ = train_lib.train(cfg, tcfg, state, on_call=on_call)
  return np.array(points), np.array(bits), np.asarray(state.step_M), time.time() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--sizes", default="256,512")
  args = parser.parse_args()
  cfg = gpt2.ModelConfig(128, 32, 1, 16, 2)
  params = gpt2.n_params(cfg)
  sizes = [int(s) for s in args.sizes.split(",")]
  results = {name: run_mode(cfg, tcfg, sizes) for name, tcfg in modes(args.steps).items()}
  best = np.max([r[1][-1] for r in results.values()], axis=0)
  print(f"L1 d16 V128 S32 ({params:,} params), batch 64, lr 1e-2, budget {args.steps} steps; "
        "bits/param at the end, steps to 95% of the best mode, frozen at step")
  print(f"{'mode':>14} {'N':>5} {'bits/param':>10} {'to 95%':>7} {'frozen':>7} "
        f"{'vs limit':>9} {'wall s':>7}")
  for name, (points, bits, steps, wall) in results.items():
    for i, n in enumerate(sizes):
      reached = points[bits[:, i] >= 0.95 * best[i]]
      limit = results[name.split("+")[0]][1][-1, i] if "+" in name else None
      diff = f"{(bits[-1, i] - limit) / limit:+.2%}" if limit is not None else "-"
      print(f"{name:>14} {n:>5} {bits[-1, i] / params:>10.3f} "
            f"{reached[0] if len(reached) else '-':>7} "
            f"{steps[i] if steps[i] < args.steps else '-':>7} {diff:>9} {wall:>7.0f}")


if __name__ == "__main__":
  main()
