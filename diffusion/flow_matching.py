"""Rectified-flow matching: x_t = (1 - t) x_0 + t noise, target velocity v = noise - x_0.

t = 0 is data and t = 1 is noise; samplers integrate dx/dt = v from t = 1 down to 0.
Training timesteps are logit-normal, then shifted towards noise by a factor that grows with the
number of tokens (SD3's resolution-dependent shift): more tokens keep more signal at a given t.
The settings are config.flow (configs/common.py:flow_config).
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t for data x0 and noise [B, ...] at t [B]."""
  t = t.reshape(t.shape + (1,) * (x0.ndim - 1))
  return (1 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  return noise - x0


def logit_normal_timesteps(key: jax.Array, batch: int, mean: float = 0.0,
                           std: float = 1.0) -> jax.Array:
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), jnp.float32))


def shift_timesteps(t: jax.Array, shift: float) -> jax.Array:
  """t -> shift t / (1 + (shift - 1) t): a monotone map of [0, 1] onto itself, towards 1."""
  return shift * t / (1 + (shift - 1) * t)


def timestep_shift(num_tokens: int, config: ml_collections.ConfigDict) -> float:
  """config.shift scaled by sqrt(num_tokens / shift_base_tokens) (SD3), or as is if base is 0."""
  if config.shift_base_tokens <= 0:
    return float(config.shift)
  return float(config.shift) * math.sqrt(num_tokens / config.shift_base_tokens)


def conditioning_dropout(key: jax.Array, batch: int, rate: float) -> jax.Array:
  """bool [B]: True where a sample trains unconditionally (null text or null label)."""
  return jax.random.bernoulli(key, rate, (batch,))


def condition_inputs(batch: dict) -> dict:
  """The model's conditioning keyword arguments found in a data batch."""
  names = {"text": "text", "text_mask": "text_mask", "label": "labels"}
  return {arg: batch[key] for key, arg in names.items() if key in batch}


def flow_matching_loss(model: nnx.Module, batch: dict, key: jax.Array, num_tokens: int,
                       config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """Mean squared velocity error, float32 scalar, on batch["video"] [B, T, H, W, C].

  num_tokens (video tokens per sample) sets the resolution-dependent timestep shift.
  """
  x0 = batch["video"].astype(jnp.float32)
  b = x0.shape[0]
  key_t, key_noise, key_drop = jax.random.split(key, 3)
  t = logit_normal_timesteps(key_t, b, config.logit_mean, config.logit_std)
  t = shift_timesteps(t, timestep_shift(num_tokens, config))
  noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
  drop = conditioning_dropout(key_drop, b, config.cond_dropout)
  prediction = model(interpolate(x0, noise, t), t, drop_cond=drop, **condition_inputs(batch))
  loss = jnp.mean(jnp.square(prediction - velocity_target(x0, noise)))
  return loss, {"loss": loss, "t_mean": t.mean()}
