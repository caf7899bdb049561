"""Training and scoring throughput of memjax stacks against the alternatives, in one run.

For each training row (model shape, sequences per model per step) it times:
  a. a stack of M models in one memjax program (`train.train_steps`), M swept upwards until
     memory runs out (the out-of-memory error is caught, recorded and ends that sweep). The stack
     is sharded over the local devices as `memjax.experiments.capacity` shards a chunk; on a CPU
     the host is split into one device per core (`--cpu_devices`, as `memjax.main` does), and the
     same stack on one device is timed too, so that the report shows what the sharding adds;
  b. the same M models one after another through memjax's single-model path
     (`train.train_steps_single`): ONE model is timed and its time multiplied by M. The models of
     a row are identical in cost, so this extrapolation is exact up to timing noise; the report
     says so (`one_after_another: {"extrapolated_from": "1 model, time x M"}`);
  c. a plain PyTorch GPT-2 loop, one model at a time (benchmarks/torch_gpt2.py: same
     parameterization, batch and AdamW; bf16 autocast on CUDA), likewise timed on one model and
     multiplied by M; skipped with a message when torch is not installed.
It reports training tokens/s and model-steps/s of each, the ratios a/b and a/c, MFU and the peak
device memory per model. Scoring rows time `likelihood.shared_token_logprobs` (every model of a
stack scores the same sequences) and report sequences/s, model-tokens/s and peak memory.

FLOPs (for MFU), per trained token: 6 * n_params + 6 * L * S * d. The first term is the dense
matmuls forward and backward, the tied output projection included (wte counted once; the
embedding lookups are not matmuls but their V*d + S*d parameters are counted anyway, as usual);
the second is the attention score (QK^T) and value (AV) matmuls forward and backward,
2 * 2 * S * d a layer forward, times 3 for forward + backward, halved for the causal mask.
A scored token costs a third of that (forward only). MFU = tokens/s * FLOPs per token / peak,
the peak being the device's dense bf16 tensor-core rate for bf16 models and TF32 for fp32 ones
(JAX's default fp32 matmul precision on these GPUs); `--peak_tflops` overrides it, and on a CPU
MFU is n/a unless given. Memory per model (`GiB/model`, JSON `program_bytes_per_model`) is
XLA's analysis of the compiled stack program (`compiled.memory_analysis()`: arguments + outputs + temporaries, less the donated
buffers that outputs reuse), per device, times the devices, over M: the program's own need,
whatever ran before it. The measured `device.memory_stats()["peak_bytes_in_use"]` is reported
beside it (`measured_peak_bytes_per_model`) only when this stack raised the process's peak (a
process-wide maximum that JAX cannot reset: after a larger program it says nothing); n/a on a
CPU.

Timing: every measured function is called once to compile and warm up; then, for each stack
size, `calls` rounds each time one call (`steps_per_call` fused steps, `block_until_ready`) of
the stack, of the single-model path and of the PyTorch loop, interleaved so that all three see
the same load on a shared machine. Each reports its best call; the single-model and PyTorch
figures are their best over every round of the row. Scoring rows run first, then the training
rows (`--max_minutes` counts from the first training row); the JSON is written after every stack
size and scoring row, so a run cut short keeps what it measured.

  python -m benchmarks.throughput                       # small CPU default (2-3 minutes)
  python -m benchmarks.throughput --gpu --out gpu.json  # the issue-8 GPU preset (~5 min, H100)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp

from memjax.engine import devices as devices_lib
from memjax import likelihood
from memjax.model import gpt2
from memjax import train as train_lib

# Dense peak TFLOP/s by device kind (matched as a substring of jax's device_kind) and precision:
# bf16 on tensor cores, fp32 as TF32 on tensor cores (plain fp32 FMA: about 67 on both).
PEAK_TFLOPS = {  # the first name found in the device kind wins: the specific parts first
    "H100 PCIe": {"bf16": 756.0, "fp32": 378.0},
    "H100 NVL": {"bf16": 835.0, "fp32": 418.0},
    "H100": {"bf16": 989.0, "fp32": 494.0},  # H100 SXM ("NVIDIA H100 80GB HBM3")
    "H200": {"bf16": 989.0, "fp32": 494.0},  # same compute as H100 SXM, more and faster memory
}


@dataclasses.dataclass(frozen=True)
class Row:
  """A training row: one model shape, one per-model batch, the stack sizes to sweep."""
  layers: int
  d_model: int
  batch_size: int  # sequences per model per step
  stack_sizes: tuple
  vocab_size: int = 2048
  seq_len: int = 64
  heads: int = 4
  precision: str = "bf16"

  @property
  def cfg(self):
    return gpt2.ModelConfig(self.vocab_size, self.seq_len, self.layers, self.d_model,
                                 self.heads, self.precision)

  @property
  def label(self):
    return f"L{self.layers} d{self.d_model} V{self.vocab_size} {self.precision}"


@dataclasses.dataclass(frozen=True)
class ScoreRow:
  """A scoring row: M models of one shape score `sequences` sequences, `batch` a call."""
  vocab_size: int
  models: int
  sequences: int
  batch: int
  layers: int = 1
  d_model: int = 32
  seq_len: int = 64
  heads: int = 4
  precision: str = "bf16"
  max_seconds: float = 20.0  # stop early (and say how many were scored) past this

  @property
  def cfg(self):
    return gpt2.ModelConfig(self.vocab_size, self.seq_len, self.layers, self.d_model,
                                 self.heads, self.precision)


@dataclasses.dataclass(frozen=True)
class Preset:
  rows: tuple
  scoring: tuple
  steps_per_call: int
  calls: int
  torch_steps: int


# The issue-8 GPU targets, bf16, V=2048, S=64.
GPU = Preset(
    rows=(Row(1, 32, 64, (1, 8, 64, 256)), Row(1, 32, 2048, (1, 8, 64)),
          Row(8, 256, 2048, (1, 2, 4, 8))),
    scoring=(ScoreRow(2048, 8, 1_048_576, 8192), ScoreRow(50257, 8, 1_048_576, 512)),
    steps_per_call=20, calls=3, torch_steps=20)
# A small CPU default: the DESIGN.md reference shape (L1 d32, V=256, S=32, fp32).
CPU = Preset(
    rows=(Row(1, 32, 8, (1, 8), 256, 32, 2, "fp32"), Row(1, 32, 64, (1, 8), 256, 32, 2, "fp32")),
    scoring=(ScoreRow(2048, 8, 2048, 256, seq_len=32, heads=2, precision="fp32"),
             ScoreRow(50257, 2, 256, 64, seq_len=32, heads=2, precision="fp32")),
    steps_per_call=20, calls=10, torch_steps=20)


def device_kind():
  return jax.devices()[0].device_kind


def peak_tflops(precision, override=None):
  """The device's dense peak for the precision's matmuls ("bf16-mixed" computes in bf16)."""
  if override:
    return override
  compute = "bf16" if gpt2.PRECISIONS[precision][0] == jnp.bfloat16 else "fp32"
  for name, peaks in PEAK_TFLOPS.items():
    if name in device_kind():
      return peaks[compute]
  return None


def train_flops_per_token(cfg):
  return 6 * gpt2.n_params(cfg) + 6 * cfg.layers * cfg.seq_len * cfg.d_model


def compile_stack(cfg, tcfg, state, k):
  """(layout, compiled): the program `train.train_steps` runs for this stack, compiled here for
  its memory analysis and called directly (its arguments: the state, no corpus)."""
  layout = train_lib.stack_layout(cfg, tcfg, state)
  lowered = train_lib.train_steps_in_layout.lower(cfg, tcfg, state, k, None, layout=layout)
  return layout, lowered.compile()


def program_bytes(compiled):
  """XLA's memory estimate of a compiled program on one device: arguments + outputs +
  temporaries, less the donated arguments that outputs reuse; None where there is no analysis."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001 - a backend without the analysis
    return None


