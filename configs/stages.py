"""Multi-stage training: config.stages runs one experiment as stages in order, each with its own
data, shapes, batch, learning-rate schedule and number of steps (Seaweed-7B trains images
first, then low-resolution video, then higher resolution):

  config.stages = (
      stage_config("images", 300, data=dict(kwargs=dict(num_frames=1))),
      stage_config("videos", 900, optim=dict(lr=2e-3, warmup_steps=50, decay_steps=900)),
  )
  config.train.num_steps = 1200  # the stages' sum

A stage's sections are the experiment's with the stage's fields changed (configs/common.py:
stage_config). Steps count over the whole run: the second stage above runs steps 300-1199, its
learning-rate schedule counted from its own start (or from the stage whose optimizer state it
carries). train.py carries the weights and EMA across a boundary, and resumes inside any stage.
This module reads configs only (ml_collections, no JAX).
"""
import copy
import dataclasses

import ml_collections

from configs.common import STAGE_SECTIONS

OPTIMIZER_AT_START = ("reset", "carry")
STAGE_KEYS = ("name", "num_steps", "optimizer") + STAGE_SECTIONS
# train fields that hold for the whole run (the loop, the checkpoints), not per stage.
RUN_TRAIN_FIELDS = ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str
  start: int  # the run's step at which the stage begins
  end: int  # one past its last step
  config: ml_collections.ConfigDict  # the experiment as this stage runs it
  optimizer: str  # "reset" or "carry": the optimizer state at the stage's start
  schedule_start: int  # the step its learning-rate schedule counts from (the latest reset)

  def __contains__(self, step: int) -> bool:
    return self.start <= step < self.end


def resolve_stages(config: ml_collections.ConfigDict) -> list[Stage]:
  """The run's stages with their effective configs; a config without stages is one stage of
  train.num_steps steps. Raises ValueError naming every problem of config.stages."""
  stages = config.get("stages") or ()
  if not stages:
    return [Stage(0, "train", 0, config.train.num_steps, config, "reset", 0)]
  resolved, errors, start, schedule_start = [], [], 0, 0
  for index, stage in enumerate(stages):
    stage = dict(stage)
    where = f"stages[{index}] ({stage.get('name', '?')!r})"
    unknown = sorted(set(stage) - set(STAGE_KEYS))
    if unknown:
      errors.append(f"{where} has unknown keys {unknown}; a stage has {list(STAGE_KEYS)} "
                    "(the model, text and mesh stay the run's)")
    steps = stage.get("num_steps")
    if not isinstance(steps, int) or steps < 1:
      errors.append(f"{where}.num_steps={steps!r} must be a positive int")
      steps = 1
    optimizer = stage.get("optimizer", "reset")
    if optimizer not in OPTIMIZER_AT_START:
      errors.append(f"{where}.optimizer={optimizer!r}; choose one of {OPTIMIZER_AT_START}")
    effective = copy.deepcopy(config)
    for section in STAGE_SECTIONS:
      for field, value in dict(stage.get(section) or {}).items():
        if section == "train" and field in RUN_TRAIN_FIELDS:
          errors.append(f"{where}.train.{field}: set it for the whole run (train.{field}); a "
                        "stage's length is its num_steps")
          continue
        if field not in effective[section]:
          errors.append(f"{where}.{section}.{field}: {section} has no field {field!r} "
                        f"(its fields: {sorted(effective[section].keys())})")
          continue
        try:
          if section == "data" and field == "kwargs":  # a source's arguments: replaced whole
            effective.data.kwargs = ml_collections.ConfigDict(dict(value))
          else:
            setattr(effective[section], field, value)
        except (AttributeError, KeyError, TypeError) as e:
          errors.append(f"{where}.{section}.{field}={value!r}: {e}")
    with effective.unlocked():
      effective.train.num_steps = steps
    if optimizer == "reset":
      schedule_start = start
    resolved.append(Stage(index, str(stage.get("name", f"stage_{index}")), start, start + steps,
                          effective, optimizer, schedule_start))
    start += steps
  if config.train.num_steps != start:
    errors.append(f"train.num_steps={config.train.num_steps} must be the stages' sum, {start}")
  if errors:
    raise ValueError("invalid stages config:\n  " + "\n  ".join(errors))
  return resolved


def stage_at(stages: list[Stage], step: int) -> Stage:
  """The stage that runs `step` (the last stage for the run's end)."""
  return next((stage for stage in stages if step in stage), stages[-1])
