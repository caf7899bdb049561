"""memjax entry point: python -m memjax.main --config=configs/capacity.py --workdir=runs/capacity

Fields of the config can be overridden on the command line, e.g.
--config.sweep.d_model='(32,64)' --config.train.steps=2000; --list_fields lists them.
"""

import errno
import importlib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from memjax import config as config_lib
from memjax import schema

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and figures.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the plan (buckets, chunks, models, memory, tokens) and exit.")
_LIST_FIELDS = flags.DEFINE_bool(
    "list_fields", False, "Print each field of the --config file's experiment (type, the "
    "file's value, what is allowed, meaning), one a line, and exit.")
# Several processes (hosts): jax.distributed.initialize(). Give all three, or --distributed to let
# JAX detect the cluster (e.g. under SLURM's srun; see launch/slurm.sbatch).
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "jax.distributed.initialize() with the cluster detected by JAX.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "CPU devices to split the host into, so that a stack sharded over them "
    "uses every core; 0: one per core (up to 8), or what XLA_FLAGS / JAX_NUM_CPU_DEVICES set. "
    "No effect on GPUs.")

# config.experiment -> the module that runs it. Each module has `SCHEMA` (its fields, a
# schema.Schema), `validate(config) -> settings` (raising config.ConfigError) and
# `main(settings, workdir)`, which runs and prints its report.
EXPERIMENTS = {
    "capacity": "memjax.experiments.capacity",
    "text": "memjax.experiments.text",
    "dynamics": "memjax.experiments.dynamics",
    "distributional": "memjax.experiments.distributional",
    "membership": "memjax.experiments.membership",
    "pretrained_membership": "memjax.experiments.pretrained_membership",
    "pretrained_extraction": "memjax.experiments.pretrained_extraction",
}

# The experiments that train and score on the engine (memjax/engine/run.py): their units of work
# split over processes. The pretrained ones score imported checkpoints in one process.
ON_THE_ENGINE = ("capacity", "text", "dynamics", "distributional", "membership")