def peak_bytes():
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - some backends do not implement it
    stats = {}
  return stats.get("peak_bytes_in_use")


def is_oom(error):
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "OOM" in text


def _specs(m):
  return [train_lib.ModelSpec(100_000 + i, i, 1e-3) for i in range(m)]


def placed_stack(cfg, tcfg, m):
  """A fresh stack of m models, sharded over as many local devices as divide m evenly (all of
  them, on a CPU split into one device per core, when m is a multiple of their count), as
  `memjax.experiments.capacity` places a chunk. Returns (state, devices used)."""
  n = math.gcd(m, jax.local_device_count())
  if n == 1:
    return train_lib.init_stack_from_specs(cfg, tcfg, _specs(m)), 1
  sharding = train_lib.model_sharding(jax.local_devices()[:n])
  return train_lib.init_stack_from_specs(cfg, tcfg, _specs(m), sharding=sharding), n


class _Timer:
  """Best seconds per call of one measured thing, over calls interleaved with the others."""

  def __init__(self, call, state=None):
    self.call, self.state, self.best = call, state, math.inf

  def warm(self):
    self.state, out = self.call(self.state)
    jax.block_until_ready(out)
    return self

  def time(self):
    start = time.perf_counter()
    self.state, out = self.call(self.state)
    jax.block_until_ready(out)
    self.best = min(self.best, time.perf_counter() - start)


