"""Memorization dynamics (Chen, Han, Miyao 2024) of imported Hugging Face checkpoints.

Give the checkpoints of one model over training (or its seeds), in order, and the text to score:

  python -m memjax.main --config=configs/pretrained_dynamics.py --workdir=runs/pythia \\
    --config.model.paths='("/ckpt/pythia-70m-deduped/step1000","/ckpt/pythia-70m-deduped/step143000")' \\
    --config.data.paths='("/data/pile_sample.jsonl",)'

Each directory is a GPT2LMHeadModel or GPTNeoXForCausalLM checkpoint (config.json,
model.safetensors, tokenizer.json); they load as one stack and nothing is trained. The text is cut
into data.seq_len-token sequences with the checkpoints' tokenizer; data.num_samples of them are
scored at every checkpoint (the transitions between checkpoints), and the last checkpoint gets the
grid, embeddings, decoding dynamics (n-gram counts of the scored text itself, standing in for the
pretraining corpus) and the score predictor. See docs/pretrained.md.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics"
  config.quiet = False

  config.data = ml_collections.ConfigDict()
  config.data.source = "jsonl"  # txt, jsonl, parquet or stdlib_docs (embedded)
  config.data.paths = ()  # txt/jsonl: files, directories or globs
  config.data.text_field = "text"  # jsonl key
  config.data.doc_packages = ()  # stdlib_docs: packages after the stdlib (e.g. ("numpy",))
  config.data.max_documents = 0  # 0: all
  config.data.tokenizer = "checkpoint"  # the checkpoints' own tokenizer.json
  config.data.vocab_size = 512  # unused: the checkpoints' tokenizer decides
  config.data.seq_len = 64  # at most the checkpoints' context
  config.data.num_samples = 512  # sequences scored (a seeded sample of the distinct ones)
  config.data.seed = 0
  config.data.cache_dir = ""  # "": <workdir>/cache

  config.model = ml_collections.ConfigDict()
  config.model.paths = ()  # required: Hugging Face checkpoint directories, in training order
  config.model.precision = "fp32"  # or "bf16"
  config.model.num_heads = 2  # unused with model.paths (the checkpoints' shape is theirs)
  config.model.layers = 1

  config.sweep = ml_collections.ConfigDict()
  config.sweep.d_model = (32,)  # unused with model.paths

  config.train = ml_collections.ConfigDict()  # nothing is trained; vocab_chunk is used
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
  config.dynamics.context = 32  # Chen et al.: 32 tokens in, 16 out, at every checkpoint
  config.dynamics.continuation = 16
  config.dynamics.contexts = (8, 16, 32, 48)  # the grid, scored on the last checkpoint
  config.dynamics.continuations = (8, 16)  # pairs longer than seq_len are marked skipped
  config.dynamics.checkpoints = 5  # unused: the checkpoints are model.paths
  config.dynamics.score_samples = 0  # 0: every training sample
  config.dynamics.batch_size = 64
  config.dynamics.ngram_n = 3  # n-gram order of the decoding-dynamics frequencies
  config.dynamics.max_n = 4  # orders counted in the scored text (50k tokens: 4 fit int64)
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
