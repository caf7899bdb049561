"""Small capacity sweep that runs on a laptop CPU in a few minutes.

Two one-layer models (d_model 16 and 32) on uniform random sequences (V=128, S=32: 224 bits a
sequence), each trained on a grid of dataset sizes that runs from well below to well above its
capacity, so memorization rises with N and then levels off at the model's capacity.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "capacity"
  config.quiet = False

  config.data = ml_collections.ConfigDict()
  config.data.vocab_size = 128
  config.data.seq_len = 32

  config.model = ml_collections.ConfigDict()
  config.model.num_heads = 2

  config.sweep = ml_collections.ConfigDict()
  config.sweep.layers = (1,)
  config.sweep.d_model = (16, 32)
  config.sweep.dataset_sizes = (32, 128, 256, 512, 2048)
  # Non-empty: N = factor * (3.6 * params / bits per sequence) for each shape instead.
  config.sweep.dataset_size_factors = ()
  config.sweep.seeds = (0,)
  config.sweep.precisions = ("fp32",)
  config.sweep.learning_rates = ()  # one per model, crossed with the rest; empty: train.learning_rate
  # Models trained together in one chunk; 0: as many as fit a device's memory (estimated).
  config.sweep.models_per_chunk = 0
  # Memory of one device for a chunk, GiB; 0: the device's own limit (CPU: 4 GiB shared).
  config.sweep.device_memory_gib = 0.0
  # Keep each chunk's trained parameters in <workdir>/capacity_params, for memjax.export/score.
  config.sweep.save_params = False

  config.train = ml_collections.ConfigDict()
  config.train.steps = 4000
  config.train.batch_size = 64
  config.train.learning_rate = 1e-2
  config.train.warmup_steps = 100
  config.train.min_lr_ratio = 0.1
  config.train.weight_decay = 0.0
  config.train.b1 = 0.9
  config.train.b2 = 0.98
  config.train.eps = 1e-8
  config.train.grad_clip = 1.0
  config.train.steps_per_call = 200
  config.train.vocab_chunk = 4096
  # 0.0: a fixed budget of train.steps for every model. > 0: a model stops (is frozen) once its
  # estimated memorization changes by less than this fraction between consecutive windows of
  # saturation_window steps, saturation_patience times in a row; train.steps is then the limit.
  config.train.saturation_tolerance = 0.0
  config.train.saturation_window = 200
  config.train.saturation_patience = 2
  # Checkpoint every chunk every this many steps (0: only at the end and when interrupted).
  config.train.checkpoint_every = 1000
  # "wsd": warmup, a constant peak, then a linear decay to min_lr_ratio over the last
  # decay_fraction of train.steps (with saturation: from the model's own plateau, and the model
  # is frozen when its decay ends); "cosine": cosine decay over all steps.
  # Measured (docs/capacity.md): alpha 2.590 at decay_fraction 0.4, 2.577 at 0.2, 2.570 cosine.
  config.train.schedule = "wsd"
  config.train.decay_fraction = 0.4
  # > 0: each model's batch = batch_fraction * N as a power of two, clipped to [batch_min, batch_max]; models
  # of one shape are stacked by batch. 0: every model takes train.batch_size.
  config.train.batch_fraction = 0.0
  config.train.batch_min = 16
  config.train.batch_max = 1024

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 512
  config.eval.test_size = 512
  # The convergence record: each model's memorization at this many log-spaced call boundaries
  # (rows' curve_steps / curve_bits, convergence.png); 0: none.
  config.eval.curve_steps = 8
  return config
