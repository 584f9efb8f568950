"""Reading a run's config.json back: the resolved config it trained with, with the fields added
to the code since it was saved filled in. In configs/ (standard library and ml_collections only)
so that a config file built on a trained run (configs/reflow.py) reads it without JAX;
rundir/config_file.py writes it and re-exports these."""
import json
import os

import ml_collections

# Fields added after runs were saved, each with the value that gives what those runs did: a
# config.json without one is read with it (any other missing field stays an error that names it).
ADDED_FIELDS = {
    ("model", "prediction"): "velocity",
    ("sample", "guidance_interval"): (0.0, 1.0),
    ("sample", "schedule"): "",
    ("flow", "distill_timesteps"): (),
    ("flow", "frame_timesteps"): 0.0,
    ("train", "init_from"): "",
    ("train", "init_step"): 0,
    ("data", "batching"): "fixed",
    ("data", "tokens_per_device"): 0,
    ("data", "row_tokens"): 0,
    ("data", "max_slots"): 8,
    ("data", "balance"): True,
    ("sharding", "sequence_parallel_plan"): "static",
    ("sharding", "sp_hardware"): "measure",
    ("sharding", "sp_planner"): "heuristic",
    ("sharding", "sp_memory_gib"): 0.0,
}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to its workdir, with ADDED_FIELDS it predates filled in
  (unlocked: sample.py and python -m eval override fields, then check it)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a train.py run?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  for (section, name), value in ADDED_FIELDS.items():
    if section in config and name not in config[section]:
      config[section][name] = value
  return config
