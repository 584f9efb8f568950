"""Checkpoints of a run: the train state, the base RNG key and the data iterator's position,
saved together by orbax (asynchronously, keeping the last N) under <workdir>/checkpoints/<step>.

A checkpoint appears only once complete (orbax writes to a temporary directory and renames it),
so a run killed mid-save resumes from the previous one; the temporary folders such kills leave
are removed when training starts again (make_manager(cleanup_interrupted=True), orbax's
cleanup_tmp_directories). A resumed run restores the newest
checkpoint that restores (restore_newest): a damaged one is reported by step and folder and
moved aside to <workdir>/checkpoints_damaged/, never deleted.
"""
import os
import tempfile

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from training.train_state import TrainState


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def check_writable(workdir: str) -> None:
  """The workdir (made if missing) and its checkpoints/ folder, where it exists, take a new file:
  checked at the start, not found at the first save (after which orbax waits minutes and times
  out). Every process may call it at once: each writes only its own probe file."""
  checked = os.path.abspath(workdir)
  try:
    os.makedirs(checked, exist_ok=True)
    _probe(checked)
    if os.path.lexists(checkpoint_dir(workdir)):  # else the first save makes it, in the workdir
      checked = checkpoint_dir(workdir)
      if not os.path.isdir(checked):
        raise NotADirectoryError(20, "not a folder")
      _probe(checked)
  except OSError as e:
    raise PermissionError(f"cannot write to {checked} ({e.strerror or e}): make it a writable "
                          "folder, or pass another --workdir") from None


def _probe(directory: str) -> None:
  with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_check_"):
    pass


def saved_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints under <workdir>/checkpoints (orbax's temporary
  folders of unfinished saves are not steps), without opening a manager."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def make_manager(workdir: str, keep: int = 3, async_save: bool = True,
                 cleanup_interrupted: bool = False) -> ocp.CheckpointManager:
  """cleanup_interrupted: remove the temporary folders of unfinished saves; only for the one
  training process group of the workdir (under its lock), never for a reader such as sample.py,
  which could delete a save in flight."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save,
                                         cleanup_tmp_directories=cleanup_interrupted)
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
            step: int | None = None, *, parts: tuple[str, ...] | None = None):
  """The state and base RNG key at `step` (default: the latest); sets the iterator's position.

  abstract_state gives the structure, shapes, dtypes and shardings to restore into, e.g.
  jax.eval_shape of the initial state, with the shardings to restore onto. With `parts`
  (TrainState field names) only those are read and returned, as {name: value}, without the key
  or the iterator: what sampling needs, not the optimizer state (twice the parameters under
  Adam, and shaped by the optimizer the run trained with). Their trees must be the saved ones.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}: train first, or pass the "
                            "workdir of a run that saved one")
  if step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint for step {step} in {manager.directory}; saved "
                            f"steps: {list(manager.all_steps())}")
  if parts is not None:
    if data_iterator is not None:
      raise ValueError("a restore of some parts of the state does not restore the data iterator")
    item = {name: getattr(abstract_state, name) for name in parts}
    _check_saved_structure(os.path.join(str(manager.directory), str(step), "state"), item)
    state = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    return manager.restore(step, args=ocp.args.Composite(state=state))["state"]
  # The key is laid out like the step (replicated on the mesh restored onto), not as saved.
  key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype,
                             sharding=getattr(abstract_state.step, "sharding", None))
  items = dict(state=ocp.args.StandardRestore(abstract_state),
               rng=ocp.args.StandardRestore({"key": key}))
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  # Kept a global array (not brought to the host): with several processes the next save
  # cannot write a host-local one.
  rng = jax.random.wrap_key_data(restored["rng"]["key"])
  return restored["state"], rng


def _check_saved_structure(directory: str, item: dict) -> None:
  """The saved state at `directory` holds exactly the leaves of `item`'s parts (a partial
  restore would leave a missing one unrestored and drop an extra one without a word)."""
  from etils import epath  # noqa: PLC0415  (orbax's path type)
  saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory)).tree
  for name, part in item.items():
    expected, found = _leaf_paths(part), _leaf_paths(saved.get(name, {}))
    if expected != found:
      missing, extra = sorted(expected - found), sorted(found - expected)
      raise ValueError(
          f"the checkpoint's {name} in {directory} does not match the model: "
          + "; ".join(f"{label} {len(paths)} ({', '.join(paths[:3])}{', ...' * (len(paths) > 3)})"
                      for label, paths in (("not saved:", missing), ("saved, not in the model:",
                                                                     extra)) if paths)
          + ". Open it with the config it was trained with")


