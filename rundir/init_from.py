"""A new run that starts from another run's weights: config.train.init_from (reflow and
distillation start from their teacher; any fine-tune from a trained run).

pin_init_run resolves the source run once, before anything is written: its path made absolute,
its checkpoint step pinned (config.train.init_step: its newest when 0), and its architecture
and video shape checked against the new run's. The new run's config.json then records what it
started from. A resumed run keeps what it recorded and never reads the source again (which may
have trained on and dropped that checkpoint); naming another source or step is an error. A LoRA
run (config.lora) is the exception: its checkpoints hold only adapters, so it reads its base
at init_step whenever it starts, resumes or is opened (lora_base). initial_state puts the source's EMA weights in
a new train state (as both the weights and their EMA; the optimizer starts afresh).
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rundir.config_file import identity_changes, load_config
from training import checkpoints
from training.lora import base_state, uses_lora
from training.train_state import TrainState, abstract_train_state


def pin_init_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Resolves config.train.init_from and init_step in place (module docstring)."""
  source = config.train.get("init_from", "")
  source = os.path.abspath(source) if source else ""
  if checkpoints.saved_steps(workdir) and os.path.exists(os.path.join(workdir, "config.json")):
    saved = load_config(workdir).train
    saved_from, saved_step = saved.get("init_from", ""), int(saved.get("init_step", 0))
    asked = int(config.train.get("init_step", 0))
    if source and (source != saved_from or (asked and asked != saved_step)):
      raise ValueError(f"{workdir} started from {saved_from or 'its own initialisation'}"
                       + (f" (step {saved_step})" if saved_from else "") + ": it resumes only "
                       "as it started; give that train.init_from (or none), or a new --workdir")
    if "init_from" in config.train:  # a resumed run keeps the record of what it started from
      config.train.update(init_from=saved_from, init_step=saved_step)
    return
  if not source:
    return
  config.train.init_from = source
  if not os.path.isdir(source):
    raise FileNotFoundError(f"train.init_from={source} does not exist: give a train.py run's "
                            "workdir")
  try:
    source_config = load_config(source)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"train.init_from: {e}") from None
  if changes := identity_changes(source_config, config):
    raise ValueError(f"train.init_from={source} is another model than this config's:\n  "
                     + "\n  ".join(changes) + "\nStart from a run of the same architecture "
                     "and video shape.")
  steps = checkpoints.saved_steps(source)
  if not steps:
    raise FileNotFoundError(f"train.init_from={source} has no checkpoints: train it first")
  step = int(config.train.init_step) or steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"train.init_from={source} has no checkpoint {step} (it has "
                            f"{steps}): set --config.train.init_step to one of them, or 0")
  if jax.process_count() > 1:  # process 0's listing decides
    step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
  config.train.init_step = step


def initial_state(config: ml_collections.ConfigDict, state: TrainState,
                  abstract: TrainState) -> TrainState:
  """`state` (a new run's, at step 0) with the pinned source run's EMA weights and model
  state; unchanged without train.init_from. A LoRA run (training/lora.py) keeps its fresh
  adapters and takes the source's weights as its frozen base (lora_base)."""
  source = config.train.get("init_from", "")
  if not source:
    return state
  if uses_lora(config):
    return state.replace(model_state=lora_base(config, abstract.model_state))
  params, model_state, _ = checkpoints.restore_params(source, abstract, use_ema=True,
                                                      step=int(config.train.init_step))
  return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params),
                       model_state=model_state)


def lora_base(config: ml_collections.ConfigDict, target):
  """A LoRA run's frozen base: the EMA weights of its pinned train.init_from run at
  train.init_step, unstacked as the LoRA network holds them, and laid out as `target` (the
  abstract model_state, carrying shardings where it has them)."""
  from configs.checks import validate_config  # noqa: PLC0415

  model = validate_config(config)
  _, stacked = abstract_train_state(model, config.optim)
  source, step = config.train.init_from, int(config.train.init_step)
  try:
    params, _, _ = checkpoints.restore_params(source, stacked, use_ema=True, step=step)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"this LoRA run's base, {source} at step {step} (train.init_from, init_step), cannot "
        f"be read ({e}); its adapters hold only the change to those weights: bring that "
        "checkpoint back (e.g. from checkpoints_damaged/ or a copy), or keep base runs' "
        "checkpoints that LoRA runs name (train.keep_checkpoints)") from None
  base = base_state(params, model)
  if all(getattr(a, "sharding", None) is not None for a in jax.tree.leaves(target)):
    return jax.device_put(base, jax.tree.map(lambda a: a.sharding, target))
  return base
