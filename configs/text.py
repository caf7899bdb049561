"""Text memorization on the embedded corpus, sized for a 2-core CPU (about 10 minutes).

The corpus is `stdlib_docs` (the docstrings of the Python standard library and of numpy, jax,
flax, optax: about 6.4M characters, nothing to download), tokenized with a 1024-token byte-level
BPE trained on it, cut into 64-token sequences and deduplicated. Three one-layer GPT-2 widths
(d_model 16, 32, 64) each train one stack: a model per dataset size N (a log grid from 64 to 2048
sequences) plus the shape's reference, the same shape trained on the whole 8192-sequence training
pool. Memorization is measured against the same-size reference and against the oracle (the
full-pool model with the lowest held-out loss); capacity, for the double-descent plot, is measured
(each shape's largest memorization); extraction greedily continues prefixes of 8, 16 and 32 tokens
of members and of held-out sequences. See memjax/experiments/text.py and docs/text.md.
"""

import ml_collections

from memjax.data.corpus import DEFAULT_DOC_PACKAGES


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "text"
  config.quiet = False

  config.data = ml_collections.ConfigDict()
  # Where the documents come from: stdlib_docs (embedded), txt, jsonl, parquet or tfds.
  config.data.source = "stdlib_docs"
  config.data.paths = ()  # txt/jsonl/parquet: files, directories or globs
  config.data.text_field = "text"  # jsonl key, parquet column or TFDS feature
  config.data.txt_split = "file"  # txt: "file" (a document a file) or "blank_lines"
  config.data.tfds_name = ""  # tfds: e.g. "wiki40b/en" (prepared in tfds_data_dir; no download)
  config.data.tfds_split = "train"
  config.data.tfds_data_dir = ""
  config.data.doc_packages = DEFAULT_DOC_PACKAGES  # stdlib_docs: packages after the stdlib
  config.data.max_documents = 0  # 0: all
  # Tokenizer: "bpe" (trained on the corpus, cached), "file" (a tokenizer.json) or "bytes".
  config.data.tokenizer = "bpe"
  config.data.tokenizer_path = ""  # tokenizer="file": the tokenizer.json
  config.data.vocab_size = 1024  # tokenizer="bpe": tokens to train (257..65536)
  config.data.bpe_min_frequency = 2
  config.data.bpe_max_train_chars = 0  # 0: train the BPE on the whole corpus
  config.data.seq_len = 64
  config.data.train_pool = 8192  # the full training set of the references; 0: all that is left
  config.data.heldout_pool = 1024  # non-members: test loss and extraction
  config.data.reference_pool = 0  # set aside (for reference models of other experiments)
  # "sequence": pools drawn sequence by sequence; "document": whole documents, so that no held-out
  # sequence comes from a document the training pool also has (text_dataset.json: the overlap).
  config.data.pool_split = "sequence"
  config.data.seed = 0  # draws the pools and, with each model's seed, its members
  config.data.cache_dir = ""  # "": <workdir>/cache

  config.model = ml_collections.ConfigDict()
  config.model.num_heads = 2

  config.sweep = ml_collections.ConfigDict()
  config.sweep.layers = (1,)
  config.sweep.d_model = (16, 32, 64)
  config.sweep.precisions = ("fp32",)
  config.sweep.dataset_sizes = (64, 128, 256, 512, 2048)  # N; each shape also trains its reference
  config.sweep.seeds = (0,)
  config.sweep.models_per_stack = 0  # 0: all models of a shape in one stack
  config.sweep.save_params = True  # keep trained parameters in <workdir>/text_stacks

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1200
  config.train.batch_size = 32
  config.train.learning_rate = 1e-2
  config.train.warmup_steps = 50
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
  config.eval.batch_size = 512
  config.eval.test_size = 1024  # held-out sequences for the test loss

  config.reference = ml_collections.ConfigDict()
  config.reference.primary = "oracle"  # or "same_size": the reference of mem_bits, dataset_bits
  # capacity = alpha x params; 0: measured, the shape's largest memorization over N. These CPU
  # models train for a short budget and store well under 3.6 bits/param, so measure it here.
  config.reference.alpha = 0.0

  config.extraction = ml_collections.ConfigDict()
  config.extraction.prefix_lengths = (8, 16, 32)  # each < data.seq_len; () skips extraction
  config.extraction.member_samples = 256  # each model's own members, at most
  config.extraction.nonmember_samples = 1024  # held-out sequences (the paper: 10,000)
  config.extraction.batch_size = 256

  config.analysis = ml_collections.ConfigDict()
  config.analysis.top_k = 20  # top memorized samples per shape in top_memorized.txt
  return config
