"""A two-process jax.distributed run on localhost: train.py with an explicit coordinator, 4 CPU
devices per process, one mesh (data 2, fsdp 2, seq 2) over both, completes sharded training
steps, a checkpoint and samples, as it would on two hosts of a cluster; then one process with one
device samples from that checkpoint."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_one_model_sharded_over_both(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = free_port()
  command = [sys.executable, "train.py", "--config=configs/quickstart.py:tiny",
             f"--workdir={workdir}", f"--coordinator_address=localhost:{port}",
             "--num_processes=2", "--config.mesh.fsdp=2", "--config.mesh.seq=2",
             "--config.model.sequence_parallel=ulysses", "--config.train.num_steps=2",
             "--config.train.checkpoint_every=2", "--config.train.sample_every=2"]
  processes = [subprocess.Popen(command + [f"--process_id={i}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=600)[0])
  finally:
    for process in processes:
      process.kill()
  for i, (process, output) in enumerate(zip(processes, outputs)):
    assert process.returncode == 0, f"process {i} failed:\n{output[-3000:]}"

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
      env=dict(env, XLA_FLAGS=""))
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert (tmp_path / "alone" / "grid.png").exists()
