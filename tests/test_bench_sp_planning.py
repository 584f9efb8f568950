"""python -m bench.sp_planning stays runnable: small planning, simulation and CPU sizes."""
import json
import subprocess
import sys


def test_the_sp_planning_benchmark_runs_and_records_every_part(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "bench.sp_planning", "--devices=8", "--batches=1",
       "--milp_seconds=5", "--sim_devices=8", "--sim_steps=2", "--cpu_steps=1",
       "--cpu_static=8", f"--out={tmp_path}"], capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  [path] = tmp_path.glob("sp_planning-*.json")
  record = json.loads(path.read_text())
  assert record["meta"]["jax"] and record["meta"]["scipy"]
  [planning] = record["planning"]
  assert planning["over_milp"] < 1.05 and 1.0 <= planning["over_bound"] < 1.1
  assert len(record["simulated"]) == 6
  for row in record["simulated"]:
    assert row["adaptive_s"] > 0 and row["best_static"] in (1, 2, 4, 8)
  measured = record["measured"]
  assert set(measured["results"]) == {"adaptive", "static 8"}
  assert all(r["step_s"] > 0 for r in measured["results"].values())
