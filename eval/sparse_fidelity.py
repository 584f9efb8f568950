"""How far sparse attention takes sampling from dense: PSNR and SSIM of the videos against
dense sampling from the same noise, and AdaSpa's recall of attention mass per layer.

  python -m eval.sparse_fidelity --workdir=runs/quickstart --sparsity=0.5,0.8,0.9
  python -m eval.sparse_fidelity --workdir=runs/quickstart --sparse_attention=window

For each setting it samples the config's train.sample_prompts once per seed, with the run's
sample settings (steps, sampler, guidance, sample.sparse's warm-up and search steps), and writes
<workdir>/eval/sparse_fidelity.json and a table. The baseline samples the model as configured:
dense, unless it was trained with a static model.sparse_pattern (AdaSpa's warm-up is dense).
"""
import copy
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from configs.checks import validate_sample_config
from diffusion.sparse_sampling import SPARSE_ATTENTION
from eval.fidelity import psnr, ssim
from rundir.config_file import load_config
from rundir.logs import quiet_library_logs
from rundir.open_run import open_run
from sharding.mesh import make_mesh


def compare(workdir: str, settings: list[dict], num_seeds: int = 2,
            num_steps: int | None = None, attention: str | None = None) -> dict:
  """Dense and each sparse setting (fields of sample.sparse) from the same noise -> results.
  attention: model.attention to sample with (default: the run's)."""
  config = load_config(workdir)
  if num_steps:
    config.sample.num_steps = num_steps
  if attention:
    config.model.attention = attention
  config.sample.sparse.attention = "none"
  variants = []
  for setting in settings:  # bad settings fail here, before any sampling
    variant = copy.deepcopy(config)
    variant.sample.sparse.update(setting)
    validate_sample_config(variant.sample)
    variants.append(variant)
  mesh = make_mesh({"data": 1, "fsdp": 1, "seq": 1, "tensor": 1}, devices=jax.devices()[:1])
  with open_run(workdir, mesh=mesh, config=config) as run:

    def videos_of(variant):
      sampler = run.sampler(config=variant)
      start = time.perf_counter()
      runs = [sampler.generate_with_report(run.params, jax.random.key(seed))
              for seed in range(num_seeds)]
      return (np.concatenate([videos for videos, _ in runs]), [r for _, r in runs],
              time.perf_counter() - start)

    dense, _, dense_seconds = videos_of(config)
    results = dict(workdir=os.path.abspath(workdir), step=run.step,
                   num_steps=config.sample.num_steps, sampler=config.sample.sampler,
                   num_videos=len(dense), dense_seconds=dense_seconds, settings=[])
    for setting, variant in zip(settings, variants):
      videos, reports, seconds = videos_of(variant)
      result = dict(setting, psnr=psnr(videos, dense), ssim=ssim(videos, dense),
                    seconds=seconds)
      if reports[0]:
        result.update(recall=float(np.mean([r["recall"] for r in reports])),
                      sparsity_measured=float(np.mean([r["sparsity"] for r in reports])),
                      recall_per_layer=np.mean([[s["recall_per_layer"] for s in r["searches"]]
                                                for r in reports], axis=(0, 1)).round(4).tolist(),
                      search_steps=[s["step"] for s in reports[0]["searches"]])
      results["settings"].append(result)
  return results


def table(results: dict) -> str:
  lines = [f"{results['num_videos']} videos, {results['num_steps']} {results['sampler']} steps, "
           f"step {results['step']} of {results['workdir']}",
           f"{'attention':>10} {'sparsity':>8} {'PSNR dB':>8} {'SSIM':>6} {'recall':>7}",
           f"{'dense':>10} {0:8.2f} {'inf':>8} {1:6.3f} {1:7.3f}"]
  for r in results["settings"]:
    lines.append(f"{r['attention']:>10} {r.get('sparsity', float('nan')):8.2f} {r['psnr']:8.2f} "
                 f"{r['ssim']:6.3f} {r.get('recall', float('nan')):7.3f}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  FLAGS = flags.FLAGS
  block = {} if FLAGS.sparse_block is None else {"block": FLAGS.sparse_block}
  if FLAGS.sparse_attention == "adaspa":
    try:
      sparsities = [float(s) for s in FLAGS.sparsity]
    except ValueError:
      raise app.UsageError(f"--sparsity={FLAGS.sparsity}: give numbers in [0, 1)") from None
    settings = [dict(attention="adaspa", sparsity=s, **block) for s in sparsities]
  else:
    settings = [dict(attention=FLAGS.sparse_attention, **block)]
  results = compare(FLAGS.workdir, settings, FLAGS.num_seeds, FLAGS.num_steps, FLAGS.attention)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "eval", "sparse_fidelity.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(results, f, indent=1)
  print(table(results))
  print(f"wrote {out}")


def define_flags():
  """The command line's flags; defined only when run as a script, so that importing compare()
  next to train.py's flags does not clash."""
  flags.DEFINE_string("workdir", None, "The train.py run to sample from (its latest checkpoint).",
                      required=True)
  flags.DEFINE_enum("sparse_attention", "adaspa", [a for a in SPARSE_ATTENTION if a != "none"],
                    "AdaSpa or a static pattern.")
  flags.DEFINE_list("sparsity", ["0.5", "0.8", "0.9"], "AdaSpa sparsities to measure.")
  flags.DEFINE_integer("num_seeds", 2, "Noise seeds; each samples every prompt.")
  flags.DEFINE_integer("num_steps", None, "ODE steps (default: the config's sample.num_steps).")
  flags.DEFINE_integer("sparse_block", None, "Pattern block size (default: sample.sparse.block).")
  flags.DEFINE_string("out", None, "JSON path (default: <workdir>/eval/sparse_fidelity.json).")
  flags.DEFINE_string("attention", None, "model.attention: auto (the Pallas kernels on GPUs and "
                      "TPUs), xla, cudnn or block_sparse (default: the run's config).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
