"""python -m bench.vae_coding stays runnable (one short length: tests/test_vae.py checks that
chunked memory stays flat as the frames grow)."""
import json
import subprocess
import sys


def test_the_vae_coding_benchmark_records_chunked_and_whole_memory(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "bench.vae_coding", "--frames=5", "--size=16,16", "--time=false",
       f"--out={tmp_path}"], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  [path] = tmp_path.glob("vae_coding-*.json")
  rows = {(r["frames"], r["variant"]): r for r in json.loads(path.read_text())["results"]}
  assert set(rows) == {(5, "chunked"), (5, "whole")}
  assert all(row["temp_mib"] > 0 and row["output_mib"] > 0 for row in rows.values())
  assert "| decode | 5 | chunked |" in path.with_suffix(".md").read_text()