def _layout_name(layout, models, devices):
  if models == devices:  # one model a device: lax.map over one model is the one-model program
    return "one-model program"
  return "lax.map in each device" if layout.sequential else "vmap"


def bench_training_row(row: Row, preset: Preset, peak_override=None, deadline=math.inf,
                       use_torch=True, progress=None):
  """One training row. For each stack size M the stack is compiled, then `calls` rounds each
  time one call of the stack, of the single-model path and of the PyTorch loop, so that all
  three see the same machine (on a shared CPU the load drifts); each keeps its best call, and
  the single-model and PyTorch bests are over all rounds of the row. `progress(report)` gets the
  row's report so far after each stack size."""
  cfg = row.cfg
  k = preset.steps_per_call
  tcfg = train_lib.TrainConfig(steps=10**6, batch_size=row.batch_size, learning_rate=1e-3,
                               warmup_steps=10, steps_per_call=k)
  tokens_per_model_step = row.batch_size * row.seq_len

  # b. one model alone through the single-model path; M of them take M times as long. (Model 0
  # of the first stack, so that no extra init program is compiled.)
  first = row.stack_sizes[0]
  single = _Timer(lambda s: train_lib.train_steps_single(cfg, tcfg, s, k),
                  train_lib.model_slice(train_lib.init_stack_from_specs(cfg, tcfg, _specs(first)),
                                        0)).warm()

  # c. PyTorch, one model alone.
  torch_timer, torch_note, torch_gpt2 = None, "torch not installed", None
  if not use_torch:
    torch_note = "skipped (--no_torch)"
  else:
    try:
      from benchmarks import torch_gpt2
    except ImportError:
      pass
  if torch_gpt2 is not None:
    try:
      run_torch, torch_params = torch_gpt2.make_trainer(
          row.vocab_size, row.seq_len, row.layers, row.d_model, row.heads, row.batch_size)
      assert torch_params == gpt2.n_params(cfg), (torch_params, gpt2.n_params(cfg))
      torch_timer = _Timer(lambda s: (s, run_torch(preset.torch_steps)))
      torch_note = f"ok ({torch_gpt2.describe()})"
    except Exception as e:  # noqa: BLE001 - a baseline that does not fit is reported, not fatal
      if not is_oom(e):
        raise
      torch_note = "out of memory"

  peak = peak_tflops(row.precision, peak_override)
  flops = train_flops_per_token(cfg)
  stacks = []
  for m in row.stack_sizes:
    if time.perf_counter() > deadline:
      stacks.append({"models": m, "skipped": "time budget of the preset spent"})
      continue
    try:
      peak_before = peak_bytes()
      placed, n_dev = placed_stack(cfg, tcfg, m)
      layout, compiled = compile_stack(cfg, tcfg, placed, k)
      program = program_bytes(compiled)
      stack = _Timer(lambda s: compiled(s, None), placed).warm()
      # The same stack on one device, for what sharding over the devices adds (CPU cores).
      one_device = None
      if n_dev > 1:
        one_device = _Timer(lambda s: train_lib.train_steps(cfg, tcfg, s, k),
                            train_lib.init_stack_from_specs(cfg, tcfg, _specs(m))).warm()
      for _ in range(preset.calls):
        stack.time()
        if one_device is not None:
          one_device.time()
        single.time()
        if torch_timer is not None:
          torch_timer.time()
          torch_gpt2.release()  # its cached GPU memory must not be what stops a larger stack
      mem = peak_bytes()
      if mem is not None and peak_before is not None and mem <= peak_before:
        mem = None  # an earlier, larger program set the process's peak: nothing measured
      del stack.state
      if one_device is not None:
        del one_device.state
    except Exception as e:  # noqa: BLE001 - only out-of-memory ends the sweep quietly
      if not is_oom(e):
        raise
      stacks.append({"models": m, "oom": True, "error": str(e).splitlines()[0][:200]})
      break
    stack_s = stack.best / k
    tokens_s = m * tokens_per_model_step / stack_s
    stacks.append({
        "models": m,
        "devices": n_dev,
        "layout": _layout_name(layout, m, n_dev),
        "seconds_per_step": stack_s,
        "tokens_per_s": tokens_s,
        "model_steps_per_s": m / stack_s,
        "one_device_seconds_per_step": one_device.best / k if one_device else None,
        # Per device, times the devices, over the models (each device holds M / n_dev of them).
        "program_bytes_per_model": program * n_dev / m if program else None,
        "measured_peak_bytes_per_model": mem * n_dev / m if mem else None,
        "mfu": tokens_s * flops / (peak * 1e12) if peak else None,
    })
    if progress is not None:
      progress(_training_report(row, cfg, flops, peak, single, torch_timer, torch_note,
                                preset.torch_steps, k, stacks))
  if torch_gpt2 is not None:
    torch_gpt2.release()
  return _training_report(row, cfg, flops, peak, single, torch_timer, torch_note,
                          preset.torch_steps, k, stacks)


