"""Test setup: 8 simulated CPU devices, so multi-device code runs anywhere.

XLA reads the flag once, when jax initialises its backends, so it is set here before any test
module imports jax.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
