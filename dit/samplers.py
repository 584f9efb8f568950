"""ODE samplers for flow matching: Euler and Heun over a shifted sigma schedule, with
classifier-free guidance. The noise comes from an explicit key, so a key gives one video.

A velocity function maps (x [B, ...], sigma scalar) -> v [B, ...]; samplers integrate
dx/dsigma = v from sigma = 1 (noise) to 0 (data).
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from dit.flow_matching import shift_timesteps, timestep_shift

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
SAMPLERS = ("euler", "heun")


def sigma_schedule(num_steps: int, shift: float = 1.0) -> jax.Array:
  """float32 [num_steps + 1], from 1 down to 0, uniform in t and then shifted."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be at least 1, got {num_steps}")
  return shift_timesteps(jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32), shift)


def euler(velocity_fn: VelocityFn, x: jax.Array, sigmas: jax.Array) -> jax.Array:
  """First order: x += (sigma_next - sigma) v(x, sigma). One evaluation per step."""

  def step(i, x):
    return x + (sigmas[i + 1] - sigmas[i]) * velocity_fn(x, sigmas[i])

  return jax.lax.fori_loop(0, sigmas.shape[0] - 1, step, x)


def heun(velocity_fn: VelocityFn, x: jax.Array, sigmas: jax.Array) -> jax.Array:
  """Second order (trapezoidal predictor-corrector); the last step, to sigma = 0, is Euler.

  2 * steps - 1 evaluations.
  """

  def step(i, x):
    dt = sigmas[i + 1] - sigmas[i]
    v = velocity_fn(x, sigmas[i])
    v_next = velocity_fn(x + dt * v, sigmas[i + 1])
    return x + dt * (v + v_next) / 2

  x = jax.lax.fori_loop(0, sigmas.shape[0] - 2, step, x)
  return x + (sigmas[-1] - sigmas[-2]) * velocity_fn(x, sigmas[-2])


def solve(velocity_fn: VelocityFn, noise: jax.Array, sigmas: jax.Array,
          method: str = "euler") -> jax.Array:
  if method not in SAMPLERS:
    raise ValueError(f"unknown sampler {method!r}; choose one of {list(SAMPLERS)}")
  return {"euler": euler, "heun": heun}[method](velocity_fn, noise, sigmas)


def guided_velocity(model: nnx.Module, cond: dict, guidance_scale: float) -> VelocityFn:
  """Classifier-free guidance: v_uncond + scale (v_cond - v_uncond), both in one batch.

  cond holds the model's conditioning keywords (text, text_mask or labels) for B samples; the
  unconditional half uses the same inputs with drop_cond=True (null text or null label).
  """

  # A Python 1.0 skips the unconditional half; a traced scale always computes both.
  unguided = isinstance(guidance_scale, (int, float)) and guidance_scale == 1.0

  def velocity(x, sigma):
    b = x.shape[0]
    if unguided:
      return model(x, jnp.full((b,), sigma), **cond)
    doubled = {k: jnp.concatenate([v, v]) for k, v in cond.items()}
    drop = jnp.arange(2 * b) >= b
    v = model(jnp.concatenate([x, x]), jnp.full((2 * b,), sigma), drop_cond=drop, **doubled)
    v_cond, v_uncond = v[:b], v[b:]
    return v_uncond + guidance_scale * (v_cond - v_uncond)

  return velocity


def sampling_shift(config: ml_collections.ConfigDict, num_tokens: int) -> float:
  """config.sample.shift if set, else the training shift at this many video tokens."""
  if config.sample.get("shift") is not None:
    return float(config.sample.shift)
  return timestep_shift(num_tokens, config.flow)


def sample(model: nnx.Module, key: jax.Array, shape: tuple[int, ...], cond: dict, *,
           num_steps: int = 50, method: str = "euler", guidance_scale: float = 1.0,
           shift: float = 1.0) -> jax.Array:
  """Videos float32 `shape` [B, T, H, W, C] drawn from noise N(0, I) made from `key`."""
  noise = jax.random.normal(key, shape, jnp.float32)
  return solve(guided_velocity(model, cond, guidance_scale), noise,
               sigma_schedule(num_steps, shift), method)
