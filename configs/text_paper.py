"""Text memorization in the setting of Morris et al. 2025 (section 5), for GPUs.

FineWeb text (parquet shards, e.g. HuggingFaceFW/fineweb sample-10BT, downloaded beforehand: memjax
reads no network) tokenized with GPT-2's tokenizer (V=50,257; its tokenizer.json given by path),
64-token sequences, exactly deduplicated. GPT-2 models of 8 layers and d_model 32 to 256 (1.7M to
19.2M parameters, most of them in the embedding; bf16 compute, fp32 parameters) each train one stack: a log grid of dataset sizes
from 2,048 to 2,097,152 sequences plus the shape's reference on the whole 4,194,304-sequence
training pool. Extraction decodes 10,000 held-out non-members and up to 10,000 members per model.

Point data.paths and data.tokenizer_path at your files (or override them on the command line):

  python -m memjax.main --config=configs/text_paper.py --workdir=runs/text_paper \
    --config.data.paths='("/data/fineweb/sample/10BT/*.parquet",)' \
    --config.data.tokenizer_path=/data/gpt2/tokenizer.json

Cost: at batch 512 and 100,000 steps a model sees 3.3B tokens; the largest stack (7 models of
19.2M parameters) needs about 35 GiB by sweep.model_memory's estimate (scoring batches of 2,048
dominate), and each stack is trained once (a rerun reuses stored scores
and parameters). Lower train.steps or the grid for a first run.
"""

import importlib.util
import os

# Load the sibling base config by path, so this file works from any working directory.
_spec = importlib.util.spec_from_file_location(
    "text_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "text.py"))
text = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(text)


def get_config():
  config = text.get_config()
  config.data.source = "parquet"
  config.data.paths = ("data/fineweb/sample/10BT/*.parquet",)
  config.data.text_field = "text"
  config.data.tokenizer = "file"
  config.data.tokenizer_path = "data/gpt2/tokenizer.json"
  config.data.seq_len = 64
  config.data.train_pool = 4_194_304
  config.data.heldout_pool = 20_000
  config.data.cache_dir = "~/.cache/memjax"  # shared by runs: tokenizing FineWeb takes a while

  config.model.num_heads = 4
  config.sweep.layers = (8,)
  config.sweep.d_model = (32, 64, 128, 256)
  # bf16 compute with fp32 parameters: pure bf16 parameters lose most small Adam updates to
  # rounding at this learning rate (docs/results.md), which would read as less memorization.
  config.sweep.precisions = ("bf16-mixed",)
  config.sweep.dataset_sizes = (2_048, 8_192, 32_768, 131_072, 524_288, 2_097_152)
  config.sweep.seeds = (0,)
  config.sweep.save_params = False  # 7 x 19.2M parameters a stack: keep only the scores

  config.train.steps = 100_000
  config.train.batch_size = 512
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 1000
  config.train.steps_per_call = 500
  # Checkpoint each stack every this many steps (0: only at the end and when interrupted); a
  # rerun continues from there. Only how a run is saved, not what it computes.
  config.train.checkpoint_every = 5000

  config.reference.alpha = 3.6  # capacity = 3.6 bits/param x parameters (the paper's, bf16)

  config.eval.batch_size = 2048
  config.eval.test_size = 10_000
  config.extraction.member_samples = 10_000
  config.extraction.nonmember_samples = 10_000
  config.extraction.batch_size = 1024
  config.analysis.top_k = 50
  return config
