"""The two sets of videos python -m eval compares: real ones drawn from the config's dataset, and
generated ones, sampled from a checkpoint for the real videos' captions or read from a folder.

Every set is (videos float32 [N, T, H, W, C] in [-1, 1], captions list[str] or None).
"""
import os
import re

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from data import video_io
from data.sources import make_source
from data.video_folder import VIDEO_EXTENSIONS

# A file name read before others of the same stem: GIFs keep gray levels that mp4 blurs.
_PREFERRED = (".gif", ".webm", ".mp4", ".mov", ".avi", ".mkv")
REAL_SEED_OFFSET = 1_000_003  # real draws apart from the training run's (seed 0, 1, ...)


def real_videos(config: ml_collections.ConfigDict, count: int,
                seed: int) -> tuple[np.ndarray, list[str], list[int]]:
  """count videos of the config's dataset, their captions and labels, drawn fresh for the
  seed."""
  data = config.data
  kwargs = dict(data.kwargs)
  if "num_examples" in kwargs:
    kwargs["num_examples"] = max(count, kwargs["num_examples"])
  source = make_source(data.name, seed=seed + REAL_SEED_OFFSET, **kwargs)
  if len(source) < count:
    raise ValueError(f"the dataset has {len(source)} videos, fewer than eval.num_videos="
                     f"{count}: lower eval.num_videos")
  items = [source[i] for i in tqdm(range(count), desc="real videos", leave=False,
                                   disable=count < 1000)]
  return (np.stack([i["video"] for i in items]).astype(np.float32),
          [str(i["caption"]) for i in items], [int(i["label"]) for i in items])


def folder_videos(folder: str, shape: tuple[int, int, int],
                  channels: int, limit: int | None = None) -> tuple[np.ndarray, list | None]:
  """The videos of a folder (sample.py's output, or any video files), as [N, *shape, channels].

  Frames are resized and center-cropped to shape's (H, W); videos shorter than T repeat their
  last frame. Captions come from sample.py's prompts.txt ("<i>: caption" for <i>.<ext>), else
  from a <stem>.txt beside each video, else there are none. A stem written in several formats
  (sample.py writes mp4 and gif) is read once.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--videos={folder} is not a folder of video files")
  stems = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in VIDEO_EXTENSIONS:
      stems.setdefault(stem, []).append(name)
  if not stems:
    raise ValueError(f"{folder} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
  order = sorted(stems, key=lambda s: (0, int(s)) if s.isdigit() else (1, s))[:limit]
  prompts = _prompts_txt(os.path.join(folder, "prompts.txt"))
  t, h, w = shape
  videos, captions = [], []
  for stem in tqdm(order, desc="reading videos", leave=False):
    name = min(stems[stem], key=_format_rank)
    frames = video_io.read_video_frames(os.path.join(folder, name), num_frames=t, start=0)
    frames = video_io.resize_and_center_crop(frames, (h, w))  # uint8 [T, h, w, 3]
    video = frames.astype(np.float32) / 127.5 - 1.0
    videos.append(video.mean(axis=-1, keepdims=True) if channels == 1 else video)
    sidecar = os.path.join(folder, stem + ".txt")
    if stem in prompts:
      captions.append(prompts[stem])
    elif os.path.exists(sidecar):
      with open(sidecar) as f:
        captions.append(f.read().strip())
    else:
      captions.append(None)
  return np.stack(videos), (captions if all(c is not None for c in captions) else None)


def _format_rank(name: str) -> int:
  ext = os.path.splitext(name)[1].lower()
  return _PREFERRED.index(ext) if ext in _PREFERRED else len(_PREFERRED)


def _prompts_txt(path: str) -> dict[str, str]:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    lines = [re.match(r"^(\d+): (.*)$", line.rstrip("\n")) for line in f]
  return {m.group(1): m.group(2) for m in lines if m}


def sampled_videos(sampler, params, prompts: list, batch_size: int, seed: int,
                   given: np.ndarray | None = None) -> np.ndarray:
  """Videos of a VideoSampler built for batch_size prompts, one per prompt (a caption, or a
  label for label-conditioned models), in batches of that size with the same compiled sampler;
  the last batch is padded. given: with a sampler of a task, a video [N, T, H, W, C] per
  prompt whose given frames it holds."""
  out = []
  for index, start in enumerate(tqdm(range(0, len(prompts), batch_size), desc="sampling",
                                     unit="batch")):
    chunk = list(prompts[start:start + batch_size])
    real = len(chunk)
    chunk += chunk[-1:] * (batch_size - real)
    _, cond = sampler.condition(chunk)
    key = jax.random.fold_in(jax.random.key(seed), index)
    frames = None
    if given is not None:
      frames = given[start:start + batch_size]
      frames = np.concatenate([frames] + [frames[-1:]] * (batch_size - real))
    out.append(sampler.generate(params, key, cond, frames)[:real])
  return np.concatenate(out).astype(np.float32)
