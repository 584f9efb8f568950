"""Sampling with given frames (Pusa's vectorized timesteps): image-to-video, extension,
keyframes from one model that takes a noise level per latent frame (DiT, t [B, nT]).

The given latent frames stay at their own noise level (`given_level`: 0, clean, or lightly
noised) through the whole trajectory while the other frames denoise from 1 to 0: the model sees
each frame's own level, the given frames' velocity is held at zero, and they come out exactly as
given. A FrameTask (frame_task) says which frames of the video a task gives and which latent
frames (a bool mask [nT]) that holds:

  image-to-video   the first frame
  extension        the first k frames of a video
  keyframes        the first and the last frames

A latent frame is held whole: with tokens of several frames (patch_size[0] > 1) or a causal VAE
(the first frame alone, then groups of 4) the given frames of image-to-video and extension must
fill the latent frames they are in; a keyframe is held still over the rest of its latent frame.
"""
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion.samplers import FULL_INTERVAL, guided, integrate, sigma_schedule


TASKS = ("text", "image", "extend", "keyframes")


def given_frames_mask(num_frames: int, task: str, count: int = 1) -> np.ndarray:
  """bool [num_frames] frames a task gives: "image" the first, "extend" the first `count`,
  "keyframes" the first and the last, "text" none."""
  index = np.arange(num_frames)
  if task == "text":
    return np.zeros(num_frames, bool)
  if task == "image":
    return index == 0
  if task == "extend":
    if not 1 <= count < num_frames:
      raise ValueError(f"extension gives 1 to {num_frames - 1} of the {num_frames} frames, got "
                       f"{count}")
    return index < count
  if task == "keyframes":
    if num_frames < 3:
      raise ValueError(f"keyframes need at least 3 frames to fill between, got {num_frames}")
    return (index == 0) | (index == num_frames - 1)
  raise ValueError(f"unknown task {task!r}: {', '.join(TASKS)}")


def token_frames(num_frames: int, patch_t: int, temporal_factor: int = 0) -> np.ndarray:
  """int [num_frames]: the DiT's latent frame (t index of its tokens) each video frame is coded
  in. In pixel space (temporal_factor 0) frame // patch_t; in a causal VAE's latents (1 + f k
  frames, f = temporal_factor) frame 0 is latent 0 and frames 1 + f (j - 1) .. f j latent j,
  and the DiT's tokens group patch_t latent frames."""
  frames = np.arange(num_frames)
  if temporal_factor:
    frames = (frames + temporal_factor - 1) // temporal_factor  # 0 | 1..f | f+1..2f ...
  return frames // patch_t


@dataclasses.dataclass(frozen=True)
class FrameTask:
  """Which frames of the videos a task gives and which latent frames the sampler holds.

  given  bool [T] the video frames the user gives (the first for image-to-video, ...)
  held   bool [T] the frames of the held latent frames: `given`, plus, where a held latent frame
         codes several frames, its other frames (a keyframe is held still over them)
  mask   bool [nT] the DiT's held latent frames
  level  the noise level the held frames keep (0: clean)
  """
  name: str
  given: np.ndarray
  held: np.ndarray
  mask: np.ndarray
  level: float = 0.0


def frame_task(name: str, count: int, frames: np.ndarray, level: float = 0.0) -> FrameTask:
  """The FrameTask of task `name` (`count` frames for "extend") on videos whose frames are coded
  in latent frames `frames` (token_frames); a task whose frames do not fill whole latent frames
  is an error that says which counts do."""
  if not 0.0 <= level < 1.0:
    raise ValueError(f"the given frames' noise level must be in [0, 1), got {level}")
  given = given_frames_mask(len(frames), name, count)
  if name != "text" and frames[-1] == 0:
    raise ValueError(f"{name}: this model codes all {len(frames)} frames of a video in one "
                     "latent frame, so none can be given while others are sampled; train one "
                     "whose tokens hold fewer frames (e.g. configs/quickstart.py:patch_t=1)")
  mask = np.zeros(int(frames[-1]) + 1, bool)
  mask[frames[given]] = True
  held = mask[frames]
  if name in ("image", "extend") and (held != given).any():
    fits = [k for k in range(1, len(frames)) if frames[k] != frames[k - 1]]
    what = ("image-to-video gives one frame" if name == "image"
            else f"extension from {count} frames")
    raise ValueError(f"{what}, but this model codes frames in latent frames of "
                     f"{np.bincount(frames).tolist()} frames: a given latent frame must be whole "
                     f"(extend from {fits} frames; image-to-video needs a model whose first "
                     "latent frame is one frame: model.patch_size[0]=1, in pixels or in a "
                     "causal VAE's latents)")
  if mask.all():
    raise ValueError(f"{name}: the given frames fill every latent frame; nothing is left to "
                     "sample")
  return FrameTask(name, given, held, mask, float(level))


def fill_held(videos: np.ndarray, task: FrameTask) -> np.ndarray:
  """videos [N, T, H, W, C] whose frames not given are each the nearest given frame (the
  earlier on a tie): what the held latent frames are made from, a still where a given frame
  stands for several; a causal VAE's encoder also reads the frames before them."""
  given = np.flatnonzero(task.given)
  index = np.arange(len(task.given))
  nearest = given[np.abs(index[:, None] - given[None, :]).argmin(axis=1)]
  return np.asarray(videos)[:, nearest]


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
