"""bench.post_training: the quantization table is collected from a run's eval files and its
quantized models' manifests; what was not evaluated is listed."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_eval(workdir, step, suffix, **metrics):
  os.makedirs(workdir / "eval", exist_ok=True)
  (workdir / "eval" / f"metrics_{step}{suffix}.json").write_text(json.dumps(dict(
      step=step, num_videos=8, metrics=metrics)))


def write_manifest(workdir, step, name, quantized, full, **extra):
  folder = workdir / "quantized" / str(step) / name
  os.makedirs(folder)
  (folder / "quantization.json").write_text(json.dumps(dict(
      bytes=dict(quantized=quantized, full_precision=full), **extra)))


def test_the_table_has_each_scheme_with_its_bytes_and_lists_what_is_missing(tmp_path):
  run = tmp_path / "run"
  write_eval(run, 3200, "", digit_accuracy=0.85, digit_frechet_distance=98.0)
  write_eval(run, 3200, "_w8", digit_accuracy=0.84)
  write_eval(run, 3200, "_mixed", digit_accuracy=0.83)
  write_manifest(run, 3200, "w8", 700, 2000)
  write_manifest(run, 3200, "mixed", 650, 2000, mixed=dict(
      bits=8.0, activations=0.9, spent=dict(bits=7.8, activations=0.91, error=1e-4),
      choice={"a": "w8a8", "b": "w8"}))
  result = subprocess.run(
      [sys.executable, "-m", "bench.post_training", f"--run={run}", "--schemes=w8,w4,mixed",
       f"--lora={tmp_path / 'no_lora'}", f"--finetune={tmp_path / 'no_finetune'}",
       f"--out={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads(next((tmp_path / "out").glob("post_training-*.json")).read_text())
  rows = {r["name"]: r for r in saved["quantized"]}
  assert rows["full precision"]["model_bytes"] == 2000 and rows["w8"]["model_bytes"] == 700
  assert rows["mixed"]["mixed"]["schemes"] == {"w8": 1, "w8a8": 1}
  assert len(saved["missing"]) == 4  # w4; the LoRA base model's, LoRA run's and fine-tune's
  table = next((tmp_path / "out").glob("post_training-*.md")).read_text()
  assert "| w8 | 0.840 | - | - | - | 700 |" in table
