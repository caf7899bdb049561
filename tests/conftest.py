import os

# Tests run on the CPU, with 8 simulated devices for the sharding tests; set before jax loads.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
