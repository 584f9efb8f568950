"""Sampling with given frames (Pusa's vectorized timesteps): image-to-video, extension,
keyframes from one model that takes a noise level per latent frame (DiT, t [B, nT]).

The given latent frames stay at their own noise level (`given_level`: 0, clean, or lightly
noised) through the whole trajectory while the other frames denoise from 1 to 0: the model sees
each frame's own level, the given frames' velocity is held at zero, and they come out exactly as
given. Which frames are given is a bool mask over the latent frames [nT]:

  image-to-video   the first latent frame
  extension        the first k latent frames of a video
  keyframes        the first and the last latent frames
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion.samplers import FULL_INTERVAL, guided, integrate, sigma_schedule


def given_frames_mask(num_frames: int, task: str, count: int = 1) -> jax.Array:
  """bool [num_frames] latent frames a task gives: "image" the first, "extend" the first
  `count`, "keyframes" the first and the last, "text" none."""
  index = jnp.arange(num_frames)
  if task == "text":
    return jnp.zeros(num_frames, bool)
  if task == "image":
    return index == 0
  if task == "extend":
    if not 1 <= count < num_frames:
      raise ValueError(f"extension gives 1 to {num_frames - 1} latent frames, got {count}")
    return index < count
  if task == "keyframes":
    if num_frames < 3:
      raise ValueError(f"keyframes need at least 3 latent frames to fill between, got "
                       f"{num_frames}")
    return (index == 0) | (index == num_frames - 1)
  raise ValueError(f"unknown task {task!r}: text, image, extend or keyframes")


def frame_velocity(apply: Callable, given: jax.Array, mask: jax.Array, patch_t: int,
                   given_level: float, noise: jax.Array, cond: dict, guidance_scale: float,
                   interval=FULL_INTERVAL) -> tuple[Callable, Callable]:
  """(velocity (x, sigma) -> v, pin x -> x): the guided velocity of apply(x, t [B, nT], drop,
  cond) -> v with the given latent frames (mask [nT]) at given_level and held there (their
  velocity zero); pin puts the given frames (noised to given_level) into a video."""
  frames = jnp.repeat(mask, patch_t)[None, :, None, None, None]  # [1, T, 1, 1, 1]
  held = (1.0 - given_level) * given + given_level * noise

  def pin(x):
    return jnp.where(frames, held, x)

  def per_frame(x, t, drop, cond):
    levels = jnp.where(mask[None, :], given_level, t[:, None])  # [B, nT]
    return apply(x, levels, drop, cond)

  v_fn = guided(per_frame, cond, guidance_scale, interval)

  def velocity(x, sigma):
    return jnp.where(frames, 0.0, v_fn(pin(x), sigma)[0])

  return velocity, pin


def sample_given_frames(model: nnx.Module, key: jax.Array, given: jax.Array, mask: jax.Array,
                        cond: dict, *, num_steps: int = 50, method: str = "euler",
                        guidance_scale: float = 1.0,
                        guidance_interval: tuple[float, float] = FULL_INTERVAL,
                        shift: float = 1.0, given_level: float = 0.0) -> jax.Array:
  """Videos float32 [B, T, H, W, C] whose latent frames `mask` [nT] are `given` (same shape;
  the other frames' values are ignored) and the rest sampled from noise made from `key`."""
  noise = jax.random.normal(key, given.shape, jnp.float32)
  apply = lambda x, t, drop, cond: (model(x, t, drop_cond=drop, **cond), None)
  velocity, pin = frame_velocity(apply, given.astype(jnp.float32), mask,
                                 model.config.patch_size[0], given_level, noise, cond,
                                 guidance_scale, guidance_interval)
  x = integrate(velocity, pin(noise), sigma_schedule(num_steps, shift), method)
  frames = jnp.repeat(mask, model.config.patch_size[0])[None, :, None, None, None]
  return jnp.where(frames, given.astype(jnp.float32), x)
