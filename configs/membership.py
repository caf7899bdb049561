"""Membership inference on synthetic data, sized for a 2-core CPU (a few minutes).

One-layer GPT-2 models (d_model 16 and 32) on uniform random sequences (V=128, S=32: 224 bits a
sequence), each trained on a grid of dataset sizes from well below to far above its capacity.
Members are a model's training samples, non-members held-out samples of the same distribution;
loss, reference, zlib, Min-K% and Min-K%++ attacks are scored on a balanced set per model, and
the F1 of the loss attack falls toward 0.5 as N grows past capacity. A stack of 8 shadow models
over a membership matrix of 128 candidates compares LiRA with the loss attack. The law
F1 = 1/2 (1 + c1 sigmoid(c2 (x + c3))) is fitted to the targets. See
memjax/experiments/membership.py.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "membership"
  config.quiet = False

  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic"  # or "text" (the fields below marked text)
  config.data.vocab_size = 128  # synthetic: V; text: BPE vocabulary (tokenizer="bpe")
  config.data.seq_len = 32
  config.data.seed = 0  # evaluation draws, text pools, LiRA candidates
  # text only:
  config.data.corpus = "stdlib_docs"  # txt, jsonl, parquet, tfds or stdlib_docs (embedded)
  config.data.paths = ()
  config.data.text_field = "text"  # jsonl/parquet field or TFDS feature holding the text
  config.data.tfds_name = ""  # corpus="tfds": e.g. "wiki40b/en", prepared under tfds_data_dir
  config.data.tfds_split = "train"
  config.data.tfds_data_dir = ""  # "": TFDS's default (~/tensorflow_datasets)
  config.data.max_documents = 0  # 0: all
  config.data.tokenizer = "bpe"  # bpe (trained, cached), file or bytes
  config.data.tokenizer_path = ""
  config.data.train_pool = 4096  # members are drawn from it
  config.data.heldout_pool = 1024  # non-members
  config.data.reference_pool = 1024  # trains each shape's reference model; 0: no reference attack
  # "sequence" or "document": whole documents per pool, so non-members share no document with
  # members (text_dataset.json records the text they still share).
  config.data.pool_split = "sequence"
  config.data.cache_dir = ""  # "": <workdir>/cache

  config.model = ml_collections.ConfigDict()
  config.model.num_heads = 2

  config.sweep = ml_collections.ConfigDict()
  config.sweep.layers = (1,)
  config.sweep.d_model = (16, 32)
  config.sweep.precision = "fp32"
  config.sweep.dataset_sizes = (16, 128, 1024, 8192, 65536)
  config.sweep.seeds = (0,)

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1500
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
  # Checkpoint each stack every this many steps (0: only at the end and when interrupted); a
  # rerun continues from there. Only how a run is saved, not what it computes.
  config.train.checkpoint_every = 400
  config.train.vocab_chunk = 4096

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256
  config.eval.eval_size = 512  # per target: half members (at most N), as many non-members
  config.eval.bootstrap = 200  # resamples for the confidence intervals; 0: none
  config.eval.min_k = 0.2  # the k of Min-K% and Min-K%++

  config.lira = ml_collections.ConfigDict()
  config.lira.num_models = 8  # shadow models (even, >= 6); 0: no LiRA
  config.lira.candidates = 128  # each a member of exactly half of the shadows
  config.lira.layers = 1
  config.lira.d_model = 16
  config.lira.steps = 800  # 0: train.steps
  config.lira.seed = 0
  config.lira.max_targets = 0  # leave-one-out targets; 0: every shadow model
  # Shadows trained as one stack (each stack is a unit of work: a process trains it, a rerun
  # skips it once stored); 0: as many as fit the devices, split evenly over the processes.
  config.lira.models_per_stack = 0

  config.law = ml_collections.ConfigDict()
  # capacity of x = capacity / N: bits_per_param x params; 0: measured (the shape's largest
  # estimated memorization over N, from the evaluation members).
  config.law.bits_per_param = 0.0
  return config