def _training_report(row, cfg, flops, peak, single, torch_timer, torch_note, torch_steps, k,
                     stacks):
  """A training row's report from its timers: the ratios use the best single-model and PyTorch
  times over the row so far (conservative)."""
  tokens_per_model_step = row.batch_size * row.seq_len
  single_s = single.best / k
  if not math.isfinite(single_s):  # every stack size was skipped: nothing was timed
    single_s = None
  torch_s = torch_timer.best / torch_steps if torch_timer is not None else None
  if torch_timer is not None and not math.isfinite(torch_s):
    torch_s = None
  for s in stacks:
    if "seconds_per_step" in s:
      s["ratio_vs_one_after_another"] = single_s * s["models"] / s["seconds_per_step"]
      s["ratio_vs_torch"] = torch_s * s["models"] / s["seconds_per_step"] if torch_s else None
      one = s["one_device_seconds_per_step"]
      s["one_device_ratio_vs_one_after_another"] = single_s * s["models"] / one if one else None
  return {
      "row": dataclasses.asdict(row), "label": row.label, "n_params": gpt2.n_params(cfg),
      "flops_per_token": flops, "peak_tflops": peak,
      "one_after_another": {"extrapolated_from": "1 model, time x M",
                            "seconds_per_model_step": single_s,
                            "tokens_per_s": tokens_per_model_step / single_s if single_s else None,
                            "model_steps_per_s": 1 / single_s if single_s else None},
      "torch": {"note": torch_note, "seconds_per_model_step": torch_s,
                "tokens_per_s": tokens_per_model_step / torch_s if torch_s else None,
                "model_steps_per_s": 1 / torch_s if torch_s else None},
      "stacks": [dict(s) for s in stacks],
  }


