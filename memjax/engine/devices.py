"""One CPU device per core, so that a stack sharded over its model axis uses every core.

XLA:CPU gives a process one device by default, and a small model's step is too small for XLA to
spread over threads: a stack on that one device runs on about one core. Splitting the host into
one device per core lets `capacity` and `text_experiment` shard a stack's models over them, as
over GPUs (benchmarks/README.md: a stack of 8 at 8 sequences a step trains 2.0-2.1x faster than
the models one after another on a 2-core CPU, against 1.2x on one device). GPUs are unaffected.
Must run before JAX starts its backends (the first array or device query).
"""

from __future__ import annotations

import os

from absl import logging
import jax

# Beyond this many, a default chunk is mostly padding copies and each device's share of the
# assumed CPU memory (sweep.DEFAULT_CPU_MEMORY_GIB) gets small; --cpu_devices goes higher.
MAX_DEFAULT_CPU_DEVICES = 8


def cpu_cores() -> int:
  """Cores this process may run on (its affinity mask, e.g. under taskset or a CPU quota)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def use_cpu_devices(count: int = 0) -> int | None:
  """Ask JAX for `count` CPU devices (0: one per core, up to MAX_DEFAULT_CPU_DEVICES).

  Without an explicit count, a device count the user set (XLA_FLAGS'
  --xla_force_host_platform_device_count or JAX_NUM_CPU_DEVICES) is kept. Returns the count
  asked for, or None when nothing was changed (also when JAX's backends already run).
  """
  if count < 0:
    raise ValueError(f"the CPU device count must be >= 0, got {count}")
  if not count:
    if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        or os.environ.get("JAX_NUM_CPU_DEVICES")):
      return None
    count = min(cpu_cores(), MAX_DEFAULT_CPU_DEVICES)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # backends started (e.g. called twice in one process): keep what runs
    logging.info("JAX already runs with %d CPU device(s); not changed to %d",
                 len(jax.devices("cpu")), count)
    return None
  return count
