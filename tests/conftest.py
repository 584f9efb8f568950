"""Test setup: 8 simulated CPU devices, so multi-device code runs anywhere.

XLA reads the flag once, when jax initialises its backends, so it is set here before any test
module imports jax. On a machine with a GPU the tests run there too; the 8 CPU devices stay
available as jax.devices("cpu").
"""
import os
import shutil
import tempfile
import time

# One persistent compilation cache for the test run: the xdist workers (which inherit this
# process's environment) and every train.py/sample.py subprocess share it, so an expensive
# computation that several tests compile (a run and its resumption, the quick start in many
# tests) compiles once. Only compilations over JAX's threshold (1 s) are stored: caching every
# small op costs more than it saves. A size limit turns on JAX's file lock, so concurrent
# writers and readers are safe. The folder is removed when the run ends.
_OWNS_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWNS_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dit-tests-jax-cache-")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
if "PYTEST_XDIST_WORKER" in os.environ:  # several workers share one GPU: none takes 75% of it
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
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


def pytest_unconfigure(config):
  """The process that made the compilation cache (xdist's controller, or the only process)
  removes it."""
  del config
  if _OWNS_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_generate_tests(metafunc):
  """DIT_TEST_SEEDS=<n> runs each test that takes `key` once per seed 0..n-1, and no other test:
  a sweep that finds tolerances too tight for some inputs (e.g. DIT_TEST_SEEDS=300 python -m
  pytest -q tests/test_frechet.py); the failures name their seeds."""
  sweep = os.environ.get("DIT_TEST_SEEDS")
  if sweep and "key" in metafunc.fixturenames:
    metafunc.parametrize("seed", range(int(sweep)))


def pytest_collection_modifyitems(config, items):
  """A seed sweep runs only the tests that take `key`."""
  if os.environ.get("DIT_TEST_SEEDS"):
    takes_key = ["key" in getattr(item, "fixturenames", ()) for item in items]
    config.hook.pytest_deselected(items=[i for i, k in zip(items, takes_key) if not k])
    items[:] = [i for i, k in zip(items, takes_key) if k]


@pytest.fixture
def seed() -> int:
  """Fresh per test run, from the clock; printed on failure, and DIT_TEST_SEED=<seed> replays
  it."""
  return int(os.environ.get("DIT_TEST_SEED", time.time_ns() % (2**31)))


@pytest.fixture
def key(seed) -> jax.Array:
  """A fresh random key per test run (see seed)."""
  print(f"random seed: {seed} (replay with DIT_TEST_SEED={seed})")
  return jax.random.key(seed)


@pytest.fixture
def randomize():
  return randomize_params


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A workdir of train.py's tiny quick start (6 steps, checkpoints 3 and 6), trained once."""
  from saved_runs import train_tiny_quickstart  # noqa: PLC0415  (imports jax: after XLA_FLAGS)
  return train_tiny_quickstart(tmp_path_factory.mktemp("tiny_run"))