def bench_scoring(row: ScoreRow, peak_override=None):
  cfg = row.cfg
  params = train_lib.init_stack_from_specs(cfg, train_lib.TrainConfig(), _specs(row.models)).params
  key = jax.random.key(0)
  batches = [jax.random.randint(jax.random.fold_in(key, i), (row.batch, cfg.seq_len), 0,
                                cfg.vocab_size) for i in range(2)]
  compiled = likelihood.shared_token_logprobs.lower(cfg, params, batches[0]).compile()
  program = program_bytes(compiled)
  peak_before = peak_bytes()
  score = lambda t: compiled(params, t)
  jax.block_until_ready(score(batches[0]))  # warm up
  calls = max(1, row.sequences // row.batch)
  start = time.perf_counter()
  done, out = 0, None
  for i in range(calls):
    out = score(batches[i % 2])
    done += 1
    if done % 16 == 0:  # check the clock now and then (each check waits for the device)
      jax.block_until_ready(out)
      if time.perf_counter() - start > row.max_seconds:
        break
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  seqs_s = done * row.batch / seconds
  tokens_s = seqs_s * row.models * cfg.seq_len  # model-tokens scored per second
  peak = peak_tflops(row.precision, peak_override)
  mem = peak_bytes()
  if mem is not None and peak_before is not None and mem <= peak_before:
    mem = None  # an earlier, larger program set the process's peak: nothing measured
  return {"row": dataclasses.asdict(row), "n_params": gpt2.n_params(cfg),
          "sequences_scored": done * row.batch, "seconds": seconds,
          "sequences_per_s": seqs_s, "model_sequences_per_s": seqs_s * row.models,
          "tokens_per_s": tokens_s,
          "mfu": tokens_s * train_flops_per_token(cfg) / 3 / (peak * 1e12) if peak else None,
          "program_bytes": program,
          "program_bytes_per_model": program / row.models if program else None,
          "measured_peak_bytes": mem}


def scoring_vs_training(report):
  """Scoring model-tokens/s over the best training tokens/s of the same shape (V, L, d, S)."""
  out = []
  for s in report["scoring"]:
    r = s["row"]
    best = [st["tokens_per_s"] for t in report["training"] for st in t["stacks"]
            if "tokens_per_s" in st and all(t["row"][f] == r[f] for f in
                                            ("vocab_size", "layers", "d_model", "seq_len",
                                             "precision"))]
    if best:
      out.append({"vocab_size": r["vocab_size"], "scoring_tokens_per_s": s["tokens_per_s"],
                  "best_training_tokens_per_s": max(best),
                  "ratio": s["tokens_per_s"] / max(best)})
  return out


def fmt(x, spec=".3g"):
  return "n/a" if x is None else format(x, spec)


def gib(x):
  return None if x is None else x / 2**30


def print_header(report):
  print(f"device: {report['device']} x{report['local_devices']}  jax {report['jax']}  "
        f"commit {report['commit']}  {report['date']}  ({report['preset']} preset, "
        f"{report['likelihood_kernel']} likelihood kernel)")
  print(f"{'shape':>20} {'B':>5} {'M':>4} {'tokens/s':>9} {'model-steps/s':>13} "
        f"{'x 1-by-1':>8} {'x torch':>8} {'MFU':>6} {'GiB/model':>9}  devices, layout "
        f"(x 1-by-1 of the stack on one device) [measured peak GiB/model]", flush=True)
  print(f"{'':>20} (GiB/model: XLA's memory analysis of the stack program; the measured peak "
        "only where the stack raised the process's peak)", flush=True)


def print_training(r):
  row = r["row"]
  for s in r["stacks"]:
    lead = f"{r['label']:>20} {row['batch_size']:>5} {s['models']:>4}"
    if s.get("oom"):
      print(f"{lead}  out of memory: sweep stopped")
    elif s.get("skipped"):
      print(f"{lead}  skipped: {s['skipped']}")
    else:
      print(f"{lead} {s['tokens_per_s']:>9.3g} {s['model_steps_per_s']:>13.4g} "
            f"{fmt(s['ratio_vs_one_after_another'], '.2f'):>8} "
            f"{fmt(s['ratio_vs_torch'], '.2f'):>8} {fmt(s['mfu'], '.1%'):>6} "
            f"{fmt(gib(s['program_bytes_per_model']), '.3f'):>9}  {s['devices']}, {s['layout']}"
            + (f" ({s['one_device_ratio_vs_one_after_another']:.2f})"
               if s["one_device_ratio_vs_one_after_another"] else "")
            + (f" [{gib(s['measured_peak_bytes_per_model']):.3f}]"
               if s.get("measured_peak_bytes_per_model") else ""))
  one, tor = r["one_after_another"], r["torch"]
  if one["tokens_per_s"] is None:
    print(f"{'':>20} one model alone: not timed (no stack size of this row ran)", flush=True)
    return
  print(f"{'':>20} one model alone: memjax single path {one['tokens_per_s']:.3g} tokens/s "
        f"({one['model_steps_per_s']:.4g} steps/s; M models one after another = this / M, "
        f"extrapolated from 1 model); torch {fmt(tor['tokens_per_s'])} tokens/s [{tor['note']}]",
        flush=True)


def print_scoring(s):
  r = s["row"]
  print(f"scoring L{r['layers']} d{r['d_model']} V{r['vocab_size']} {r['precision']} "
        f"x{r['models']} models: {s['sequences_per_s']:.4g} sequences/s "
        f"({s['model_sequences_per_s']:.4g} model-sequences/s, {s['tokens_per_s']:.3g} "
        f"model-tokens/s, MFU {fmt(s['mfu'], '.1%')}, {s['sequences_scored']:,} sequences in "
        f"{s['seconds']:.1f}s, batch {r['batch']}, program {fmt(gib(s['program_bytes']), '.2f')} "
        f"GiB, measured peak {fmt(gib(s['measured_peak_bytes']), '.2f')} GiB)",
        flush=True)


def git_commit():
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=here, timeout=10)
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def run(preset: Preset, name="custom", peak_override=None, out=None, max_minutes=math.inf,
        use_torch=True, verbose=True):
  """Run a preset; returns the report (and writes it as JSON to `out` after every row)."""
  start = time.perf_counter()
  report = {"preset": name, "device": device_kind(), "local_devices": jax.local_device_count(),
            "cpu_cores": devices_lib.cpu_cores(), "platform": platform.platform(),
            "jax": jax.__version__, "commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
            "likelihood_kernel": likelihood.KERNEL,
            # Off a GPU the Pallas kernel runs in its interpreter: not the kernel's speed.
            "pallas_interpreted": likelihood.KERNEL == "pallas" and jax.default_backend() != "gpu",
            "flops_formula": "per trained token 6*n_params + 6*L*S*d; scored: a third",
            "steps_per_call": preset.steps_per_call, "calls": preset.calls,
            "training": [], "scoring": [], "scoring_vs_training": []}

  def save():
    report["seconds"] = time.perf_counter() - start
    if out:
      with open(out, "w") as f:
        json.dump(report, f, indent=2)

  if verbose:
    print_header(report)
  # Scoring first: a few bounded rows, so that a run cut short loses training stacks, not them.
  for srow in preset.scoring:
    s = bench_scoring(srow, peak_override)
    report["scoring"].append(s)
    if verbose:
      print_scoring(s)
    save()
  deadline = time.perf_counter() + max_minutes * 60

  def progress(partial):  # the row so far, in the report: a kill keeps the stacks measured
    report["training"][-1] = partial
    save()

  for row in preset.rows:
    report["training"].append(None)
    r = bench_training_row(row, preset, peak_override, deadline, use_torch, progress)
    report["training"][-1] = r
    if verbose:
      print_training(r)
    save()
  report["scoring_vs_training"] = scoring_vs_training(report)
  if verbose:
    for c in report["scoring_vs_training"]:
      print(f"scoring V{c['vocab_size']}: {c['ratio']:.2f}x the best training tokens/s of the "
            f"same shape ({c['scoring_tokens_per_s']:.3g} vs {c['best_training_tokens_per_s']:.3g})")
    print(f"total {time.perf_counter() - start:.0f}s", flush=True)
  save()
  return report


