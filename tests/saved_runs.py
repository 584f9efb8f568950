"""Helpers for tests that run train.py: in subprocesses (start it, wait for a state of its
workdir), in process (the tiny quick start), and compare the final states of two runs bit for
bit."""
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from dit.config import DiTConfig
from dit.vae.config import VAEConfig
from rundir.config_file import load_config
from training import checkpoints
from training.train_state import abstract_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNFINISHED = ".orbax-checkpoint-tmp"  # orbax's suffix for the folder of a save in progress


def train_command(config: str, workdir, *overrides) -> list[str]:
  return [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", *overrides]


def start(command: list[str], **env) -> subprocess.Popen:
  return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, **env) if env else None)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
  """The output of a process that must exit 0."""
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-3000:]
  return output


def wait_for(condition, *processes: subprocess.Popen, timeout: float = 240,
             poll: float = 0.02) -> None:
  """Polls condition() until it holds; fails if a process ends or the time runs out first."""
  deadline = time.monotonic() + timeout
  while not condition():
    for process in processes:
      if process.poll() is not None:
        raise AssertionError("training ended first: " + process.stdout.read()[-3000:])
    if time.monotonic() > deadline:
      for process in processes:
        process.kill()
      raise AssertionError("timed out waiting for training to progress")
    time.sleep(poll)


def unfinished_saves(workdir) -> list[str]:
  folder = checkpoints.checkpoint_dir(workdir)
  return [n for n in os.listdir(folder) if UNFINISHED in n] if os.path.isdir(folder) else []


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def final_state(workdir):
  """The train state of the latest checkpoint of a run, on this process's first device
  (whatever processes and devices saved it)."""
  config = load_config(workdir)
  model = (VAEConfig.from_dict(config.vae) if config.get("trains") == "vae"
           else DiTConfig.from_dict(config.model))
  _, abstract = abstract_train_state(model, config.optim)
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
                          abstract)
  manager = checkpoints.make_manager(workdir, async_save=False)
  try:
    return checkpoints.restore(manager, abstract)[0]
  finally:
    manager.close()


def assert_bitwise_equal(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def train_tiny_quickstart(workdir, arg: str = "tiny,text=hashed_words"):
  """workdir, where configs/quickstart.py:<arg> is trained (no samples while training)."""
  import train  # noqa: PLC0415  (imports jax and flags: only for the tests that use it)
  from configs.quickstart import get_config  # noqa: PLC0415

  config = get_config(arg)
  config.unlock()
  config.train.sample_every = 0
  train.train(config, str(workdir))
  return workdir
