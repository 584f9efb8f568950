"""Few-step sampling on a trained run: the table of python -m eval's digit metrics at 1, 2, 4 and
8 model calls for each method, against the teacher's own sampler, from the eval files the runs
hold (this collects; it samples nothing).

    python -m eval --workdir=runs/quickstart --metrics=digits                  # the teacher
    python -m eval --workdir=runs/quickstart --schedule=uniform-4 --metrics=digits
    python -m eval --workdir=runs/quickstart --schedule=searched-4 --metrics=digits
    python -m eval --workdir=runs/quickstart_reflow --schedule=uniform-4 --metrics=digits
    python -m eval --workdir=runs/quickstart_distilled --schedule=uniform-1 --metrics=digits
    python -m bench.few_step --teacher=runs/quickstart --reflow=runs/quickstart_reflow \
        --distilled=runs/quickstart_distilled    # results in bench/results/few_step-*

Rows: the teacher's uniform K Euler steps (uniform-K), its searched schedules (searched-K, and
any --extra schedule names), the reflowed and the distilled students at uniform-K; a missing
eval file is a missing row, listed.
"""
import glob
import json
import os

from absl import app, flags

from bench import records

flags.DEFINE_string("teacher", "runs/quickstart", "The trained run.")
flags.DEFINE_string("reflow", "runs/quickstart_reflow", "Its reflowed student.")
flags.DEFINE_string("distilled", "runs/quickstart_distilled", "Its distilled student.")
flags.DEFINE_list("calls", ["1", "2", "4", "8"], "Model calls per video.")
flags.DEFINE_list("extra", [], "More schedule names of the teacher to list (e.g. searched-4-skip).")
flags.DEFINE_string("out", str(records.RESULTS), "Results folder.")
FLAGS = flags.FLAGS
METRICS = ("digit_accuracy", "direction_accuracy", "digit_frechet_distance")


def row(method: str, workdir: str, schedule: str) -> dict | None:
  results = records.newest_eval(workdir, schedule)
  if results is None:
    return None
  sampling = results.get("sampling") or {}
  return dict(method=method, workdir=workdir, schedule=schedule or "(its config)",
              calls=sampling.get("calls"), block_calls=sampling.get("block_calls"),
              depth=sampling.get("depth"), step=results["step"],
              num_videos=results["num_videos"], sampling_seconds=results["seconds"]["sampling"],
              **{k: results["metrics"].get(k) for k in METRICS})


def main(argv):
  del argv
  wanted = [("teacher (its sampler)", FLAGS.teacher, "")]
  for calls in FLAGS.calls:
    wanted += [("uniform", FLAGS.teacher, f"uniform-{calls}"),
               ("searched", FLAGS.teacher, f"searched-{calls}"),
               ("reflow", FLAGS.reflow, f"uniform-{calls}"),
               ("distilled", FLAGS.distilled, f"uniform-{calls}")]
  wanted += [("searched", FLAGS.teacher, name) for name in FLAGS.extra]
  rows, missing = [], []
  for method, workdir, schedule in wanted:
    found = row(method, workdir, schedule)
    (rows if found else missing).append(found or f"{workdir} {schedule or '(its sampler)'}")
  searches = {}
  for path in sorted(glob.glob(os.path.join(FLAGS.teacher, "schedules", "*.json"))):
    with open(path) as f:
      saved = json.load(f)
    meta = saved.get("meta", {})
    searches[saved["name"]] = dict(sigmas=saved["sigmas"], solvers=saved["solvers"],
                                   skip=saved["skip"], score=meta.get("score"),
                                   start_score=meta.get("start_score"),
                                   evaluations=meta.get("evaluations"),
                                   seconds=meta.get("seconds"))
  fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
  cost = lambda r: r["block_calls"] / r["depth"] if r["block_calls"] else (r["calls"] or 0)
  worth = lambda r: (f"{r['calls']}" if not r["block_calls"] or r["block_calls"] == r["calls"]
                     * r["depth"] else f"{r['calls']} ({r['block_calls'] / r['depth']:g} worth)")
  table = ("| method | schedule | calls | digit | direction | digit FD | sampling s |\n"
           "|---|---|---|---|---|---|---|\n"
           + "".join(f"| {r['method']} | {r['schedule']} | {worth(r)} | "
                     f"{fmt(r['digit_accuracy'])} | {fmt(r['direction_accuracy'])} | "
                     f"{fmt(r['digit_frechet_distance'])} | {r['sampling_seconds']} |\n"
                     for r in sorted(rows, key=lambda r: (cost(r), r["method"])))
           + "\n| searched schedule | sigmas | solvers | skipped blocks | FD start -> found "
           "| schedules scored | seconds |\n|---|---|---|---|---|---|---|\n"
           + "".join(f"| {name} | {' '.join(f'{s:.3f}' for s in s_['sigmas'])} | "
                     f"{' '.join(s_['solvers'])} | {s_['skip']} | {fmt(s_['start_score'])} -> "
                     f"{fmt(s_['score'])} | {s_['evaluations']} | {s_['seconds']} |\n"
                     for name, s_ in searches.items()))
  if missing:
    table += "\nnot evaluated: " + "; ".join(missing) + "\n"
  meta = records.environment() | dict(teacher=FLAGS.teacher, reflow=FLAGS.reflow,
                                      distilled=FLAGS.distilled)
  base = records.write("few_step", "Few-step sampling on the quick start", meta,
                       dict(rows=rows, searches=searches, missing=missing), table, FLAGS.out)
  print(table)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
