"""Vectorized timesteps on the quick start: text-to-video, image-to-video, extension and keyframes
of the teacher and of its per-frame fine-tune, from the eval files the runs hold (this
collects; it samples nothing).

    python train.py --config=configs/quickstart.py:patch_t=1 --workdir=runs/quickstart_p1
    python train.py --config=configs/frame_timesteps.py --workdir=runs/quickstart_frames
    for run in runs/quickstart_p1 runs/quickstart_frames; do
      python -m eval --workdir=$run --metrics=digits
      python -m eval --workdir=$run --metrics=digits --task=image
      python -m eval --workdir=$run --metrics=digits --task=extend --given_frames=2
      python -m eval --workdir=$run --metrics=digits --task=keyframes
    done
    python -m bench.frame_tasks      # results in bench/results/frame_tasks-*

A missing eval file is a missing row, listed.
"""
from absl import app, flags

from bench import records

flags.DEFINE_string("teacher", "runs/quickstart_p1", "The text-to-video run.")
flags.DEFINE_string("student", "runs/quickstart_frames", "Its per-frame fine-tune.")
flags.DEFINE_string("out", str(records.RESULTS), "Results folder.")
FLAGS = flags.FLAGS
TASKS = (("text-to-video", ""), ("image-to-video", "image"), ("extension from 2 frames",
                                                              "extend2"),
         ("keyframes", "keyframes"))
COLUMNS = (("digit", "digit_accuracy"), ("direction", "direction_accuracy"),
           ("digit FD", "digit_frechet_distance"),
           ("sampled frames' digit", "frame_digit_accuracy"),
           ("appearance MSE", "appearance_mse"),
           ("motion direction", "motion_direction_accuracy"), ("speed px/frame", "speed"),
           ("keyframe path error px", "path_error"))


def main(argv):
  del argv
  rows, missing = [], []
  for task, suffix in TASKS:
    for name, workdir in (("teacher", FLAGS.teacher), ("fine-tuned", FLAGS.student)):
      results = records.newest_eval(workdir, suffix)
      if results is None:
        missing.append(f"{workdir} {task}")
        continue
      rows.append(dict(task=task, run=name, workdir=workdir, step=results["step"],
                       num_videos=results["num_videos"],
                       **{key: results["metrics"].get(key) for _, key in COLUMNS},
                       real={key: results["metrics"].get(f"real_{key}") for _, key in COLUMNS
                             if f"real_{key}" in results["metrics"]}))
  fmt = lambda v: "-" if v is None else f"{v:.3f}"
  table = ("| task | run | " + " | ".join(title for title, _ in COLUMNS) + " |\n"
           + "|---" * (2 + len(COLUMNS)) + "|\n"
           + "".join(f"| {r['task']} | {r['run']} | "
                     + " | ".join(fmt(r[key]) for _, key in COLUMNS) + " |\n" for r in rows))
  reals = {r["task"]: r["real"] for r in rows if r["real"]}
  if reals:
    table += ("\nThe real videos' own numbers (a perfect model's):\n\n"
              + "".join(f"- {task}: " + ", ".join(f"{key} {value:.3f}"
                                                  for key, value in real.items()) + "\n"
                        for task, real in reals.items()))
  if missing:
    table += "\nnot evaluated: " + "; ".join(missing) + "\n"
  meta = records.environment() | dict(teacher=FLAGS.teacher, student=FLAGS.student)
  base = records.write("frame_tasks", "Vectorized timesteps on the quick start", meta,
                       dict(rows=rows, missing=missing), table, FLAGS.out)
  print(table)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