def main(argv):
  if _WORKDIR.value:
    # "--workdir=~/runs/x" arrives unexpanded (a shell expands "~" only at a word's start):
    # expand it, as data.paths and data.cache_dir are, rather than make a directory named "~".
    flags.FLAGS.workdir = os.path.expanduser(_WORKDIR.value)
  try:
    if len(argv) > 1:
      raise config_lib.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _load_config()
    name = config.get("experiment")
    if name not in EXPERIMENTS:
      raise config_lib.ConfigError(
          f"config.experiment: must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    experiment = importlib.import_module(EXPERIMENTS[name])
    if _LIST_FIELDS.value:  # before validating: a config still to be completed lists too
      print(schema.listing(experiment.SCHEMA, config))
      return
    settings = experiment.validate(config)
    if _DRY_RUN.value and not hasattr(experiment, "dry_run"):
      raise config_lib.ConfigError(f"--dry_run: experiment {name!r} has no dry run")
    _check_process_flags()
    if name not in ON_THE_ENGINE and (_NUM_PROCESSES.value is not None or _DISTRIBUTED.value):
      # It would run whole on each process, repeating all the work and writing the same files.
      raise config_lib.ConfigError(
          f"--coordinator_address, --num_processes, --distributed: experiment {name!r} runs in "
          f"one process (these split their work over processes: {', '.join(ON_THE_ENGINE)}); "
          "drop these flags")
    if _DRY_RUN.value and _DISTRIBUTED.value:
      raise config_lib.ConfigError(
          "--dry_run, --distributed: a dry run does not join the cluster, so it cannot tell "
          "which process this is; give --coordinator_address, --num_processes and --process_id "
          "instead to see a process's share")
    if _CPU_DEVICES.value < 0:
      raise config_lib.ConfigError(f"--cpu_devices: must be >= 0, got {_CPU_DEVICES.value}")
    workdir_is_new = not os.path.exists(_WORKDIR.value or ".")
    config_lib.check_workdir(_WORKDIR.value, create=not _DRY_RUN.value)
  except config_lib.ConfigError as e:
    print(f"memjax: error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING if getattr(settings, "quiet", False) else logging.INFO)
  from memjax.engine import devices  # after the config is known good: imports jax
  devices.use_cpu_devices(_CPU_DEVICES.value)  # before anything starts JAX's backends
  from memjax.engine import sweep
  if not _DRY_RUN.value:  # a dry run only plans: it must not wait for the other processes
    try:
      sweep.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                   auto=_DISTRIBUTED.value)
    except (ValueError, RuntimeError) as e:  # no cluster found, or no coordinator reached
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      _fail_before_writing(
          f"jax.distributed.initialize: {first[:300]} (--distributed needs a cluster JAX can "
          "detect, e.g. SLURM under srun; elsewhere give --coordinator_address, "
          "--num_processes and --process_id)", workdir_is_new)
  try:
    if not _DRY_RUN.value:
      _hold_workdir()  # the run's first write: a disk already full shows here
    if _DRY_RUN.value and _NUM_PROCESSES.value is not None:  # say which process owns what
      experiment.dry_run(settings, _WORKDIR.value, (_PROCESS_ID.value, _NUM_PROCESSES.value))
    elif _DRY_RUN.value:
      experiment.dry_run(settings, _WORKDIR.value)
    else:
      experiment.main(settings, _WORKDIR.value)
  except config_lib.ConfigError as e:  # found while planning (e.g. memory), still before compiling
    _fail_before_writing(str(e), workdir_is_new)
  except KeyboardInterrupt:  # Ctrl-C outside a training loop (those stop at a checkpoint)
    print(f"\nmemjax: interrupted; what is written in {_WORKDIR.value} stays valid, and the same "
          "command continues from it", file=sys.stderr)
    _exit_now(130)
  except OSError as e:  # a full disk: one line, not a traceback; the files written stay valid
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # EFBIG: a file size limit
      raise
    where = f" ({e.filename})" if e.filename else ""
    print(f"\nmemjax: error: a write failed{where}: {e.strerror}; free space (or give another "
          f"--workdir) and run the same command again: what is written in {_WORKDIR.value} "
          "stays valid, and it continues from there", file=sys.stderr)
    _exit_now(1)
  except Exception as e:  # noqa: BLE001 - only device out-of-memory is turned into one line
    # XLA says RESOURCE_EXHAUSTED, or (an allocation of a sharded program's dispatch) "Out of
    # memory allocating".
    marks = ("RESOURCE_EXHAUSTED", "Out of memory allocating")
    if not any(m in str(e) for m in marks):
      raise
    first = next((l for l in str(e).splitlines() if any(m in l for m in marks)), str(e))
    print(f"\nmemjax: error: out of device memory ({' '.join(first.split())[:300]}); lower "
          "train.batch_size, eval.batch_size, the dataset sizes or the model widths; what is "
          f"written in {_WORKDIR.value} stays valid", file=sys.stderr)
    _exit_now(1)


# (open lock file, process index) while this process holds the workdir (memjax.engine.workdir_lock)
_held = None


def _hold_workdir():
  """One run a workdir: a second one stops here, before it trains or writes anything."""
  global _held
  import jax
  from memjax.engine import workdir_lock
  index = jax.process_index()
  try:
    _held = (workdir_lock.hold(_WORKDIR.value, index), index)
  except workdir_lock.WorkdirBusy as e:
    print(f"memjax: error: {e}", file=sys.stderr)
    sys.exit(2)


def _fail_before_writing(message, workdir_is_new):
  print(f"memjax: error: {message}", file=sys.stderr)
  if workdir_is_new and _held is not None:  # nothing written: the lock file goes too
    from memjax.engine import workdir_lock
    workdir_lock.release(_held[0], _WORKDIR.value, _held[1])
  if workdir_is_new and os.path.isdir(_WORKDIR.value) and not os.listdir(_WORKDIR.value):
    os.rmdir(_WORKDIR.value)  # made by this run, which wrote nothing: leave no trace
  sys.exit(2)


def _exit_now(status):
  """Exit without Python's interpreter teardown: after an interrupt, XLA's threads may still be
  compiling or running, and tearing down under them can crash (a segfault seen after Ctrl-C
  during a first compile). Every result file is written whole before this, so nothing is lost."""
  sys.stdout.flush()
  sys.stderr.flush()
  logging.flush()
  os._exit(status)


def _load_config():
  """The --config file's config, or a ConfigError saying in one line why it cannot be loaded."""
  if _CONFIG.value is None:
    raise config_lib.ConfigError("--config: required, e.g. --config=configs/capacity.py")
  try:
    _CONFIG.value.keys()  # ml_collections loads the file lazily: make it load here
    return _CONFIG.value
  except Exception as e:  # noqa: BLE001 - a missing file, a syntax error, an error in get_config
    path = flags.FLAGS["config"].config_filename
    raise config_lib.ConfigError(
        f"--config: cannot load {path!r}: {config_lib.config_file_error(path) or e}") from None


def _check_process_flags():
  given = [f for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None]
  if given and len(given) < 3:
    raise config_lib.ConfigError(
        "--coordinator_address, --num_processes, --process_id: give all three or none")
  if _NUM_PROCESSES.value is not None:
    if _NUM_PROCESSES.value < 1:
      raise config_lib.ConfigError(f"--num_processes: must be >= 1, got {_NUM_PROCESSES.value}")
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
      raise config_lib.ConfigError(
          f"--process_id: must be in [0, {_NUM_PROCESSES.value - 1}], got {_PROCESS_ID.value}")


def parse_flags(argv):
  """absl's parser, but a bad flag or --config.* override is one line (naming the field), not a
  traceback."""
  argv = [("--help" if a == "-h" else a) for a in argv]  # absl knows only --help and -?
  try:
    rest = flags.FLAGS(argv)
    message = config_lib.repeated_list_override(argv, _CONFIG.value)
    if message is None:
      return rest
  except flags.UnrecognizedFlagError as e:
    message = f"{e}; python -m memjax.main --helpfull lists the flags"
  except Exception as e:  # ml_collections raises several types: a bad override, a broken file
    message = config_lib.explain_override_error(argv, e)
  print(f"memjax: error: {message}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
