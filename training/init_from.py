"""A new run that starts from another run's weights: config.train.init_from (reflow and
distillation start from their teacher; any fine-tune from a trained run).

pin_init_run resolves the source run once, before anything is written: its path made absolute,
its checkpoint step pinned (config.train.init_step: its newest when 0, the saved run's on a
resume), and its architecture and video shape checked against the new run's. The new run's
config.json then records what it started from. initial_state puts the source's EMA weights in
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
from training.train_state import TrainState


def pin_init_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Resolves config.train.init_from and init_step in place (module docstring)."""
  source = config.train.get("init_from", "")
  if not source:
    return
  if not os.path.isdir(source):
    raise FileNotFoundError(f"train.init_from={source} does not exist: give a train.py run's "
                            "workdir")
  config.train.init_from = source = os.path.abspath(source)
  saved_config = os.path.join(workdir, "config.json")
  if checkpoints.saved_steps(workdir) and os.path.exists(saved_config):
    saved = load_config(workdir).train.get("init_step", 0)
    if saved and not config.train.init_step:
      config.train.init_step = int(saved)  # a resumed run keeps the weights it started from
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
  state; unchanged without train.init_from."""
  source = config.train.get("init_from", "")
  if not source:
    return state
  params, model_state, _ = checkpoints.restore_params(source, abstract, use_ema=True,
                                                      step=int(config.train.init_step))
  return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params),
                       model_state=model_state)
