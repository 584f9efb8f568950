"""Test setup: 8 simulated CPU devices, so multi-device code runs anywhere.

XLA reads the flag once, when jax initialises its backends, so it is set here before any test
module imports jax.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402
from flax import nnx  # noqa: E402


def randomize_params(model: nnx.Module, key: jax.Array, scale: float = 0.2) -> None:
  """Overwrites every parameter with fresh N(0, scale^2) values (in place).

  A DiT at init is the identity (zero-initialised gates and output), so tests of what the
  layers compute first give them random weights.
  """
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(key, len(leaves))
  new = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  nnx.update(model, jax.tree.unflatten(treedef, new))


@pytest.fixture
def key(request) -> jax.Array:
  """A fresh random key per test run (seeded from the clock), printed on failure."""
  import time
  seed = time.time_ns() % (2**31)
  request.node.user_properties.append(("seed", seed))
  print(f"random seed: {seed}")
  return jax.random.key(seed)


@pytest.fixture
def randomize():
  return randomize_params
