"""The capacity grid of Morris et al. 2025, for GPUs.

GPT-2 models of 1, 2, 4 and 8 layers x d_model 32, 64, 128, 256 on uniform sequences (V=2048,
S=64: 704 bits a sequence), each on a log grid of dataset sizes through its expected capacity
(factors of 3.6 bits/param / 704 bits a sequence), 5 seeds, bf16-mixed and fp32, batch 2048.
bf16 here is "bf16-mixed" (bf16 compute, fp32 parameters and Adam state), not pure bf16: pure
bf16 parameters round most Adam updates of a 1e-3 learning rate away and stall far below their
capacity (docs/results.md: 2.26 bits/param on an H100); add "bf16" to compare.
Every model trains until its memorization saturates (estimated memorization changing by less than
0.1% between windows of 1,000 steps, twice in a row), then decays its learning rate for 10,000
steps (WSD) and is frozen, at most 100,000 steps; its batch is N/4 as a power of two in
[256, 8192], so models of a shape stack by batch. Chunks are sized
from the device memory automatically; `--dry_run` prints the plan.

Where this departs from the paper (arXiv 2505.24832): the paper trains every model for 10^6 steps
(its first author: models saturate "around 1M steps"), with Adam; here a model gets at
most 10^5 steps and stops earlier once it grows by less than 0.1% a window, which a model still
creeping up (up to 10% over the next 10^5 steps) also passes, so a capacity can come out low:
compare `mem_bits` with `steps` and `saturated_step`, and raise `train.steps` (the WSD decay
stays decay_fraction of it) or lower `train.saturation_tolerance` to check. The paper's widths go to
d_model 512 (models of 100K to 20M parameters; its capacity figure shows 32-256); add 512 to
`sweep.d_model` for those. Adam here is AdamW with weight decay 0 (the same update), with this
file's b2 0.98, gradient clipping at 1.0, warmup, a constant peak and a linear decay: memjax's choices, not taken
from the paper.
"""

import importlib.util
import os

# Load the sibling base config by path, so this file works from any working directory.
_spec = importlib.util.spec_from_file_location(
    "capacity_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "capacity.py"))
capacity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(capacity)


def get_config():
  config = capacity.get_config()
  config.data.vocab_size = 2048
  config.data.seq_len = 64
  config.model.num_heads = 4
  config.sweep.layers = (1, 2, 4, 8)
  config.sweep.d_model = (32, 64, 128, 256)
  config.sweep.dataset_sizes = ()
  config.sweep.dataset_size_factors = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)
  config.sweep.seeds = (0, 1, 2, 3, 4)
  config.sweep.precisions = ("bf16-mixed", "fp32")
  config.train.steps = 100_000
  config.train.batch_size = 2048
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 1000
  config.train.steps_per_call = 500
  config.train.saturation_tolerance = 1e-3
  config.train.saturation_window = 1000
  config.train.saturation_patience = 2
  config.train.checkpoint_every = 5000
  # WSD: each model's decay (the last 10% of the limit, 10,000 steps) starts at its own plateau
  # and the model is frozen when it ends; a batch of N/4 (models stacked by batch), at least 256
  # and at most 8192 (the largest N of L8 d256 near capacity, ~35K sequences, needs 8,800).
  config.train.schedule = "wsd"
  config.train.decay_fraction = 0.1
  config.train.batch_fraction = 0.25
  config.train.batch_min = 256
  config.train.batch_max = 8192
  # Scoring 4096 sequences at once would need more memory a model than training (the fp32
  # [B*S, V] likelihood chunk), halving the models a chunk; 1024 keeps training the limit.
  config.eval.batch_size = 1024
  config.eval.test_size = 4096
  return config
