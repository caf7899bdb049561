import os
import sys

import pytest

# Tests run on the CPU, with 8 simulated devices for the sharding tests; set before jax loads.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# pytest-xdist already runs a worker a core: a memjax.main subprocess keeps to one CPU device
# unless its test asks for more (--cpu_devices, or its own XLA_FLAGS / JAX_NUM_CPU_DEVICES).
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")


@pytest.fixture
def memjax_main_under_limit():
  """argv_start(rlimit, limit): the start of a `python -m memjax.main` command under a resource
  limit (e.g. "RLIMIT_FSIZE"), set in a small launcher that then execs memjax, not in a
  preexec_fn, which would fork the multithreaded test process (that can deadlock)."""
  def argv_start(rlimit: str, limit: int) -> list[str]:
    launcher = (f"import os, resource, sys; resource.setrlimit(resource.{rlimit}, ({limit}, "
                f"{limit})); os.execv(sys.executable, [sys.executable, '-m', 'memjax.main', "
                "*sys.argv[1:]])")
    return [sys.executable, "-c", launcher]
  return argv_start
