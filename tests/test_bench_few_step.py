"""bench.few_step: the few-step table is collected from the runs' eval files."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_eval(workdir, step, schedule, calls, digit):
  os.makedirs(workdir / "eval", exist_ok=True)
  name = f"metrics_{step}{'_' + schedule if schedule else ''}.json"
  (workdir / "eval" / name).write_text(json.dumps(dict(
      step=step, num_videos=8, seconds=dict(sampling=1.5),
      sampling=dict(calls=calls), metrics=dict(digit_accuracy=digit, direction_accuracy=0.9,
                                               digit_frechet_distance=12.0))))


def test_the_table_lists_each_method_and_what_was_not_evaluated(tmp_path):
  teacher, reflow = tmp_path / "teacher", tmp_path / "reflow"
  write_eval(teacher, 3200, "", 49, 0.85)
  write_eval(teacher, 400, "uniform-4", 4, 0.1)  # an older checkpoint's: not the newest step
  write_eval(teacher, 3200, "uniform-4", 4, 0.6)
  write_eval(reflow, 1200, "uniform-4", 4, 0.8)
  os.makedirs(teacher / "schedules")
  (teacher / "schedules" / "searched-4.json").write_text(json.dumps(dict(
      name="searched-4", sigmas=[1.0, 0.7, 0.3, 0.0], solvers=["heun", "euler", "euler"],
      skip=[[], [], []], meta=dict(score=100.0, start_score=150.0, evaluations=70,
                                   seconds=160.0))))
  result = subprocess.run(
      [sys.executable, "-m", "bench.few_step", f"--teacher={teacher}", f"--reflow={reflow}",
       f"--distilled={tmp_path / 'none'}", "--calls=4", f"--out={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads(next((tmp_path / "out").glob("few_step-*.json")).read_text())
  rows = {(r["method"], r["calls"]): r for r in saved["rows"]}
  assert rows[("teacher (its sampler)", 49)]["digit_accuracy"] == 0.85
  assert rows[("uniform", 4)]["digit_accuracy"] == 0.6 and rows[("reflow", 4)]["step"] == 1200
  assert saved["searches"]["searched-4"]["score"] == 100.0
  assert len(saved["missing"]) == 2  # the teacher's searched-4 and the distilled student
  assert "| searched-4 | 1.000 0.700 0.300 0.000 |" in next(
      (tmp_path / "out").glob("few_step-*.md")).read_text()
