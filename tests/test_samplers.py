import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import video_dit
from diffusion import samplers
from diffusion.flow_matching import timestep_shift
from dit.config import DiTConfig
from dit.model import DiT
from configs.common import model_config


def exponential_field(x, sigma):
  """dx/dsigma = 2 sigma x, whose solution is x(sigma) = x(1) exp(sigma^2 - 1)."""
  return 2.0 * sigma * x


def solve_error(key, method, steps, shift=1.0):
  x1 = jax.random.normal(key, (4, 8))
  x0 = samplers.integrate(exponential_field, x1, samplers.sigma_schedule(steps, shift), method)
  exact = x1 * np.exp(-1.0)
  return float(jnp.abs(x0 - exact).max() / jnp.abs(exact).max())  # relative error


def test_sigma_schedule_falls_from_one_to_zero():
  sigmas = samplers.sigma_schedule(10, shift=3.0)
  assert sigmas.shape == (11,)
  np.testing.assert_allclose(sigmas[jnp.array([0, -1])], [1.0, 0.0])
  assert bool(jnp.all(jnp.diff(sigmas) < 0))


@pytest.mark.parametrize("method", samplers.SAMPLERS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_many_steps_land_on_the_exact_solution(key, method, shift):
  assert solve_error(key, method, 2000, shift) < 1e-3


def test_heun_is_more_accurate_than_euler_at_equal_steps(key):
  for steps in (5, 10, 20):
    assert solve_error(key, "heun", steps) < solve_error(key, "euler", steps) / 5


def test_euler_is_first_order_and_heun_second_order(key):
  euler_ratio = solve_error(key, "euler", 20) / solve_error(key, "euler", 40)
  heun_ratio = solve_error(key, "heun", 20) / solve_error(key, "heun", 40)
  assert 1.7 < euler_ratio < 2.3 and 3.4 < heun_ratio < 4.6


def test_unknown_sampler_is_a_clear_error(key):
  with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
    samplers.integrate(exponential_field, jnp.ones(3), samplers.sigma_schedule(2), "rk4")


def test_guidance_extrapolates_from_unconditional_to_conditional(key):
  def model(x, t, labels, drop_cond=None):
    cond_v = labels[:, None].astype(jnp.float32) * x
    return cond_v if drop_cond is None else jnp.where(drop_cond[:, None], -x, cond_v)

  x = jax.random.normal(key, (3, 5))
  labels = jnp.array([1, 2, 3])
  guided = samplers.guided_velocity(model, {"labels": labels}, 4.0)(x, 0.5)
  np.testing.assert_allclose(guided, -x + 4.0 * (labels[:, None] * x + x), rtol=1e-6)
  plain = samplers.guided_velocity(model, {"labels": labels}, 1.0)(x, 0.5)
  np.testing.assert_allclose(plain, labels[:, None] * x, rtol=1e-6)


def test_guidance_scale_can_be_a_traced_value(key):
  def model(x, t, labels, drop_cond=None):
    return jnp.where(drop_cond[:, None], 0.0, 1.0) * x

  x = jax.random.normal(key, (2, 3))
  guided = jax.jit(lambda scale: samplers.guided_velocity(model, {"labels": jnp.ones(2)},
                                                          scale)(x, 0.5))
  np.testing.assert_allclose(guided(1.0), x, rtol=1e-6)
  np.testing.assert_allclose(guided(3.0), 3.0 * x, rtol=1e-6)


def test_guidance_applies_only_inside_its_interval(key):
  def model(x, t, labels, drop_cond=None):
    return jnp.where(drop_cond[:, None], 0.0, 1.0) * x

  x = jax.random.normal(key, (2, 3))
  velocity = jax.jit(samplers.guided_velocity(model, {"labels": jnp.ones(2)}, 3.0, (0.2, 0.7)))
  for sigma, scale in ((0.9, 1.0), (0.7, 3.0), (0.5, 3.0), (0.2, 3.0), (0.1, 1.0)):
    np.testing.assert_allclose(velocity(x, sigma), scale * x, rtol=1e-6, err_msg=str(sigma))
  with pytest.raises(ValueError, match="guidance_interval \\(0.7, 0.2\\) must be"):
    samplers.guided_velocity(model, {"labels": jnp.ones(2)}, 3.0, (0.7, 0.2))


def test_sampling_shift_follows_training_unless_set():
  config = video_dit.get_config()
  trained = timestep_shift(4096 * 4, config.flow)
  assert trained == pytest.approx(2 * config.flow.shift)
  assert samplers.sampling_shift(config, 4096 * 4) == trained
  config.sample.shift = 1.5
  assert samplers.sampling_shift(config, 4096 * 4) == 1.5


def test_sampling_a_dit_is_deterministic_for_a_key(key, randomize):
  model = DiT(DiTConfig.from_dict(model_config("tiny", in_channels=3, conditioning="label")),
              rngs=nnx.Rngs(0))
  randomize(model, key)
  graphdef, params = nnx.split(model)

  @jax.jit
  def draw(params, key):
    return samplers.sample(nnx.merge(graphdef, params), key, (2, 2, 8, 8, 3),
                           {"labels": jnp.array([3, 4])}, num_steps=3, method="heun",
                           guidance_scale=3.0, shift=2.0)

  a, b = draw(params, key), draw(params, key)
  c = draw(params, jax.random.fold_in(key, 1))
  assert a.shape == (2, 2, 8, 8, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
