"""A mixture of data sources as one: their examples one after another, each keeping its own
shape, so one run trains on videos of several sizes and durations and on images (one-frame
videos) together.

  config.data = data_config("mixture", parts=(
      dict(name="moving_digits", kwargs=dict(num_frames=1, size=32)),    # still images
      dict(name="moving_digits", kwargs=dict(num_frames=8, size=48)),    # longer, larger
  ))

Each part is built as config.data.name would build it (data/sources.py), with the mixture's
seed offset by the part's position, so two parts of the same source give different examples.
Batches then draw across parts in proportion to their sizes (data/batching.py).
"""
import bisect

import numpy as np


class Mixture:
  """The examples of `parts` (each {"name": source name, "kwargs": {...}}) in order.

  example_shape(index) gives an example's video shape (T, H, W) without building it, when its
  part can (every part of fixed shape can): the batching plans from shapes alone.
  """

  def __init__(self, parts, seed: int = 0):
    from data.sources import make_source  # noqa: PLC0415  (sources names this module)

    if not parts:
      raise ValueError("Mixture: no parts given: set data.kwargs.parts to a list of "
                       "dict(name=<source>, kwargs=dict(...))")
    self.parts = []
    for i, part in enumerate(parts):
      part = dict(part)
      unknown = sorted(set(part) - {"name", "kwargs"})
      if "name" not in part or unknown:
        raise ValueError(f"Mixture: part {i} must be dict(name=<source>, kwargs=dict(...)), "
                         f"got keys {sorted(part)}")
      if part["name"] == "mixture":
        raise ValueError(f"Mixture: part {i} is itself a mixture: list its parts instead")
      self.parts.append(make_source(part["name"], seed=seed + i, **dict(part.get("kwargs", {}))))
    self.starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()
    self.seed = seed

  def __len__(self) -> int:
    return self.starts[-1]

  def __repr__(self) -> str:
    return f"Mixture({', '.join(map(repr, self.parts))})"

  def locate(self, index: int) -> tuple[int, int]:
    """(part, index within the part) of an example."""
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for a mixture of {len(self)} examples")
    part = bisect.bisect_right(self.starts, index) - 1
    return part, index - self.starts[part]

  def __getitem__(self, index: int) -> dict:
    part, local = self.locate(index)
    return self.parts[part][local]

  def example_shape(self, index: int) -> tuple[int, int, int]:
    part, local = self.locate(index)
    return example_shape(self.parts[part], local)


def example_shape(source, index: int) -> tuple[int, int, int]:
  """The (T, H, W) of a source's example: from source.example_shape or source.video_shape
  when it has one (no example is built), else read from the example itself."""
  if hasattr(source, "example_shape"):
    return tuple(int(s) for s in source.example_shape(index))
  if getattr(source, "video_shape", None) is not None:
    return tuple(int(s) for s in source.video_shape)
  return tuple(int(s) for s in np.shape(source[index]["video"])[:3])
