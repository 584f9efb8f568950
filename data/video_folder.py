"""A folder of video files as a data source, captioned by sidecar text files or file names.

    root/
      cats/clip_01.mp4      label 0 ("cats" is the first class folder), caption "clip 01"
      cats/clip_01.txt      ... unless this sidecar exists: then its text is the caption
      dogs/a-dog-runs.webm  label 1, caption "a dog runs"

Files are found recursively and sorted, so index i is the same file on every host. Sidecar
captions are read as UTF-8 (a byte-order mark is dropped). A video that cannot be decoded, or
whose caption is not UTF-8, is skipped: a warning names the file once, it is counted in
`skipped`, and the example is taken from the next readable file instead. ImageFolder reads a
folder of still images the same way, as one-frame videos.
"""

import os

import numpy as np
from absl import logging

from data.shapes import check_shapes, nearest_shape
from data.video_io import (IMAGE_EXTENSIONS, UnreadableVideo, probe_video, read_video_frames,
                           resize_and_center_crop)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv")


def caption_from_stem(stem: str) -> str:
  return " ".join(stem.replace("_", " ").replace("-", " ").split())


class VideoFolder:
  """A random-access source of clips from the video files under `root`.

  Each item is {"video": float32 [num_frames, h, w, 3] in [-1, 1], "caption": str,
  "label": int32}. The clip starts at a random frame drawn from (seed, index), takes every
  `stride`-th frame (a short video repeats its last frame), and is resized to cover `size` and
  center-cropped.

  With `shapes` (allowed (T, H, W)) each file keeps a shape of its own instead: the nearest
  allowed one to its aspect ratio, size and duration (data/shapes.py), found when the folder
  is opened (every file is probed once); example_shape(index) gives it without decoding, for
  data.batching "buckets" or "packing". The label is the index of the file's folder (relative to root) among the
  sorted folders holding videos: 0 for every file when they lie flat in root.

  `skipped` (absolute path -> reason) and `num_skipped` count the unreadable files this copy of the
  source has met; each worker process holds its own copy.
  """

  def __init__(self, root: str, num_frames: int = 16, size: tuple[int, int] | int = (64, 64),
               stride: int = 1, seed: int = 0, extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
               shapes=None):
    if isinstance(size, int):
      size = (size, size)
    size = tuple(size)
    problems = []
    if num_frames < 1:
      problems.append(f"num_frames must be positive, got {num_frames}")
    if stride < 1:
      problems.append(f"stride must be positive, got {stride}")
    if len(size) != 2 or min(size) < 1:
      problems.append(f"size must be a positive (height, width), got {size}")
    if isinstance(extensions, str) or not extensions:
      problems.append(f"extensions must be a non-empty tuple like ('.mp4',), got {extensions!r}")
    if problems:
      raise ValueError("VideoFolder: " + "; ".join(problems))
    if not os.fspath(root):
      raise ValueError("VideoFolder: no root given: set the folder of videos, e.g. "
                       "--config.data.kwargs.root=/path/to/videos")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
      raise ValueError(f"VideoFolder: root {root} is not a folder: pass the folder that holds "
                       "the videos (class subfolders optional)")
    extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    self.root = root
    self.num_frames = num_frames
    self.size = (int(size[0]), int(size[1]))
    self.stride = stride
    self.seed = seed
    self.extensions = extensions
    # paths: sorted paths relative to root; sidecars: those with a <stem>.txt beside them.
    self.paths, self.sidecars = self._list_files()
    if not self.paths:
      raise ValueError(f"VideoFolder: no files ending in {', '.join(extensions)} under {root}: "
                       "put videos there (in class subfolders if they have labels) or pass the "
                       "extensions they have")
    self.classes = sorted({os.path.dirname(p) for p in self.paths})  # "" for files in root
    class_index = {name: i for i, name in enumerate(self.classes)}
    self.labels = np.array([class_index[os.path.dirname(p)] for p in self.paths], np.int32)
    self.skipped: dict[str, str] = {}
    self.shapes = None
    if shapes is not None:
      try:
        allowed = check_shapes(shapes)
      except ValueError as e:
        raise ValueError(f"VideoFolder: {e}") from None
      self.shapes = [self._probe(i, allowed) for i in range(len(self.paths))]

  def _probe(self, index: int, allowed) -> tuple[int, int, int]:
    """The allowed shape of file `index` (an unreadable one: the first allowed; it is skipped
    when read, and the next readable file is read at this shape)."""
    path = os.path.join(self.root, self.paths[index])
    try:
      frames, height, width = probe_video(path)
    except UnreadableVideo as e:
      self.skipped[path] = e.reason
      logging.warning("VideoFolder skips %s: %s", path, e.reason)
      return allowed[0]
    return nearest_shape((frames - 1) // self.stride + 1, height, width, allowed)

  def example_shape(self, index: int) -> tuple[int, int, int]:
    """(T, H, W) of example `index`."""
    if self.shapes is None:
      return self.video_shape
    return self.shapes[index]

  def _list_files(self) -> tuple[list[str], set[str]]:
    paths, sidecars = [], set()
    for folder, subfolders, files in os.walk(self.root, followlinks=True):
      subfolders.sort()
      names = set(files)
      for name in files:
        stem, ext = os.path.splitext(name)
        if ext.lower() in self.extensions:
          path = os.path.relpath(os.path.join(folder, name), self.root)
          paths.append(path)
          if stem + ".txt" in names:
            sidecars.add(path)
    return sorted(paths), sidecars

  @property
  def video_shape(self) -> tuple[int, int, int]:
    """(T, H, W) of every clip."""
    return (self.num_frames, *self.size)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def __len__(self) -> int:
    return len(self.paths)

  def __repr__(self) -> str:
    return (f"VideoFolder({self.root!r}, files={len(self.paths)}, classes={len(self.classes)}, "
            f"frames={self.num_frames}, size={self.size}, stride={self.stride}, seed={self.seed})")

  def caption(self, index: int) -> str:
    path = self.paths[index]
    stem = os.path.splitext(path)[0]
    if path in self.sidecars:
      sidecar = os.path.join(self.root, stem + ".txt")
      try:
        with open(sidecar, encoding="utf-8-sig") as f:  # utf-8-sig: a leading BOM is dropped
          text = " ".join(f.read().split())
      except UnicodeDecodeError as e:
        raise UnreadableVideo(os.path.join(self.root, path), f"its caption {sidecar} is not "
                              f"UTF-8 (byte {e.start}): re-save it as UTF-8") from None
      if text:
        return text
    return caption_from_stem(os.path.basename(stem))

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self.paths):
      raise IndexError(f"index {index} out of range for {self!r}")
    # An unreadable file gives way to the next readable one, so the example for an index
    # depends only on the seed, the index and which files decode.
    for offset in range(len(self.paths)):
      candidate = (index + offset) % len(self.paths)
      path = os.path.join(self.root, self.paths[candidate])
      if path in self.skipped:
        continue
      try:
        return self._read(candidate, np.random.default_rng([self.seed, index]),
                          self.example_shape(index))
      except UnreadableVideo as e:
        if path not in self.skipped:
          self.skipped[path] = e.reason
          logging.warning("VideoFolder skips %s (%d skipped so far): %s", path,
                          self.num_skipped, e.reason)
    raise RuntimeError(f"none of the {len(self.paths)} video files under {self.root} could be "
                       f"decoded (e.g. {next(iter(self.skipped.items()))}): check them with "
                       "ffprobe, or re-encode them as H.264 mp4")

  def _read(self, index: int, rng: np.random.Generator, shape) -> dict:
    caption = self.caption(index)  # first: a bad caption skips the example before decoding
    frames = read_video_frames(os.path.join(self.root, self.paths[index]), shape[0],
                               self.stride, rng=rng)  # uint8 [T, H, W, 3]
    frames = resize_and_center_crop(frames, tuple(shape[1:]))
    return {
        "video": frames.astype(np.float32) / 127.5 - 1.0,  # [T, h, w, 3]
        "caption": caption,
        "label": self.labels[index],
    }


class ImageFolder(VideoFolder):
  """A folder of images (png, jpg, ...) as one-frame videos [1, h, w, 3], laid out and captioned
  as a VideoFolder's files; with `shapes`, each keeps the allowed (1, H, W) nearest its own
  aspect ratio and size."""

  def __init__(self, root: str, size: tuple[int, int] | int = (64, 64), seed: int = 0,
               extensions: tuple[str, ...] = IMAGE_EXTENSIONS, shapes=None):
    super().__init__(root, num_frames=1, size=size, seed=seed, extensions=extensions,
                     shapes=shapes)
