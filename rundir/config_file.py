"""A run's resolved config: config.json in its folder, never overwritten with a different one."""
import json
import os

import ml_collections
from absl import logging


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json; a different earlier one is kept as config.<n>.json, never lost."""
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
    n = 1
    while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
      n += 1
    os.rename(path, os.path.join(workdir, f"config.{n}.json"))
    logging.warning("the config differs from this workdir's earlier one, kept as config.%d.json",
                    n)
  with open(path, "w") as f:
    f.write(text)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to its workdir (unlocked: sample.py and python -m eval
  override fields, then check it)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a train.py run?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
