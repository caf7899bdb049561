"""Extraction from imported Hugging Face checkpoints: greedy decoding from prefixes of candidates.

  python -m memjax.main --config=configs/pretrained_extraction.py --workdir=runs/pythia_extract \\
    --config.model.paths='("/ckpt/pythia-70m-deduped/step1000","/ckpt/pythia-70m-deduped/step143000")' \\
    --config.data.path=/data/pile_sample.jsonl

Every directory of model.paths (one shape, one tokenizer) decodes each candidate's continuation
from its first P tokens (P of extraction.prefix_lengths); a candidate is a line of a .txt, a
record's `text` of a .jsonl or a row of a .npy of token ids, cut to data.seq_len tokens. See
memjax/experiments/pretrained_extraction.py and docs/pretrained.md.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "pretrained_extraction"
  config.quiet = False

  config.model = ml_collections.ConfigDict()
  config.model.paths = ()  # required: checkpoint directories (one shape, one tokenizer)
  config.model.precision = "fp32"  # or "bf16"

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # required: .txt, .jsonl (`text`) or .npy [B, S] of token ids
  config.data.seq_len = 64  # tokens of each candidate; shorter candidates are left out
  config.data.max_samples = 0  # candidates drawn (seeded); 0: all
  config.data.seed = 0

  config.extraction = ml_collections.ConfigDict()
  config.extraction.prefix_lengths = (8, 16, 32)  # as the paper: decode the rest from these
  config.extraction.batch_size = 32  # candidates a device call
  config.extraction.vocab_chunk = 4096
  return config
