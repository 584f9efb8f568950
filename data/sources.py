"""Data sources by name, as config.data.name picks them.

A source has __len__ and __getitem__(index) -> {"video": float32 [T, H, W, C] in [-1, 1],
"caption": str, "label": int32}, deterministic for its seed and the index. Modules are imported
only when named, so a source's dependencies are needed only by those who use it.
"""
import importlib

# name -> (module, class)
SOURCES = {
    "moving_digits": ("data.moving_digits", "MovingDigits"),
    "moving_mnist": ("data.moving_mnist", "MovingMNIST"),
    "video_folder": ("data.video_folder", "VideoFolder"),
    "image_folder": ("data.video_folder", "ImageFolder"),  # stills as one-frame videos
    "mixture": ("data.mixture", "Mixture"),  # several of these, each keeping its own shape
    "reflow_pairs": ("data.reflow_pairs", "ReflowPairs"),  # a run's (noise, video) pairs
}


def make_source(name: str, seed: int, **kwargs):
  if name not in SOURCES:
    raise ValueError(f"data.name={name!r} is not a data source; choose one of {list(SOURCES)}")
  module, cls = SOURCES[name]
  source_cls = getattr(importlib.import_module(module), cls)
  try:
    return source_cls(seed=seed, **kwargs)
  except TypeError as e:  # a misspelt or unknown keyword in config.data.kwargs
    raise ValueError(f"config.data.kwargs do not fit data source {name!r}: {e}") from None
