"""Membership inference on imported Hugging Face checkpoints (MIMIR-style member / non-member files).

  python -m memjax.main --config=configs/pretrained_membership.py --workdir=runs/pythia_mia \\
    --config.model.paths='("/ckpt/pythia-160m/step143000",)' \\
    --config.model.reference_path=/ckpt/pythia-70m/step143000 \\
    --config.data.members=/data/pile_train.jsonl --config.data.nonmembers=/data/pile_test.jsonl

Every directory of model.paths is a target (one stack: checkpoints over training or seeds); the
reference (optional, same tokenizer) drives the reference attack. Each candidate is a line of a
.txt, a record's `text` of a .jsonl, or a row of a .npy of token ids, scored on its first
data.seq_len tokens. See memjax/experiments/pretrained_membership.py and docs/pretrained.md.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.experiment = "pretrained_membership"
  config.quiet = False

  config.model = ml_collections.ConfigDict()
  config.model.paths = ()  # required: the target checkpoint directories (one shape, one tokenizer)
  config.model.reference_path = ""  # "": no reference attack
  config.model.precision = "fp32"  # or "bf16"

  config.data = ml_collections.ConfigDict()
  config.data.members = ""  # required: .txt, .jsonl (`text`) or .npy [B, S] of token ids
  config.data.nonmembers = ""  # required: the same kinds
  config.data.seq_len = 64  # tokens scored of each candidate; shorter candidates are left out
  config.data.max_samples = 0  # of each side; 0: as many as the smaller side has
  config.data.seed = 0

  config.attack = ml_collections.ConfigDict()
  config.attack.min_k = 0.2  # Min-K% and Min-K%++: the lowest fraction of tokens
  config.attack.n_bootstrap = 200  # bootstrap resamples of the CIs (0: none)
  config.attack.batch_size = 32  # candidates a device call
  config.attack.vocab_chunk = 4096
  return config
