"""Two-process jax.distributed runs on localhost, as on two hosts of a cluster: train.py with an
explicit coordinator and 4 CPU devices per process completes sharded training steps (one mesh of
data 2, fsdp 2, seq 2 over both), a checkpoint and samples, then one process with one device
samples from that checkpoint; a SIGTERM to one process alone stops both at one step, saved."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np

from saved_runs import (ROOT, assert_bitwise_equal, final_state, finish, free_port, start,
                        train_command, wait_for)
from training import checkpoints


def start_pair(workdir, *overrides) -> list[subprocess.Popen]:
  """train.py as processes 0 and 1 of a two-process job, 4 CPU devices each."""
  port = free_port()
  command = train_command("configs/quickstart.py:tiny", workdir, "--num_processes=2",
                          f"--coordinator_address=localhost:{port}", *overrides)
  return [start(command + [f"--process_id={i}"], JAX_PLATFORMS="cpu",
                XLA_FLAGS="--xla_force_host_platform_device_count=4") for i in range(2)]


def finish_pair(processes: list[subprocess.Popen]) -> list[str]:
  try:
    return [finish(process, timeout=600) for process in processes]
  finally:
    for process in processes:
      process.kill()


def test_two_processes_train_one_model_sharded_over_both(tmp_path):
  workdir = tmp_path / "run"
  outputs = finish_pair(start_pair(
      workdir, "--config.mesh.fsdp=2", "--config.mesh.seq=2",
      "--config.model.sequence_parallel=ulysses", "--config.train.num_steps=2",
      "--config.train.checkpoint_every=2", "--config.train.sample_every=2"))

  # Process 0 alone writes metrics and samples; both wrote their part of the checkpoint.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [2] and np.isfinite(records[0]["loss"])
  checkpoint = workdir / "checkpoints" / "2"
  assert (checkpoint / "commit_success.txt").exists()
  assert sorted(p.name for p in (checkpoint / "data").glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert (workdir / "samples" / "step_2" / "grid.png").exists()
  assert "step 2:" in outputs[0] and "step 2:" not in outputs[1]

  # One process, one device: the 8-device checkpoint restores into the new topology.
  sampled = subprocess.run(
      [sys.executable, "sample.py", f"--workdir={workdir}", "--mesh=data=-1", "--num_steps=2",
       f"--out={tmp_path / 'alone'}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert (tmp_path / "alone" / "grid.png").exists()


def test_a_sigterm_to_one_process_stops_both_at_one_step_and_resumes_to_the_same_bits(tmp_path):
  run = ["--config.train.num_steps=20", "--config.train.checkpoint_every=5",
         "--config.train.sample_every=0", "--config.optim.decay_steps=20"]
  finish_pair(start_pair(tmp_path / "uninterrupted", *run))

  workdir = tmp_path / "stopped"
  processes = start_pair(workdir, *run)
  wait_for(lambda: os.path.isdir(workdir / "checkpoints" / "5"), *processes)
  processes[1].send_signal(signal.SIGTERM)  # a preemption notice reaching one host only
  outputs = finish_pair(processes)  # both exit 0
  stops = [re.findall(r"stopped by SIGTERM after step (\d+), checkpoint saved", o)
           for o in outputs]
  assert stops[0] == stops[1] and len(stops[0]) == 1, outputs
  stopped_at = int(stops[0][0])
  assert 5 <= stopped_at < 20 and max(checkpoints.saved_steps(workdir)) == stopped_at

  resumed = finish_pair(start_pair(workdir, *run))
  assert f"at step {stopped_at}" in resumed[0]
  assert_bitwise_equal(final_state(workdir), final_state(tmp_path / "uninterrupted"))
