"""The frames a user gives sample.py for image-to-video, extension and keyframes, read from image
or video files into the videos a FrameTask holds.

One --given entry per video:
  image      an image, or a video (its first frame)
  extend     a video (its first k frames)
  keyframes  "first.png,last.png", two images, or a video (its first and its last frame)
"""
import os

import numpy as np

from data import video_io
from diffusion.frame_sampling import FrameTask, fill_held

EXAMPLES = dict(image="--given=digit.png", extend="--given=clip.mp4",
                keyframes="--given=first.png,last.png or --given=clip.mp4")


def read_given(entries: list[str], task: FrameTask, shape: tuple[int, int, int],
               channels: int) -> np.ndarray:
  """float32 [len(entries), T, H, W, C] in [-1, 1]: each entry's frames at the task's given
  frames, resized to cover (H, W) and centre-cropped, the other frames filled by fill_held.
  Errors name the entry and what to give."""
  if not entries:
    raise ValueError(f"the {task.name} task needs its frames: {EXAMPLES[task.name]}")
  videos = []
  for entry in entries:
    frames = _entry_frames(entry, task)  # uint8 [k, h, w, 3], k = task.given.sum()
    frames = video_io.resize_and_center_crop(frames, shape[1:])
    frames = frames.astype(np.float32) / 127.5 - 1.0
    if channels == 1:
      frames = frames.mean(axis=-1, keepdims=True)
    elif channels != 3:
      raise ValueError(f"the model makes videos of {channels} channels; given frames are "
                       "grayscale (1) or RGB (3)")
    video = np.zeros((shape[0], *shape[1:], channels), np.float32)
    video[task.given] = frames
    videos.append(video)
  return fill_held(np.stack(videos), task)


def check_files(entries: list[str]) -> None:
  """FileNotFoundError naming the first --given entry with a path that is not a file."""
  for entry in entries:
    for path in entry.split(","):
      if not os.path.isfile(path):
        raise FileNotFoundError(f"--given={entry}: {path} is not a file")


def _entry_frames(entry: str, task: FrameTask) -> np.ndarray:
  check_files([entry])
  paths = entry.split(",")
  count = int(task.given.sum())
  if task.name == "keyframes":
    if len(paths) == 2:
      return np.concatenate([_first_frames(p, 1) for p in paths])
    if len(paths) == 1:
      total = video_io.probe_video(paths[0])[0]
      if total < 2:
        raise ValueError(f"--given={entry} has one frame; keyframes need a video or two images "
                         f"({EXAMPLES['keyframes']})")
      return np.concatenate([video_io.read_video_frames(paths[0], 1, start=0),
                             video_io.read_video_frames(paths[0], 1, start=total - 1)])
    raise ValueError(f"--given={entry}: keyframes take two images or one video")
  if len(paths) != 1:
    raise ValueError(f"--given={entry}: the {task.name} task takes one file per video")
  return _first_frames(paths[0], count)


def _first_frames(path: str, count: int) -> np.ndarray:
  """uint8 [count, h, w, 3], the file's first `count` frames (an image is one)."""
  total = video_io.probe_video(path)[0]
  if total < count:
    raise ValueError(f"--given={path} has {total} frame(s); the task gives the first {count}")
  return video_io.read_video_frames(path, count, start=0)