def _leaf_paths(tree) -> set[str]:
  """'a/b/0/value' for each leaf (dict keys, sequence indices and attributes alike)."""
  def name(key):
    return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))
  return {"/".join(name(k) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def restore_newest(manager: ocp.CheckpointManager, abstract_state: TrainState,
                   data_iterator: grain.DatasetIterator | None = None, *,
                   set_aside: bool = True, parts: tuple[str, ...] | None = None):
  """Restores the newest checkpoint that restores, newest first; each that fails (a truncated
  array file, a missing metadata or data-iterator file, a half-deleted folder) is reported by
  step and folder. Once an older one restores, the damaged newer ones are moved to
  <workdir>/checkpoints_damaged/<step> (by process 0 when set_aside), so that the run can save
  those steps again. When none restores, nothing is moved and the error lists each failure.
  `parts`: as restore's."""
  failures, errors = [], []
  for step in sorted(manager.all_steps(), reverse=True):
    restored, error = None, None
    for _ in range(2):  # a passing I/O error gets a second try before the folder is "damaged"
      try:
        restored = restore(manager, abstract_state, data_iterator, step=step, parts=parts)
        error = None
        break
      except Exception as e:  # pylint: disable=broad-except  (any failure: try the next one)
        error = e
    ok = error is None
    if jax.process_count() > 1:  # damaged on any process is damaged: all restore one step
      ok = bool(np.all(multihost_utils.process_allgather(np.array(ok))))
    if ok:
      if failures:
        _set_aside([failed for failed, _, _ in failures], str(manager.directory), set_aside)
        manager.reload()
      return restored
    folder = os.path.join(str(manager.directory), str(step))
    reason = (" ".join(str(error).split())[:300] if error is not None
              else "it failed on another process")
    logging.warning("checkpoint %s (step %d) does not restore: %s; trying the previous one",
                    folder, step, reason)
    failures.append((step, folder, reason))
    if error is not None:
      errors.append(error)
  summary = "\n  ".join(f"step {step} ({folder}): {reason}" for step, folder, reason in failures)
  advice = "Nothing was moved or deleted: check the folders, or train in a new --workdir"
  if errors and all(type(e) is type(errors[0]) and str(e) == str(errors[0]) for e in errors):
    # One error for every checkpoint: more likely this run's config, mesh or code than damage.
    errors[0].add_note(f"every checkpoint in {manager.directory} fails to restore with this "
                       f"error. {advice}")
    raise errors[0]
  raise RuntimeError(f"no checkpoint restores:\n  {summary}\n{advice}") from (
      errors[0] if errors else None)


def _set_aside(steps: list[int], directory: str, move: bool) -> None:
  """Moves damaged step folders out of the checkpoints (process 0) once every process is done
  reading them, then syncs the processes again."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("damaged checkpoints read")
  if move and jax.process_index() == 0:
    target = os.path.join(os.path.dirname(directory), "checkpoints_damaged")
    os.makedirs(target, exist_ok=True)
    for step in steps:
      destination = os.path.join(target, str(step))
      n = 1
      while os.path.exists(destination):
        destination = os.path.join(target, f"{step}.{n}")
        n += 1
      os.rename(os.path.join(directory, str(step)), destination)
      logging.warning("moved the damaged checkpoint of step %d to %s", step, destination)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("damaged checkpoints set aside")


def restore_params(workdir: str, abstract_state: TrainState, *, use_ema: bool = True,
                   step: int | None = None):
  """The (EMA) parameters of a run, for sampling or evaluation: (params, model_state, step).
  Only those are read: not the optimizer state, whose structure may differ from what the
  abstract state's optimizer gives (the run's optimizer, or the code, may have changed since)."""
  parts = ("step", "ema_params" if use_ema else "params", "model_state")
  manager = make_manager(workdir, async_save=False)
  try:
    if step is None:  # the newest that restores; a damaged one is reported, left in place
      state = restore_newest(manager, abstract_state, set_aside=False, parts=parts)
    else:
      state = restore(manager, abstract_state, step=step, parts=parts)
  finally:
    manager.close()
  return state[parts[1]], state["model_state"], int(state["step"])
