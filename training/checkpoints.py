"""Checkpoints of a run: the train state, the base RNG key and the data iterator's position,
saved together by orbax (asynchronously, keeping the last N) under <workdir>/checkpoints/<step>.

A checkpoint appears only once complete (orbax writes to a temporary directory and renames it),
so a run killed mid-save resumes from the previous one.
"""
import os
import tempfile

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from training.train_state import TrainState


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def check_writable(workdir: str) -> None:
  """The workdir and its checkpoints/ folder exist (made if missing) and take a new file: checked
  at the start, not found at the first save (after which orbax waits minutes and times out)."""
  for directory in (os.path.abspath(workdir), checkpoint_dir(workdir)):
    try:
      os.makedirs(directory, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_check_"):
        pass
    except OSError as e:
      raise PermissionError(f"cannot write to {directory} ({e.strerror or e}): make it a "
                            "writable folder, or pass another --workdir") from None


def saved_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints under <workdir>/checkpoints (orbax's temporary
  folders of unfinished saves are not steps), without opening a manager."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def make_manager(workdir: str, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, rng: jax.Array,
         data_iterator: grain.DatasetIterator | None, *, force: bool = False) -> bool:
  """Starts saving at state.step (returns before the write ends when async)."""
  items = dict(state=ocp.args.StandardSave(state),
               rng=ocp.args.StandardSave({"key": jax.random.key_data(rng)}))
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(int(state.step), args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: TrainState,
            data_iterator: grain.DatasetIterator | None = None,
            step: int | None = None) -> tuple[TrainState, jax.Array]:
  """The state and base RNG key at `step` (default: the latest); sets the iterator's position.

  abstract_state gives the structure, shapes, dtypes and shardings to restore into, e.g.
  jax.eval_shape of the initial state.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}: train first, or pass the "
                            "workdir of a run that saved one")
  if step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint for step {step} in {manager.directory}; saved "
                            f"steps: {list(manager.all_steps())}")
  # The key is laid out like the step (replicated on the mesh restored onto), not as saved.
  key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype,
                             sharding=getattr(abstract_state.step, "sharding", None))
  items = dict(state=ocp.args.StandardRestore(abstract_state),
               rng=ocp.args.StandardRestore({"key": key}))
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  rng = jax.random.wrap_key_data(np.asarray(restored["rng"]["key"]))
  return restored["state"], rng


def restore_params(workdir: str, abstract_state: TrainState, *, use_ema: bool = True,
                   step: int | None = None):
  """The (EMA) parameters of a run, for sampling or evaluation: (params, model_state, step)."""
  manager = make_manager(workdir, async_save=False)
  try:
    state, _ = restore(manager, abstract_state, step=step)
  finally:
    manager.close()
  params = state.ema_params if use_ema else state.params
  return params, state.model_state, int(state.step)