def positive(kind):
  """An argparse type: a number of `kind` above 0, refused with its value otherwise."""
  def parse(text):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
    if not value > 0 or not math.isfinite(value):
      raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value
  return parse


def non_negative_int(text):
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
  return value


def check_out_path(parser, path):
  """Fail before any timing if the report could not be written at the end."""
  if path is None:
    return
  directory = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    parser.error(f"--out {path} is a directory; give a file name")
  if not os.path.isdir(directory):
    parser.error(f"--out {path}: directory {directory} does not exist")
  if not os.access(directory, os.W_OK):
    parser.error(f"--out {path}: directory {directory} is not writable")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gpu", action="store_true", help="the issue-8 GPU preset (H100/H200)")
  parser.add_argument("--out", help="write the report as JSON here")
  parser.add_argument("--peak_tflops", type=positive(float),
                      help="device peak for MFU, overriding the table")
  parser.add_argument("--calls", type=positive(int), help="timed calls per measurement")
  parser.add_argument("--steps_per_call", type=positive(int),
                      help="steps fused into one timed call")
  parser.add_argument("--max_minutes", type=positive(float), default=None,
                      help="stop starting new stack sizes after this (GPU default 5)")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch baseline")
  parser.add_argument("--kernel", choices=("xla", "pallas"), default="xla",
                      help="the likelihood kernel of every memjax row (likelihood.KERNEL): the "
                           "chunked XLA one or the fused Pallas one (GPU; d_model a power of 2)")
  parser.add_argument("--precision", choices=tuple(gpt2.PRECISIONS),
                      help="train and score every row in this precision instead of the "
                           "preset's (GPU: bf16, CPU: fp32); bf16-mixed keeps fp32 master "
                           "weights, as the PyTorch baseline's autocast does")
  parser.add_argument("--cpu_devices", type=non_negative_int, default=0,
                      help="CPU devices the stacks are sharded over (0: one per core, as "
                           "memjax.main does); the single-model path uses one")
  args = parser.parse_args(argv)
  check_out_path(parser, args.out)
  devices_lib.use_cpu_devices(args.cpu_devices)
  if args.gpu:
    # Allocate on demand: the PyTorch baseline shares the GPU, and out-of-memory must mean the
    # stack itself no longer fits.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  preset = GPU if args.gpu else CPU
  preset = dataclasses.replace(
      preset, calls=preset.calls if args.calls is None else args.calls,
      steps_per_call=preset.steps_per_call if args.steps_per_call is None else args.steps_per_call)
  likelihood.KERNEL = args.kernel
  if args.kernel == "pallas" and jax.default_backend() != "gpu":
    print("note: --kernel pallas off a GPU runs the kernels interpreted: these figures time the "
          "interpreter, not the kernel", flush=True)
  if args.precision is not None:
    preset = dataclasses.replace(
        preset, rows=tuple(dataclasses.replace(r, precision=args.precision) for r in preset.rows),
        scoring=tuple(dataclasses.replace(r, precision=args.precision) for r in preset.scoring))
  max_minutes = args.max_minutes if args.max_minutes is not None else (
      5.0 if args.gpu else math.inf)
  return run(preset, "gpu" if args.gpu else "cpu", args.peak_tflops, args.out, max_minutes,
             not args.no_torch)


if __name__ == "__main__":
  main()
