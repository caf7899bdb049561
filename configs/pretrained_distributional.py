"""Distributional memorization (Wang, Antoniades et al. 2024) of imported Hugging Face checkpoints.

  python -m memjax.main --config=configs/pretrained_distributional.py --workdir=runs/pythia_dist \\
    --config.model.paths='("/ckpt/pythia-70m-deduped/step1000","/ckpt/pythia-70m-deduped/step143000")' \\
    --config.data.paths='("/data/pile_sample.jsonl",)'

Each directory is a GPT2LMHeadModel or GPTNeoXForCausalLM checkpoint (config.json,
model.safetensors, tokenizer.json) of one shape; they load as one stack and nothing is trained.
The text is cut into data.seq_len-token sequences with the checkpoints' tokenizer: n-grams of
orders 1..distributional.max_n are counted on data.num_samples of them (standing in for the
pretraining corpus), and each checkpoint's probabilities of held-out sequences, of its greedy
continuations and of counted ones are correlated with the n-gram probabilities. See
docs/pretrained.md.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "distributional"
  config.quiet = False

  config.data = ml_collections.ConfigDict()
  config.data.source = "jsonl"  # txt, jsonl, parquet or stdlib_docs (embedded)
  config.data.paths = ()  # txt/jsonl: files, directories or globs
  config.data.text_field = "text"
  config.data.doc_packages = ()
  config.data.max_documents = 0  # 0: all
  config.data.tokenizer = "checkpoint"  # the checkpoints' own tokenizer.json
  config.data.vocab_size = 512  # unused: the checkpoints' tokenizer decides
  config.data.seq_len = 64  # at most the checkpoints' context
  config.data.num_samples = 4096  # sequences whose n-grams are counted
  config.data.heldout = 256
  config.data.pool_split = "sequence"  # or "document"
  config.data.seed = 0
  config.data.cache_dir = ""  # "": <workdir>/cache

  config.model = ml_collections.ConfigDict()
  config.model.paths = ()  # required: Hugging Face checkpoint directories of one shape
  config.model.precision = "fp32"  # or "bf16"
  config.model.num_heads = 2  # unused with model.paths (the checkpoints' shape is theirs)
  config.model.layers = 1

  config.sweep = ml_collections.ConfigDict()
  config.sweep.d_model = (32,)  # unused with model.paths
  config.sweep.dataset_sizes = (4096,)  # unused with model.paths: data.num_samples are counted

  config.train = ml_collections.ConfigDict()  # nothing is trained; vocab_chunk is used
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
  config.distributional.max_n = 4  # orders counted (a 50k vocabulary: 4 fit the int64 keys)
  config.distributional.eval_samples = 256  # held-out sequences (and this many counted ones)
  config.distributional.context = 16  # prompt of the generated set; 0: no generated set
  config.distributional.batch_size = 32  # sequences a call (scoring and greedy decoding)
  config.distributional.denominator = "context"  # or "continuation"
  return config
