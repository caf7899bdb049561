"""The model architectures: GPT-2 (trained here or imported) and GPT-NeoX (imported Pythia).

Each module gives compute_params, hidden_states and output_embedding for one model, so the
likelihood kernel and every estimator run on either; `module_of(cfg)` picks it by the config.
"""

from memjax.model import gpt2
from memjax.model import gpt_neox


def module_of(cfg):
  """gpt_neox for a NeoXConfig, else gpt2."""
  return gpt_neox if isinstance(cfg, gpt_neox.NeoXConfig) else gpt2
