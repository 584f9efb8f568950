"""The shapes a run trained on, each as an experiment config of that one shape: what
python -m eval and sample.py use to judge and draw a run of varied shapes at each of them.

A run's stages (configs/stages.py) each train on their data: a source of one shape (at the
stage's train.video_shape) or a mixture (data/mixture.py) of parts of several. Every distinct
(T, H, W) becomes one target: the run's config with data = the source that gave that shape,
train.video_shape = the shape and no stages, so the rest of eval (real videos, the digit
classifier, sampling) runs on it unchanged. Shapes are in the model's input units (latent
frames and pixels for a latent DiT).
"""
import copy

import ml_collections

from configs.stages import resolve_stages
from data.batching import example_shapes
from data.sources import make_source


def shape_name(shape) -> str:
  """(4, 32, 48) -> "4x32x48"."""
  return "x".join(str(int(s)) for s in shape)


def parse_shape(text: str) -> tuple[int, int, int]:
  """"4,32,48" (or "4x32x48") -> (4, 32, 48); ValueError for anything else."""
  parts = text.replace("x", ",").split(",")
  if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f"shape {text!r} must be three positive sizes T,H,W, e.g. 4,32,32")
  return tuple(int(p) for p in parts)


def _sources_of(data: ml_collections.ConfigDict, video_shape) -> list[tuple[dict, tuple]]:
  """[(dict(name, kwargs), shape)] of one stage's data."""
  if data.name != "mixture":
    if data.get("batching", "fixed") == "fixed":
      return [(dict(name=data.name, kwargs=data.kwargs.to_dict()), tuple(video_shape))]
    source = make_source(data.name, seed=0, **data.kwargs)
    return [(dict(name=data.name, kwargs=data.kwargs.to_dict()), tuple(shape))
            for shape in sorted({tuple(s) for s in example_shapes(source).tolist()})]
  found = []
  for part in data.kwargs["parts"]:
    part = dict(name=part["name"], kwargs=dict(part.get("kwargs", {})))
    source = make_source(part["name"], seed=0, **part["kwargs"])
    found += [(part, tuple(shape))
              for shape in sorted({tuple(s) for s in example_shapes(source).tolist()})]
  return found


def trained_shapes(config: ml_collections.ConfigDict) -> dict[str, list[tuple[int, int, int]]]:
  """Stage name -> the (T, H, W) shapes it trained on, in the run's order."""
  return {stage.name: sorted({shape for _, shape in _sources_of(
      stage.config.data, stage.config.train.video_shape)}) for stage in resolve_stages(config)}


def shape_targets(config: ml_collections.ConfigDict) -> dict[tuple[int, int, int],
                                                            ml_collections.ConfigDict]:
  """Every trained shape -> the run's config at that shape alone (the latest stage's source of
  it), in the order first trained."""
  targets = {}
  for stage in resolve_stages(config):
    for source, shape in _sources_of(stage.config.data, stage.config.train.video_shape):
      target = copy.deepcopy(stage.config)  # the stage's sampling and flow settings too
      kwargs = dict(source["kwargs"])
      if kwargs.get("shapes"):  # a folder of allowed shapes: every file read at this one
        kwargs["shapes"] = [list(shape)]
      with target.unlocked():
        target.data.name = source["name"]
        target.data.kwargs = ml_collections.ConfigDict(kwargs)
        target.data.batching = "fixed"
        target.train.video_shape = shape
        target.stages = ()
      targets[shape] = target
  return targets
