"""Distributional memorization (Wang, Antoniades et al. 2024) on the embedded corpus, sized for a
2-core CPU.

The first 300 module docstrings of the Python standard library (`stdlib_docs`, nothing to
download), a 512-token byte-level BPE, 32-token sequences; one-layer GPT-2 widths 32 and 64, each
trained on N = 128, 512 and 2048 sequences for 1000 steps. The n-gram models (orders 1..5) are
counted on each model's own training set; probabilities of 256 held-out sequences, of the models'
greedy continuations of their first 8 tokens and of 128 training sequences are correlated with the
2- and 3-gram probabilities. See memjax/experiments/distributional.py and
docs/dynamics_and_distributional.md.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "distributional"
  config.quiet = False

  config.data = ml_collections.ConfigDict()
  config.data.source = "stdlib_docs"  # stdlib_docs (embedded), txt, jsonl, parquet or synthetic
  config.data.paths = ()
  config.data.text_field = "text"
  config.data.doc_packages = ()
  config.data.max_documents = 300  # 0: all
  config.data.tokenizer = "bpe"  # or "bytes"
  config.data.vocab_size = 512
  config.data.seq_len = 32
  config.data.num_samples = 2048  # the training pool; each model trains on its first N
  config.data.heldout = 256
  # "sequence" or "document": held-out sequences from documents the training set does not use
  config.data.pool_split = "sequence"
  config.data.seed = 0
  config.data.cache_dir = ""  # "": <workdir>/cache

  config.model = ml_collections.ConfigDict()
  config.model.num_heads = 2
  config.model.layers = 1

  config.sweep = ml_collections.ConfigDict()
  config.sweep.d_model = (32, 64)
  config.sweep.dataset_sizes = (128, 512, 2048)

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000
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

  config.distributional = ml_collections.ConfigDict()
  config.distributional.orders = (2, 3)  # n of the n-gram probabilities correlated
  config.distributional.max_n = 5  # orders counted
  config.distributional.eval_samples = 256  # held-out sequences (and at most this many members)
  config.distributional.context = 8  # prompt of the generated set; 0: no generated set
  config.distributional.batch_size = 256
  # n-gram P(tok | ctx) = count(ctx + tok) / count(ctx) ("context") or / occurrences of ctx
  # followed by a token ("continuation", a proper distribution)
  config.distributional.denominator = "context"

  # n-gram counts of the training corpus: "exact" (in memory) or "infini_gram" (the infini-gram
  # engine's suffix array on disk; identical counts). index_dir: an existing infini-gram index
  # (e.g. the Pile with the model's tokenizer); "": built from the training tokens, cached.
  config.ngram = ml_collections.ConfigDict()
  config.ngram.backend = "exact"
  config.ngram.index_dir = ""
  return config
