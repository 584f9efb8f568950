"""A run's directory and the pieces both train.py and sample.py rebuild from its config:
the resolved config (config.json, never overwritten with a different one) and the text encoder.
"""
import json
import os

import ml_collections
from absl import logging

from dit.model_config import MODEL_SIZES, model_config
from dit.sparse_sampling import sparse_config
from dit.text_encoder import make_text_encoder


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
  """The resolved config a run wrote to its workdir.

  Model and sample fields added to the codebase after the run was trained take their defaults
  (e.g. model.sparse_pattern="full", sample.sparse), so an older run still samples as it was
  trained.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a train.py run?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.model.get("size") in MODEL_SIZES:
    _fill_missing(config.model, model_config(config.model.size), "model")
  if "sample" in config:
    _fill_missing(config.sample, ml_collections.ConfigDict(dict(sparse=sparse_config())),
                  "sample")
  return config


def _fill_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
                  section: str) -> None:
  """Adds the fields of `defaults` that `config` lacks, into nested sections too."""
  missing = sorted(set(defaults) - set(config))
  for field in missing:
    config[field] = defaults[field]
  if missing:
    logging.info("%s fields newer than the run, at their defaults: %s", section, missing)
  for field in set(defaults) - set(missing):
    if isinstance(defaults[field], ml_collections.ConfigDict) and isinstance(
        config[field], ml_collections.ConfigDict):
      _fill_missing(config[field], defaults[field], f"{section}.{field}")


def make_text_encoder_for(config: ml_collections.ConfigDict):
  """The config's text encoder, checked against the model's text input (None for labels)."""
  if config.model.conditioning != "text":
    return None
  encoder = make_text_encoder(config.text.encoder, config.text.max_length,
                              vocab_size=config.text.vocab_size)
  if encoder.feature_dim is None:  # token ids, embedded by the model's own table
    if config.model.text_vocab_size != encoder.vocab_size:
      raise ValueError(f"text.encoder={config.text.encoder!r} gives token ids below "
                       f"{encoder.vocab_size}: set model.text_vocab_size={encoder.vocab_size}")
  elif config.model.text_vocab_size or config.model.text_dim != encoder.feature_dim:
    raise ValueError(f"text.encoder={config.text.encoder!r} gives {encoder.feature_dim}-wide "
                     f"token states: set model.text_dim={encoder.feature_dim} and "
                     "model.text_vocab_size=0")
  return encoder
