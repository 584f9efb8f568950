"""A run's resolved config: config.json in its folder, never overwritten with a different one;
and what of it a resumed run may not change (its identity: what shapes the saved state)."""
import json
import os

import ml_collections
from absl import logging

from configs.saved_run import ADDED_FIELDS, load_config  # read back in configs/: no JAX there
from rundir.keep import keep_earlier

__all__ = ["ADDED_FIELDS", "identity_changes", "load_config", "write_config"]


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json; a different earlier one is kept as config.<n>.json, never lost."""
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
    kept = keep_earlier(path)
    logging.warning("the config differs from this workdir's earlier one, kept as %s",
                    os.path.basename(kept))
  with open(path, "w") as f:
    f.write(text)




# config.model fields that change how the network runs, not what it holds: a resumed run may
# change them (dtype is the compute dtype; size is a label). Every other model field shapes the
# parameters or what they mean.
RUNTIME_MODEL_FIELDS = ("size", "attention", "sparse_pattern", "sparse_window", "sparse_block",
                        "sequence_parallel", "ulysses_degree", "remat", "dtype")
# The same for config.vae (a VAE run): the latent statistics are set after training.
RUNTIME_VAE_FIELDS = ("dtype", "latents_mean", "latents_std")


def identity_changes(saved: ml_collections.ConfigDict,
                     config: ml_collections.ConfigDict) -> list[str]:
  """What `config` changes of a saved run's identity: what it trains, its network (config.model
  but RUNTIME_MODEL_FIELDS, or config.vae but RUNTIME_VAE_FIELDS), its video shape and the VAE
  of its latents, as "field: saved -> new" lines; [] when it may resume the run."""
  old, new = json.loads(saved.to_json_best_effort()), json.loads(config.to_json_best_effort())
  trains = old.get("trains", "dit"), new.get("trains", "dit")
  if trains[0] != trains[1]:
    return [f"trains: {trains[0]!r} -> {trains[1]!r}"]
  section, runtime = ("vae", RUNTIME_VAE_FIELDS) if trains[1] == "vae" else (
      "model", RUNTIME_MODEL_FIELDS)
  # A field the saved run does not have was added to the code after it: not a change.
  pairs = [(f"{section}.{name}", old[section][name], value)
           for name, value in new[section].items()
           if name not in runtime and name in old[section]]
  pairs.append(("train.video_shape", old["train"].get("video_shape"),
                new["train"]["video_shape"]))
  if trains[1] == "dit":  # the latent space the DiT was trained in ("": pixels)
    pairs.append(("latents.vae", old.get("latents", {}).get("vae", ""),
                  new.get("latents", {}).get("vae", "")))
    saved_step = old.get("latents", {}).get("vae_step") or 0  # 0: not pinned (older runs)
    new_step = new.get("latents", {}).get("vae_step") or 0
    if saved_step and new_step:  # train.py pins an unset one to the saved run's
      pairs.append(("latents.vae_step", saved_step, new_step))
    for name in ("latents_mean", "latents_std"):  # the same
      saved_value = tuple(old.get("latents", {}).get(name) or ())
      new_value = tuple(new.get("latents", {}).get(name) or ())
      if saved_value and new_value:
        pairs.append((f"latents.{name}", saved_value, new_value))
  if "lora" in old:  # a LoRA run's adapters: their rank, scale and layers (not in its base's)
    for name in ("rank", "alpha", "layers"):
      pairs.append((f"lora.{name}", old["lora"].get(name),
                    new.get("lora", {}).get(name, 0 if name == "rank" else None)))
  return [f"{name}: {before!r} -> {after!r}" for name, before, after in pairs if before != after]
