"""memjax entry point: python -m memjax.main --config=configs/capacity.py --workdir=runs/capacity

Fields of the config can be overridden on the command line, e.g.
--config.sweep.d_model='(32,64)' --config.train.steps=2000.
"""

import importlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from memjax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and figures.")

# config.experiment -> the module that runs it. Each module has `validate(config) -> settings`
# (raising config.ConfigError) and `main(settings, workdir)`, which runs and prints its report.
EXPERIMENTS = {
    "capacity": "memjax.capacity",
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/capacity.py")
  try:
    name = config.get("experiment")
    if name not in EXPERIMENTS:
      raise config_lib.ConfigError(
          f"config.experiment: must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    experiment = importlib.import_module(EXPERIMENTS[name])
    settings = experiment.validate(config)
    config_lib.check_workdir(_WORKDIR.value)
  except config_lib.ConfigError as e:
    print(f"memjax: error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING if getattr(settings, "quiet", False) else logging.INFO)
  experiment.main(settings, _WORKDIR.value)


def parse_flags(argv):
  """absl's parser, but a bad --config.* override is one line naming the field, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # ml_collections raises several types for bad overrides
    if not any(a.startswith("--config.") for a in argv):
      raise
    print(f"memjax: error: {config_lib.explain_override_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
