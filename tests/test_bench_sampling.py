"""python -m bench.sampling stays runnable: on CPU it times the tiny quick start, dense vs
AdaSpa."""
import json
import subprocess
import sys


def test_the_sampling_benchmark_times_dense_and_adaspa_and_records_what_it_ran(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "bench.sampling", "--sparsity=0.5", "--call_repeats=1",
       f"--out={tmp_path}", "--config.sample.sparse.block=8"],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  [path] = tmp_path.glob("sampling-*.json")
  record = json.loads(path.read_text())
  assert record["meta"]["video_tokens"] == 16 and record["meta"]["searches"] == [1]
  dense, adaspa = record["results"]
  assert dense["variant"] == "dense" and adaspa["variant"] == "adaspa"
  assert adaspa["seconds"] > 0 and 0 < adaspa["recall"] <= 1
  assert set(adaspa["call_ms"]) == {"dense", "fused_search", "cached_search", "sparse"}
  assert "| adaspa | 0.5 |" in path.with_suffix(".md").read_text()
