"""What python -m eval --task=image|extend|keyframes measures on moving digits: how well videos
sampled around given frames (diffusion/frame_sampling.py) keep them and go on from them.

The given frames are those of held-out real videos, the prompts their captions. For the sampled
frames (those the task does not hold):

  given_frames_mse            the given frames in the output against the input (0 in pixel space,
                              where they are held exactly; a latent DiT's VAE round trip)
  frame_digit_accuracy        a still-image classifier's digit of each sampled frame against the
                              given frames' digit
  appearance_mse              each sampled frame against the nearest given frame moved to where
                              the sampled frame's digit is: the same handwriting, not a new digit
                              (other_handwriting_appearance_mse: what real frames of the same
                              digit in another hand score; a blank frame scores about 0.2)
  motion_direction_accuracy   image and extend: the way the digit moved from the last given frame
                              to the last frame (its intensity centroid), of the eight compass
                              directions, against the caption's (the given video's) direction
  speed                       image and extend: that motion in pixels per frame
  path_error                  keyframes: how far (pixels) the middle frames' digits are from the
                              straight path between the two keyframes' digits, at their frame

The same numbers of the real videos themselves (real_*) are what a perfect model would score.
"""
import numpy as np

from data.moving_digits import DIRECTIONS
from diffusion.frame_sampling import FrameTask
from eval import digit_classifier

_UNIT = np.array([d for d, _ in DIRECTIONS], np.float64)
_UNIT /= np.linalg.norm(_UNIT, axis=1, keepdims=True)  # [8, 2] (dy, dx) unit vectors
STILL_MOTION = 1.0  # pixels: a shorter displacement is no motion (no direction)


def centroids(videos: np.ndarray) -> np.ndarray:
  """float64 [N, T, 2] (y, x) centroid of each frame's bright pixels (values above 0 of [-1, 1],
  weighted by how far above); the frame's centre when there are none."""
  weight = np.clip(np.asarray(videos, np.float64).mean(-1), 0.0, None)  # [N, T, H, W]
  h, w = weight.shape[-2:]
  total = weight.sum(axis=(-2, -1))
  empty = total == 0
  total = np.where(empty, 1.0, total)
  y = (weight.sum(-1) * np.arange(h)).sum(-1) / total
  x = (weight.sum(-2) * np.arange(w)).sum(-1) / total
  return np.stack([np.where(empty, (h - 1) / 2, y), np.where(empty, (w - 1) / 2, x)], axis=-1)


def compass(displacement: np.ndarray) -> np.ndarray:
  """int [N] the index in DIRECTIONS nearest each (dy, dx) [N, 2]; -1 when shorter than
  STILL_MOTION."""
  length = np.linalg.norm(displacement, axis=-1)
  nearest = (displacement @ _UNIT.T).argmax(-1)
  return np.where(length < STILL_MOTION, -1, nearest)


def moved(frames: np.ndarray, shift: np.ndarray) -> np.ndarray:
  """frames [N, H, W, C] each moved by its integer (dy, dx) [N, 2], the background (-1) filling
  what comes in."""
  out = np.full_like(frames, -1.0)
  h, w = frames.shape[1:3]
  for i, (dy, dx) in enumerate(np.rint(shift).astype(int)):
    src = frames[i, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
  return out


def task_numbers(task: FrameTask, videos: np.ndarray, given: np.ndarray, captions,
                 still_classifier) -> dict:
  """The task's numbers (module docstring) for videos [N, T, H, W, C] sampled around the given
  frames of `given` (same shape), with captions naming one digit and its direction."""
  digits, directions = digit_classifier.labels_of(captions)
  sampled = np.flatnonzero(~task.held)
  given_index = np.flatnonzero(task.given)
  numbers = dict(given_frames_mse=float(np.mean((videos[:, task.given]
                                                 - given[:, task.given]) ** 2)))
  frames = videos[:, sampled]  # [N, S, H, W, C]
  n, s = frames.shape[:2]
  predicted = digit_classifier.predict(still_classifier, frames.reshape(n * s, 1,
                                                                        *frames.shape[2:]))
  numbers["frame_digit_accuracy"] = float(np.mean(predicted["digit"].reshape(n, s)
                                                  == digits[:, None]))
  where = centroids(videos)  # [N, T, 2]
  numbers["appearance_mse"] = appearance_mse(task, videos, given, where)
  if task.name in ("image", "extend"):
    last_given = given_index.max()
    span = videos.shape[1] - 1 - last_given
    displacement = where[:, -1] - where[:, last_given]
    numbers["motion_direction_accuracy"] = float(np.mean(compass(displacement) == directions))
    numbers["speed"] = float(np.mean(np.linalg.norm(displacement, axis=-1)) / span)
  else:  # keyframes: the middle frames on the straight path between the two keyframes
    first, last = given_index.min(), given_index.max()
    share = (sampled - first) / (last - first)  # [S]
    step = (where[:, last] - where[:, first])[:, None]  # [N, 1, 2]
    path = where[:, first, None] + share[None, :, None] * step
    numbers["path_error"] = float(np.mean(np.linalg.norm(where[:, sampled] - path, axis=-1)))
  return numbers


def appearance_mse(task: FrameTask, videos: np.ndarray, given: np.ndarray,
                   where: np.ndarray | None = None) -> float:
  """Mean squared error of each sampled frame of videos [N, T, H, W, C] against the nearest
  given frame of `given`, moved to where the sampled frame's digit is (where: the videos'
  centroids, computed when not given)."""
  where = centroids(videos) if where is None else where
  sampled, given_index = np.flatnonzero(~task.held), np.flatnonzero(task.given)
  nearest = given_index[np.abs(sampled[:, None] - given_index[None, :]).argmin(axis=1)]
  errors = [np.mean((videos[:, frame] - moved(given[:, source],
                                              where[:, frame] - where[:, source])) ** 2)
            for frame, source in zip(sampled, nearest)]
  return float(np.mean(errors))


def other_handwriting(task: FrameTask, real: np.ndarray, captions) -> float:
  """appearance_mse of real videos whose sampled frames are those of the next real video of the
  same digit: what the right digit in another hand scores (videos with no other of their digit
  are left out)."""
  digits, _ = digit_classifier.labels_of(captions)
  pairs = []
  for i, digit in enumerate(digits):
    same = np.flatnonzero(digits == digit)
    later = same[same > i]
    other = later[0] if len(later) else same[0]
    if other != i:
      pairs.append((i, other))
  if not pairs:
    return float("nan")
  mine, others = np.array(pairs).T
  mixed = real[mine].copy()
  mixed[:, ~task.held] = real[others][:, ~task.held]
  return appearance_mse(task, mixed, real[mine])


def task_metrics(task: FrameTask, generated: np.ndarray, real: np.ndarray, captions,
                 still_classifier) -> dict:
  """task_numbers of the videos sampled around the real videos' frames, and the real videos'
  own (real_*)."""
  own = task_numbers(task, real, real, captions, still_classifier)
  return (task_numbers(task, generated, real, captions, still_classifier)
          | {f"real_{k}": v for k, v in own.items() if k != "given_frames_mse"}
          | dict(other_handwriting_appearance_mse=other_handwriting(task, real, captions)))


def still_classifier(workdir: str, data, channels: int, log=print, **train_options):
  """The digit classifier of single frames of the config's moving digits (cached in the run
  like the video classifier), and its metadata."""
  still = data.copy_and_resolve_references()
  still.kwargs.num_frames = 1
  return digit_classifier.trained_classifier(workdir, still, 1, channels, log=log,
                                             **train_options)
