import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import flow_config
from diffusion import flow_matching as fm


def test_interpolation_runs_from_data_at_0_to_noise_at_1(key):
  kx, kn, kt = jax.random.split(key, 3)
  x0, noise = jax.random.normal(kx, (3, 2, 4, 4, 3)), jax.random.normal(kn, (3, 2, 4, 4, 3))
  np.testing.assert_allclose(fm.interpolate(x0, noise, jnp.zeros(3)), x0)
  np.testing.assert_allclose(fm.interpolate(x0, noise, jnp.ones(3)), noise)
  # The target velocity is the time derivative of the path.
  t = jax.random.uniform(kt, (3,))
  derivative = jax.jvp(lambda t: fm.interpolate(x0, noise, t), (t,), (jnp.ones(3),))[1]
  np.testing.assert_allclose(derivative, fm.velocity_target(x0, noise), rtol=1e-5, atol=1e-5)


def test_logit_normal_timesteps_lie_in_0_1_around_sigmoid_of_the_mean(key):
  t = fm.logit_normal_timesteps(key, 20_000, mean=0.5, std=1.0)
  assert float(t.min()) > 0 and float(t.max()) < 1
  assert abs(float(jnp.median(t)) - float(jax.nn.sigmoid(0.5))) < 0.01


def test_shift_keeps_the_endpoints_and_moves_towards_noise():
  t = jnp.linspace(0, 1, 11)
  shifted = fm.shift_timesteps(t, 3.0)
  np.testing.assert_allclose(shifted[jnp.array([0, -1])], [0.0, 1.0])
  assert bool(jnp.all(jnp.diff(shifted) > 0)) and bool(jnp.all(shifted[1:-1] > t[1:-1]))
  np.testing.assert_allclose(fm.shift_timesteps(t, 1.0), t)


def test_shift_grows_with_the_square_root_of_the_token_count():
  config = flow_config(shift=2.0, shift_base_tokens=1024)
  assert fm.timestep_shift(1024, config) == pytest.approx(2.0)
  assert fm.timestep_shift(4096, config) == pytest.approx(4.0)
  assert fm.timestep_shift(4096, flow_config(shift=2.0)) == 2.0


def test_conditioning_dropout_drops_at_the_given_rate(key):
  assert float(fm.conditioning_dropout(key, 20_000, 0.1).mean()) == pytest.approx(0.1, abs=0.01)


def test_loss_is_zero_for_the_exact_velocity_and_positive_otherwise(key):
  """One training video x0: an oracle knowing x0 predicts v = (x_t - x0) / t exactly."""
  x0 = jax.random.normal(key, (4, 2, 4, 4, 3))
  config = flow_config(shift=3.0)

  def oracle(x_t, t, **cond):
    return (x_t - x0) / t.reshape(-1, 1, 1, 1, 1)

  loss, metrics = fm.flow_matching_loss(oracle, {"video": x0}, key, 32, config)
  assert float(loss) < 1e-8 and 0 < float(metrics["t_mean"]) < 1
  wrong, _ = fm.flow_matching_loss(lambda x_t, t, **c: -oracle(x_t, t), {"video": x0}, key, 32,
                                   config)
  assert float(wrong) > 1.0


def test_loss_passes_the_batch_conditioning_and_dropout_to_the_model(key):
  seen = {}

  def model(x_t, t, **cond):
    seen.update(cond)
    return jnp.zeros_like(x_t)

  batch = {"video": jnp.ones((8, 1, 2, 2, 3)), "label": jnp.arange(8)}
  fm.flow_matching_loss(model, batch, key, 4, flow_config(cond_dropout=0.5))
  assert set(seen) == {"labels", "drop_cond"} and seen["drop_cond"].shape == (8,)
