"""Few-step sampling schedules: names, files, cost in calls, and the sampler that runs them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import schedules
from diffusion.samplers import integrate, sigma_schedule
from diffusion.schedules import Schedule, sample_schedule


def linear_velocity(key, dim=6):
  """A velocity field v(x, sigma) = A(sigma) x + b(sigma) with random, smooth coefficients."""
  ka, kb = jax.random.split(key)
  a, b = jax.random.normal(ka, (2, dim)) * 0.5, jax.random.normal(kb, (2, dim))
  return lambda x, sigma: (a[0] + sigma * a[1]) * x + (b[0] + sigma * b[1])


def counted(velocity):
  """velocity_fn(x, sigma, skip) that counts its evaluations as they run (not as traced)."""
  calls = []

  def fn(x, sigma, skip):
    jax.debug.callback(lambda: calls.append(1))
    return velocity(x, sigma)

  return fn, calls


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_a_uniform_schedule_samples_as_the_configured_sampler(key, solver):
  velocity = linear_velocity(key)
  x = jax.random.normal(jax.random.fold_in(key, 1), (3, 6))
  schedule = schedules.uniform(5, shift=3.0, solver=solver)
  np.testing.assert_allclose(schedule.sigmas, sigma_schedule(5, 3.0), rtol=1e-6, atol=1e-7)
  fn, calls = counted(velocity)
  out = jax.jit(lambda x: sample_schedule(fn, x, *map(jnp.asarray, schedule.arrays(4))))(x)
  np.testing.assert_allclose(out, integrate(velocity, x, sigma_schedule(5, 3.0), solver),
                             rtol=1e-5, atol=1e-5)
  assert len(calls) == schedule.calls() == (5 if solver == "euler" else 9)


def test_one_step_is_one_model_call(key):
  fn, calls = counted(linear_velocity(key))
  x = jax.random.normal(key, (2, 6))
  schedule = schedules.uniform(1)
  sample_schedule(fn, x, *map(jnp.asarray, schedule.arrays(4))).block_until_ready()
  assert len(calls) == schedule.calls() == 1


def test_cost_counts_heun_steps_and_skipped_blocks():
  s = Schedule((1.0, 0.6, 0.2, 0.0), ("heun", "euler", "heun"), ((), (0, 3), (1,)))
  assert s.evaluations() == [2, 1, 1]  # a last Heun step runs Euler
  assert s.calls() == 4
  assert s.block_calls(depth=4) == 2 * 4 + 1 * 2 + 1 * 3
  sigmas, heun, skip = s.arrays(4)
  assert heun.tolist() == [True, False, False]
  assert skip.tolist() == [[False] * 4, [True, False, False, True], [False, True, False, False]]


@pytest.mark.parametrize("bad, message", [
    (dict(sigmas=(1.0, 0.5, 0.6, 0.0)), "decrease strictly"),
    (dict(sigmas=(0.9, 0.5, 0.0)), "decrease strictly"),
    (dict(solvers=("euler", "rk4")), "solvers"),
])
def test_an_invalid_schedule_is_an_error(bad, message):
  fields = dict(sigmas=(1.0, 0.5, 0.0), solvers=("euler", "euler")) | bad
  with pytest.raises(ValueError, match=message):
    Schedule(**fields)
  with pytest.raises(ValueError, match="not blocks of the model"):
    Schedule((1.0, 0.5, 0.0), ("euler", "euler"), ((), (7,))).arrays(depth=4)


def test_names_and_files_resolve(tmp_path):
  assert schedules.resolve("", str(tmp_path), 3.0) is None
  assert schedules.resolve("uniform-4", None, 3.0) == schedules.uniform(4, 3.0)
  assert schedules.resolve("heun-7", None, 1.0).calls() == 7
  with pytest.raises(FileNotFoundError, match="eval.search_schedule"):
    schedules.resolve("searched-4", str(tmp_path), 3.0)
  found = Schedule((1.0, 0.7, 0.3, 0.0), ("heun", "euler", "euler"), name="searched-4",
                   meta=dict(score=1.5))
  found.save(schedules.searched_path(str(tmp_path), 4))
  loaded = schedules.resolve("searched-4", str(tmp_path), 3.0)
  assert loaded == found and loaded.meta == dict(score=1.5)
  assert schedules.resolve(schedules.searched_path(str(tmp_path), 4), None, 1.0) == found
  with pytest.raises(ValueError, match="uniform-K"):
    schedules.resolve("uniform-0", None, 1.0)
  with pytest.raises(FileNotFoundError, match=r"(?s)the run has: \['searched-4'\].*--name=fast"):
    schedules.resolve("fast", str(tmp_path), 1.0)
  found.save(schedules.saved_path(str(tmp_path), "fast"))
  assert schedules.resolve("fast", str(tmp_path), 3.0) == found
