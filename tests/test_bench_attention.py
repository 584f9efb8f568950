"""python -m bench.attention stays runnable: on CPU it checks the kernel and times small shapes."""
import json
import subprocess
import sys


def test_the_attention_benchmark_runs_and_records_device_versions_and_rows(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "bench.attention", "--lengths=256", "--densities=1.0,0.5",
       "--iters=1", "--warmup=0", f"--out={tmp_path}"], capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  [path] = tmp_path.glob("attention-*.json")
  record = json.loads(path.read_text())
  assert record["meta"]["jax"] and record["meta"]["device"] and record["meta"]["head_dim"]
  assert all(row["out"] < 2e-2 for row in record["correctness"])
  timed = {(r["mode"], r["impl"], r.get("density")) for r in record["rows"] if "ms" in r}
  assert {("fwd", "block_sparse", 0.5), ("fwd_bwd", "block_sparse", 1.0),
          ("fwd", "xla", 1.0)} <= timed
  assert path.with_suffix(".md").read_text().count("| 256 |") == len(record["rows"])
