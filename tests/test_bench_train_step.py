"""python -m bench.train_step stays runnable: on CPU it times the tiny quick-start on a USP mesh."""
import json
import os
import subprocess
import sys


def test_the_train_step_benchmark_runs_on_a_mesh_and_records_what_it_ran(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "bench.train_step", "--steps=1", "--warmup=1", f"--out={tmp_path}",
       "--config.mesh.fsdp=2", "--config.mesh.seq=2", "--config.model.sequence_parallel=usp"],
      capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  [path] = tmp_path.glob("train_step-*.json")
  record = json.loads(path.read_text())
  assert record["meta"]["mesh"] == {"data": 2, "fsdp": 2, "seq": 2, "tensor": 1}
  assert record["meta"]["jax"] and record["meta"]["video_tokens"] == 16
  assert record["result"]["step_ms"] > 0 and record["result"]["model_tflops_per_step"] > 0
  assert record["result"]["mfu"] is None  # no peak FLOP/s for a CPU
  assert "| step ms |" in path.with_suffix(".md").read_text()
