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

from diffusion.flow_matching import shift_timesteps, timestep_shift

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
SAMPLERS = ("euler", "heun")
FULL_INTERVAL = (0.0, 1.0)  # guidance at every noise level


def sigma_schedule(num_steps: int, shift: float = 1.0) -> jax.Array:
  """float32 [num_steps + 1], from 1 down to 0, uniform in t and then shifted."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be at least 1, got {num_steps}")
  return shift_timesteps(jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32), shift)


def euler_step(velocity_fn: VelocityFn, x: jax.Array, sigma, sigma_next) -> jax.Array:
  """First order: x += (sigma_next - sigma) v(x, sigma). One evaluation."""
  return x + (sigma_next - sigma) * velocity_fn(x, sigma)


def heun_step(velocity_fn: VelocityFn, x: jax.Array, sigma, sigma_next) -> jax.Array:
  """Second order (trapezoidal predictor-corrector). Two evaluations."""
  return heun_correct(velocity_fn, x, velocity_fn(x, sigma), sigma, sigma_next)


def heun_correct(velocity_fn: VelocityFn, x: jax.Array, v: jax.Array, sigma,
                 sigma_next) -> jax.Array:
  """Heun's step from x whose velocity at sigma is v: velocity_fn evaluates the corrector at
  the Euler prediction."""
  dt = sigma_next - sigma
  v_next = velocity_fn(x + dt * v, sigma_next)
  return x + dt * (v + v_next) / 2


def integrate(velocity_fn: VelocityFn, x: jax.Array, sigmas: jax.Array, method: str = "euler",
              start: int = 0, stop: int | None = None) -> jax.Array:
  """Steps start .. stop-1 (default: all) of `method` in a fori_loop; Heun's step to sigma = 0
  is Euler (it would evaluate at sigma = 0), so all Heun steps take 2 * steps - 1 evaluations."""
  check_method(method)
  num_steps = sigmas.shape[0] - 1
  stop = num_steps if stop is None else stop
  if method == "euler":
    return jax.lax.fori_loop(
        start, stop, lambda i, x: euler_step(velocity_fn, x, sigmas[i], sigmas[i + 1]), x)
  x = jax.lax.fori_loop(start, min(stop, num_steps - 1),
                        lambda i, x: heun_step(velocity_fn, x, sigmas[i], sigmas[i + 1]), x)
  if stop == num_steps and start < stop:
    x = euler_step(velocity_fn, x, sigmas[-2], sigmas[-1])
  return x


def step_with_state(velocity_and_state: Callable, then: Callable, x: jax.Array,
                    sigmas: jax.Array, step: int, method: str = "euler"):
  """Step `step` (a Python int) of `method` whose first evaluation also gives a new state:
  velocity_and_state(x, sigma) -> (v, state); then(state) is the velocity function of Heun's
  second evaluation. -> (x, state). AdaSpa's search steps, diffusion/sparse_sampling.py."""
  check_method(method)
  v, state = velocity_and_state(x, sigmas[step])
  if method == "euler" or step == sigmas.shape[0] - 2:
    return x + (sigmas[step + 1] - sigmas[step]) * v, state
  return heun_correct(then(state), x, v, sigmas[step], sigmas[step + 1]), state


def check_method(method: str) -> None:
  if method not in SAMPLERS:
    raise ValueError(f"unknown sampler {method!r}; choose one of {list(SAMPLERS)}")


def guided(apply: Callable, cond: dict, guidance_scale: float,
           interval: tuple[float, float] = FULL_INTERVAL) -> Callable:
  """Classifier-free guidance, v_uncond + scale (v_cond - v_uncond), both halves in one batch,
  of apply(x, t, drop_cond, cond) -> (v, aux): -> (x, sigma) -> (v, aux of the whole batch).

  cond holds the model's conditioning keywords (text, text_mask or labels) for B samples; the
  unconditional half uses the same inputs with drop_cond True (null text or null label). A
  Python scale of 1.0 skips the unconditional half (drop_cond None); a traced one computes both.
  interval (lo, hi): guidance applies where lo <= sigma <= hi and the scale is 1 elsewhere
  (Kynkaanniemi et al. 2024: guidance at low noise adds artifacts, not prompt adherence).
  """
  check_interval(interval)
  unguided = isinstance(guidance_scale, (int, float)) and guidance_scale == 1.0

  def velocity(x, sigma):
    b = x.shape[0]
    if unguided:
      return apply(x, jnp.full((b,), sigma), None, cond)
    doubled = {k: jnp.concatenate([v, v]) for k, v in cond.items()}
    v, aux = apply(jnp.concatenate([x, x]), jnp.full((2 * b,), sigma), jnp.arange(2 * b) >= b,
                   doubled)
    v_cond, v_uncond = v[:b], v[b:]
    scale = guidance_scale
    if tuple(interval) != FULL_INTERVAL:
      scale = jnp.where((sigma >= interval[0]) & (sigma <= interval[1]), guidance_scale, 1.0)
    return v_uncond + scale * (v_cond - v_uncond), aux

  return velocity


def interval_errors(interval) -> list[str]:
  """What is wrong with a guidance interval: [] for a pair (lo, hi), 0 <= lo < hi <= 1."""
  try:
    lo, hi = (float(x) for x in interval)
  except (TypeError, ValueError):
    return [f"guidance_interval={interval} must be a pair (lo, hi) of noise levels"]
  if not 0.0 <= lo < hi <= 1.0:
    return [f"guidance_interval {(lo, hi)} must be (lo, hi) with 0 <= lo < hi <= 1, in noise "
            "levels sigma (1 is pure noise)"]
  return []


def check_interval(interval) -> None:
  if errors := interval_errors(interval):
    raise ValueError(errors[0])


def guided_velocity(model: nnx.Module, cond: dict, guidance_scale: float,
                    interval: tuple[float, float] = FULL_INTERVAL) -> VelocityFn:
  """The model's guided velocity (x, sigma) -> v, its attention as configured."""
  fn = guided(lambda x, t, drop, cond: (model(x, t, drop_cond=drop, **cond), None), cond,
              guidance_scale, interval)
  return lambda x, sigma: fn(x, sigma)[0]


def guidance_interval(sample: ml_collections.ConfigDict) -> tuple[float, float]:
  """config.sample.guidance_interval as a pair of floats."""
  lo, hi = sample.guidance_interval
  return float(lo), float(hi)


def sampling_shift(config: ml_collections.ConfigDict, num_tokens: int) -> float:
  """config.sample.shift if set, else the training shift at this many video tokens."""
  if config.sample.shift is not None:
    return float(config.sample.shift)
  return timestep_shift(num_tokens, config.flow)


def sample(model: nnx.Module, key: jax.Array, shape: tuple[int, ...], cond: dict, *,
           num_steps: int = 50, method: str = "euler", guidance_scale: float = 1.0,
           guidance_interval: tuple[float, float] = FULL_INTERVAL,
           shift: float = 1.0) -> jax.Array:
  """Videos float32 `shape` [B, T, H, W, C] drawn from noise N(0, I) made from `key`."""
  noise = jax.random.normal(key, shape, jnp.float32)
  return integrate(guided_velocity(model, cond, guidance_scale, guidance_interval), noise,
                   sigma_schedule(num_steps, shift), method)
