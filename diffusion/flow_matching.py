"""Rectified-flow matching: x_t = (1 - t) x_0 + t noise, target velocity v = noise - x_0.

t = 0 is data and t = 1 is noise; samplers integrate dx/dt = v from t = 1 down to 0.
Training timesteps are logit-normal, then shifted towards noise by a factor that grows with the
number of tokens (SD3's resolution-dependent shift): more tokens keep more signal at a given t.
The settings are config.flow (configs/common.py:flow_config).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import nnx


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t for data x0 and noise [B, ...] at t [B] (or any leading part of x0's shape, e.g. per
  packed token: x0 [B, L, P] at t [B, L])."""
  t = t.reshape(t.shape + (1,) * (x0.ndim - t.ndim))
  return (1 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  return noise - x0


def logit_normal_timesteps(key: jax.Array, batch: int | tuple[int, ...], mean: float = 0.0,
                           std: float = 1.0) -> jax.Array:
  """float32 [batch] (or of shape `batch`, a tuple) of sigmoid(mean + std * N(0, 1))."""
  shape = (batch,) if isinstance(batch, int) else tuple(batch)
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, jnp.float32))


def shift_timesteps(t: jax.Array, shift: float) -> jax.Array:
  """t -> shift t / (1 + (shift - 1) t): a monotone map of [0, 1] onto itself, towards 1."""
  return shift * t / (1 + (shift - 1) * t)


