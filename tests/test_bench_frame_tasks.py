"""bench.frame_tasks: the table of tasks is collected from the runs' eval files."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_eval(workdir, step, suffix, **metrics):
  os.makedirs(workdir / "eval", exist_ok=True)
  (workdir / "eval" / f"metrics_{step}{suffix}.json").write_text(json.dumps(dict(
      step=step, num_videos=8, metrics=metrics)))


def test_the_table_lists_each_task_of_each_run_and_what_was_not_evaluated(tmp_path):
  teacher, student = tmp_path / "teacher", tmp_path / "student"
  write_eval(teacher, 3200, "", digit_accuracy=1.0)
  write_eval(student, 1200, "", digit_accuracy=0.99)
  write_eval(student, 1200, "_image", digit_accuracy=0.97, motion_direction_accuracy=0.9,
             real_motion_direction_accuracy=1.0)
  write_eval(student, 400, "_keyframes", path_error=3.0)
  result = subprocess.run(
      [sys.executable, "-m", "bench.frame_tasks", f"--teacher={teacher}",
       f"--student={student}", f"--out={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads(next((tmp_path / "out").glob("frame_tasks-*.json")).read_text())
  rows = {(r["task"], r["run"]): r for r in saved["rows"]}
  assert rows[("text-to-video", "fine-tuned")]["digit_accuracy"] == 0.99
  assert rows[("image-to-video", "fine-tuned")]["real"] == dict(motion_direction_accuracy=1.0)
  assert rows[("keyframes", "fine-tuned")]["path_error"] == 3.0
  assert len(saved["missing"]) == 4  # the teacher's three tasks, the student's extension
  table = next((tmp_path / "out").glob("frame_tasks-*.md")).read_text()
  assert "| image-to-video | fine-tuned | 0.970 | - |" in table
