import os

# Tests run on the CPU, with 8 simulated devices for the sharding tests; set before jax loads.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# pytest-xdist already runs a worker a core: a memjax.main subprocess keeps to one CPU device
# unless its test asks for more (--cpu_devices, or its own XLA_FLAGS / JAX_NUM_CPU_DEVICES).
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")
