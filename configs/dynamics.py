"""Memorization dynamics (Chen, Han, Miyao 2024) on the embedded corpus, sized for a 2-core CPU.

The first 300 module docstrings of the Python standard library (`stdlib_docs`, no extra packages,
nothing to download), a 512-token byte-level BPE trained on them, 32-token sequences; 512 of them
train three one-layer GPT-2 widths (d_model 32, 64, 128) for 600 steps (37 epochs) in 5 segments
(measured once: mean final score 0.10, 0.89 and 0.99 by width, 160-180 s on a shared 2-core CPU).
Every training sample is scored (16-token context, 8-token continuation) after each segment; the
grid crosses contexts (4, 8, 16, 24) with continuations (4, 8, 16). See
memjax/experiments/dynamics.py and docs/dynamics_and_distributional.md.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics"
  config.quiet = False

  config.data = ml_collections.ConfigDict()
  config.data.source = "stdlib_docs"  # stdlib_docs (embedded), txt, jsonl, parquet or synthetic
  config.data.paths = ()  # txt/jsonl: files, directories or globs
  config.data.text_field = "text"  # jsonl key
  config.data.doc_packages = ()  # stdlib_docs: packages after the stdlib (e.g. ("numpy",))
  config.data.max_documents = 300  # 0: all
  config.data.tokenizer = "bpe"  # "bpe" (trained on the corpus, cached) or "bytes"
  config.data.vocab_size = 512  # BPE tokens; with source="synthetic": V of the uniform tokens
  config.data.seq_len = 32
  config.data.num_samples = 512  # training sequences (every model trains on all of them)
  config.data.seed = 0
  config.data.cache_dir = ""  # "": <workdir>/cache

  config.model = ml_collections.ConfigDict()
  config.model.num_heads = 2
  config.model.layers = 1

  config.sweep = ml_collections.ConfigDict()
  config.sweep.d_model = (32, 64, 128)  # the model sizes

  config.train = ml_collections.ConfigDict()
  config.train.steps = 600
  config.train.batch_size = 32
  config.train.learning_rate = 1e-2
  config.train.warmup_steps = 50
  config.train.min_lr_ratio = 0.1
  config.train.weight_decay = 0.0
  config.train.b1 = 0.9
  config.train.b2 = 0.98
  config.train.eps = 1e-8
  config.train.grad_clip = 1.0
  config.train.steps_per_call = 100
  # Checkpoint each stack every this many steps (0: only at the end and when interrupted); a
  # rerun continues from there. Only how a run is saved, not what it computes.
  config.train.checkpoint_every = 200
  config.train.vocab_chunk = 4096

  config.dynamics = ml_collections.ConfigDict()
  config.dynamics.context = 16  # the main setting: scored at every checkpoint
  config.dynamics.continuation = 8
  config.dynamics.contexts = (4, 8, 16, 24)  # the grid, scored after training
  config.dynamics.continuations = (4, 8, 16)  # pairs longer than seq_len are marked skipped
  config.dynamics.checkpoints = 5  # training segments; samples are scored after each
  config.dynamics.score_samples = 0  # 0: every training sample
  config.dynamics.batch_size = 512
  config.dynamics.ngram_n = 3  # n-gram order of the decoding-dynamics frequencies
  config.dynamics.max_n = 5  # orders counted in the training corpus
  config.dynamics.window = 4  # steps shown on each side of the divergence point
  config.dynamics.memorized_threshold = 0.6  # score >= this: "memorized" in the boundary figure

  config.predictor = ml_collections.ConfigDict()
  config.predictor.layers = 1
  config.predictor.d_model = 32
  config.predictor.num_heads = 2
  config.predictor.steps = 400
  config.predictor.batch_size = 64
  config.predictor.learning_rate = 3e-3
  config.predictor.test_fraction = 0.25

  # n-gram counts of the training corpus: "exact" (in memory) or "infini_gram" (the infini-gram
  # engine's suffix array on disk; identical counts). index_dir: an existing infini-gram index
  # (e.g. the Pile with the model's tokenizer); "": built from the training tokens, cached.
  config.ngram = ml_collections.ConfigDict()
  config.ngram.backend = "exact"
  config.ngram.index_dir = ""
  return config
