"""The allowed shapes of a run's examples, and the one a video of any size and duration takes:
the nearest resolution by aspect ratio (then the largest not above the video's size), and the
longest allowed duration the video has frames for. The video is then resized to cover that
resolution and center-cropped (data/video_io.py:resize_and_center_crop), never stretched, and
cut to that many frames.
"""
import math
from collections.abc import Sequence

Shape = tuple[int, int, int]


def check_shapes(shapes: Sequence[Sequence[int]]) -> list[Shape]:
  """The allowed (T, H, W) shapes as int tuples; ValueError for an empty or malformed list."""
  shapes = [tuple(int(s) for s in shape) for shape in shapes]
  if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
    raise ValueError(f"shapes must be a non-empty list of positive (T, H, W), got {shapes}")
  return shapes


def nearest_shape(frames: int, height: int, width: int, shapes: Sequence[Shape]) -> Shape:
  """The allowed shape for a video of `frames` frames (at the reading stride) of height x width.

  Resolution: the allowed (H, W) whose aspect ratio is nearest (in log ratio) to the video's;
  among those, the largest whose area is at most the video's (no upscaling), else the
  smallest. Duration: the longest allowed T at that resolution with T <= frames, else the
  shortest (its last frame repeats).
  """
  aspect = math.log(width / height)
  resolutions = sorted({(h, w) for _, h, w in shapes})
  nearest = min(abs(math.log(w / h) - aspect) for h, w in resolutions)
  same_aspect = [(h, w) for h, w in resolutions
                 if abs(abs(math.log(w / h) - aspect) - nearest) < 1e-9]
  not_larger = [r for r in same_aspect if r[0] * r[1] <= height * width]
  h, w = (max(not_larger, key=lambda r: r[0] * r[1]) if not_larger
          else min(same_aspect, key=lambda r: r[0] * r[1]))
  durations = sorted(t for t, sh, sw in shapes if (sh, sw) == (h, w))
  fitting = [t for t in durations if t <= frames]
  return (fitting[-1] if fitting else durations[0], h, w)
