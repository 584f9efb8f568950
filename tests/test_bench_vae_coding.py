"""python -m bench.vae_coding stays runnable: compiled memory of whole and chunked decoding."""
import json
import subprocess
import sys


def test_the_vae_coding_benchmark_records_chunked_and_whole_memory(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "bench.vae_coding", "--frames=9,33", "--size=16,16", "--time=false",
       f"--out={tmp_path}"], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  [path] = tmp_path.glob("vae_coding-*.json")
  rows = {(r["frames"], r["variant"]): r for r in json.loads(path.read_text())["results"]}
  assert set(rows) == {(9, "chunked"), (9, "whole"), (33, "chunked"), (33, "whole")}
  assert rows[33, "chunked"]["temp_mib"] == rows[9, "chunked"]["temp_mib"]  # flat
  assert rows[33, "whole"]["temp_mib"] > 2 * rows[9, "whole"]["temp_mib"]
  assert "| decode | 33 | chunked |" in path.with_suffix(".md").read_text()