def timestep_shift(num_tokens, config: ml_collections.ConfigDict):
  """config.shift scaled by sqrt(num_tokens / shift_base_tokens) (SD3), or as is if base is 0.
  num_tokens an int gives a float; an array (tokens per packed example) gives an array."""
  if config.shift_base_tokens <= 0:
    return float(config.shift)
  if isinstance(num_tokens, (int, np.integer)):
    return float(config.shift) * math.sqrt(num_tokens / config.shift_base_tokens)
  return config.shift * jnp.sqrt(jnp.asarray(num_tokens, jnp.float32) / config.shift_base_tokens)


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

  num_tokens (video tokens per sample) sets the resolution-dependent timestep shift. A batch of
  reflow pairs (data/reflow_pairs.py) brings the noise each video was sampled from,
  batch["noise"]: the straight path between them is the target (rectified flow's reflow).
  config.distill_timesteps, if any, are the noise levels t is drawn from instead (uniformly):
  (1.0,) on reflow pairs trains the one-step map from noise to the teacher's video (InstaFlow's
  distillation, with a squared error).

  config.frame_timesteps (a probability, Pusa's vectorized timestep adaptation): each video
  draws, with that probability, an independent noise level per latent frame (t [B, T /
  patch_t], each shifted as the scalar one) and otherwise one for all its frames (t [B, nT],
  all equal); 0 keeps t [B] and today's random stream.
  """
  x0 = batch["video"]
  b = x0.shape[0]
  key_t, key_noise, key_drop = jax.random.split(key, 3)
  levels = tuple(config.get("distill_timesteps", ()))
  if levels:
    t = jnp.asarray(levels, jnp.float32)[jax.random.randint(key_t, (b,), 0, len(levels))]
  else:
    t = logit_normal_timesteps(key_t, b, config.logit_mean, config.logit_std)
    t = shift_timesteps(t, timestep_shift(num_tokens, config))
    if config.get("frame_timesteps", 0.0) > 0:
      t = mix_frame_timesteps(jax.random.fold_in(key, 1), t,
                              x0.shape[1] // model.config.patch_size[0],
                              timestep_shift(num_tokens, config), config)
  noise = (batch["noise"].astype(jnp.float32) if "noise" in batch
           else jax.random.normal(key_noise, x0.shape, jnp.float32))
  drop = conditioning_dropout(key_drop, b, config.cond_dropout)
  return velocity_loss(model, batch, t, noise, drop)


def mix_frame_timesteps(key: jax.Array, t: jax.Array, num_frames: int, shift,
                        config: ml_collections.ConfigDict) -> jax.Array:
  """t [B] -> [B, num_frames]: a video keeps its t on every latent frame, or, with probability
  config.frame_timesteps, draws its own (logit-normal, shifted) for each frame."""
  key_frames, key_which = jax.random.split(key)
  own = logit_normal_timesteps(key_frames, (t.shape[0], num_frames), config.logit_mean,
                               config.logit_std)
  own = shift_timesteps(own, shift)
  independent = jax.random.bernoulli(key_which, config.frame_timesteps, (t.shape[0], 1))
  return jnp.where(independent, own, t[:, None])


def frame_noise_levels(t: jax.Array, patch_t: int) -> jax.Array:
  """A video's noise levels as the interpolation takes them: t [B] as is; one per latent frame
  [B, nT] -> one per frame [B, nT * patch_t]."""
  return t if t.ndim == 1 else jnp.repeat(t, patch_t, axis=1)


def velocity_loss(model: nnx.Module, batch: dict, t: jax.Array, noise: jax.Array,
                  drop: jax.Array) -> tuple[jax.Array, dict]:
  """flow_matching_loss at given timesteps t [B] (or per latent frame [B, nT]: each frame
  interpolated at its own level), noise (the video's shape) and dropout [B]. The loss is the
  mean over frames of each frame's mean squared error (frames are equal in size), so equal
  per-frame timesteps give the scalar loss."""
  x0 = batch["video"].astype(jnp.float32)
  levels = t if t.ndim == 1 else frame_noise_levels(t, model.config.patch_size[0])
  prediction = model(interpolate(x0, noise, levels), t, drop_cond=drop,
                     **condition_inputs(batch))
  loss = jnp.mean(jnp.square(prediction - velocity_target(x0, noise)))
  return loss, {"loss": loss, "t_mean": t.mean()}


def slot_token_counts(segment_ids: jax.Array, num_slots: int) -> jax.Array:
  """int32 [B, S]: how many tokens of each packed row [B, L] belong to slot s (segment s + 1)."""
  slots = jnp.arange(1, num_slots + 1, dtype=segment_ids.dtype)
  return jnp.sum(segment_ids[..., None] == slots, axis=1, dtype=jnp.int32)


def num_slots(batch: dict) -> int:
  """S, the example slots per row of a packed batch (from its text or labels [B, S, ...])."""
  return batch["text"].shape[1] if "text" in batch else batch["label"].shape[1]


def packed_flow_matching_loss(model: nnx.Module, batch: dict, key: jax.Array,
                              config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """flow_matching_loss of packed rows (data/packing.py): batch["patches"] [B, L, P] with
  segment_ids [B, L], positions [B, L, 3] and text/text_mask [B, S, ...] or label [B, S].

  Every example draws its own timestep (shifted by its own token count), noise and dropout;
  the loss is the mean over examples of each one's mean squared velocity error, so an example
  weighs the same however many tokens it has, as in a batch of equal shapes.
  """
  x0, segment_ids = batch["patches"], batch["segment_ids"]
  shape = (x0.shape[0], num_slots(batch))
  key_t, key_noise, key_drop = jax.random.split(key, 3)
  t = logit_normal_timesteps(key_t, shape, config.logit_mean, config.logit_std)
  counts = slot_token_counts(segment_ids, shape[1])
  t = shift_timesteps(t, timestep_shift(counts, config))
  noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
  drop = jax.random.bernoulli(key_drop, config.cond_dropout, shape)
  return packed_velocity_loss(model, batch, t, noise, drop)


def packed_velocity_loss(model: nnx.Module, batch: dict, t: jax.Array, noise: jax.Array,
                         drop: jax.Array) -> tuple[jax.Array, dict]:
  """packed_flow_matching_loss at given timesteps t [B, S], noise [B, L, P], dropout [B, S]."""
  x0, segment_ids = batch["patches"].astype(jnp.float32), batch["segment_ids"]
  token_t = jnp.take_along_axis(t, jnp.maximum(segment_ids - 1, 0), axis=1)  # [B, L]
  prediction = model.packed(interpolate(x0, noise, token_t), t, segment_ids,
                            batch["positions"], drop_cond=drop, **condition_inputs(batch))
  error = jnp.mean(jnp.square(prediction - velocity_target(x0, noise)), axis=-1)  # [B, L]
  in_slot = segment_ids[..., None] == jnp.arange(1, t.shape[1] + 1)  # [B, L, S]
  counts = in_slot.sum(1)  # [B, S]
  per_example = jnp.sum(jnp.where(in_slot, error[..., None], 0.0), axis=1) / jnp.maximum(
      counts, 1)
  real = counts > 0
  examples = jnp.maximum(real.sum(), 1)
  loss = jnp.sum(jnp.where(real, per_example, 0.0)) / examples
  return loss, {"loss": loss, "t_mean": jnp.sum(jnp.where(real, t, 0.0)) / examples,
                "examples": real.sum().astype(jnp.float32)}
