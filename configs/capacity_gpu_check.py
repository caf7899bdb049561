"""A reduced paper grid for a check on one GPU (H100): about 12 minutes from scratch.

Layers (1, 2) x d_model (32, 64) x bf16, bf16-mixed and fp32 = 12 buckets, V=2048, S=64 (704 bits
a sequence) as in the paper, each on 5 dataset sizes through its expected capacity (factors
0.25..4 of 3.6 bits/param / 704 bits a sequence: about 100 to 4,800 sequences), 2 seeds: 120
models, 10 a bucket, trained to saturation (estimated memorization changing by less than 0.5%
between windows of 500 steps, twice in a row) or at most 6,000 steps.

Batch: N/4 as a power of two in [256, 1024] (was a fixed 256: its timings below are for that; a
shape now stacks in up to 3 buckets by batch, not yet timed on a GPU), and a WSD schedule whose
decay starts at each model's plateau. The paper's 2048 would make each
step up to 8x dearer; for these 80K-235K parameter models the run is limited by steps (dispatch
and small kernels), not by memory: one model needs about 0.6 GiB by the estimate (mostly the
likelihood kernel's [B*S, V] fp32 chunk, in training and in scoring 512 sequences a batch), so
each bucket's 10 models train as one chunk. Measured on an H100 (docs/results.md): 46-69 s a
chunk. The largest datasets (factor 4) may stop at the step limit before saturating: their rows
then have saturated_step = null. Results go in docs/results.md.

The first H100 run measured the bf16 and fp32 buckets but L2 d64 fp32; its rows are kept in
docs/gpu_check_results.jsonl. Copied into the workdir first, they are skipped, and what is left
is 5 chunks (L2 d64 fp32 and the four bf16-mixed buckets), about 6 minutes:

  mkdir -p runs/gpu_check && cp docs/gpu_check_results.jsonl runs/gpu_check/results.jsonl
  python -m memjax.main --config=configs/capacity_gpu_check.py --workdir=runs/gpu_check --dry_run
  python -m memjax.main --config=configs/capacity_gpu_check.py --workdir=runs/gpu_check
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "capacity_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "capacity.py"))
capacity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(capacity)


def get_config():
  config = capacity.get_config()
  config.data.vocab_size = 2048
  config.data.seq_len = 64
  config.model.num_heads = 4
  config.sweep.layers = (1, 2)
  config.sweep.d_model = (32, 64)
  config.sweep.dataset_sizes = ()
  config.sweep.dataset_size_factors = (0.25, 0.5, 1.0, 2.0, 4.0)
  config.sweep.seeds = (0, 1)
  config.sweep.precisions = ("bf16", "bf16-mixed", "fp32")
  config.train.steps = 6000
  config.train.batch_size = 256
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 200
  config.train.steps_per_call = 500
  config.train.saturation_tolerance = 5e-3
  config.train.saturation_window = 500
  config.train.saturation_patience = 2
  config.train.checkpoint_every = 2000
  # WSD, decay (1,200 steps) from each model's plateau, then frozen; batch N/4 in [256, 1024]
  # (near capacity N is about 300-1,300 sequences, so N/4 is 256 at most there): models of a
  # shape stack by batch, so a shape has up to 3 buckets (not yet timed on a GPU).
  config.train.schedule = "wsd"
  config.train.decay_fraction = 0.2
  config.train.batch_fraction = 0.25
  config.train.batch_min = 256
  config.train.batch_max = 1024
  config.eval.batch_size = 512
  config.eval.test_size = 1024
  return config
