"""python -m eval: FVD, FID and the quick-start metrics of a run's samples against real videos.

  python -m eval --workdir=runs/quickstart                     # sample from the latest checkpoint
  python -m eval --config=configs/quickstart.py --workdir=runs/quickstart \
      --config.eval.num_videos=512 --metrics=fvd,digits
  python -m eval --workdir=runs/quickstart --videos=runs/quickstart/samples/sample_3200
  python -m eval --workdir=runs/x --videos=generated/ --reference_videos=originals/  # + PSNR/SSIM
  python -m eval --workdir=runs/mixed_shapes --shape=8,32,32   # one shape of a multi-shape run
  python -m eval --workdir=runs/quickstart --schedule=searched-4 --metrics=digits  # few steps

Given frames (a run fine-tuned for per-frame noise levels, configs/frame_timesteps.py): the
frames of held-out real videos (moving digits: the test split's handwriting) are given and the
rest sampled for their captions; eval/frame_tasks.py adds how well the videos keep and go on
from them, into metrics_<step>_<task>.json:

  python -m eval --workdir=runs/quickstart_frames --task=image --metrics=digits
  python -m eval --workdir=runs/quickstart_frames --task=extend --given_frames=2
  python -m eval --workdir=runs/quickstart_frames --task=keyframes

It samples eval.num_videos videos (EMA parameters, the config's sample settings) for the
captions of as many real videos drawn from the config's dataset, or reads them from --videos,
then writes <workdir>/eval/metrics_<step>.json (an earlier file of that name is kept as
metrics_<step>.<n>.json) and prints a table. The config is --config if given, else the run's
config.json; eval settings are config.eval (configs/common.py:eval_config).

A run that trained on several shapes (stages, or a mixture of shapes: eval/shapes.py) is
evaluated at each of them, against real videos of that shape, into metrics_<step>_<TxHxW>.json;
--shape picks one.
"""
import os

from absl import app, flags
from ml_collections import config_flags

from diffusion.frame_sampling import TASKS
from eval import evaluate
from eval.shapes import parse_shape, shape_name, shape_targets
from rundir.config_file import load_config
from rundir.logs import quiet_library_logs

config_flags.DEFINE_config_file("config", None, "Experiment config file (default: the "
                                "workdir's config.json); its eval section sets the metrics.")
flags.DEFINE_string("workdir", None, "The train.py run: its checkpoints are sampled, and the "
                    "results and the digit classifier's cache go to <workdir>/eval/.")
flags.DEFINE_integer("step", None, "Checkpoint step to sample (default: the latest).")
flags.DEFINE_string("videos", None, "A folder of generated videos (e.g. sample.py's output) to "
                    "evaluate instead of sampling.")
flags.DEFINE_string("reference_videos", None, "A folder of real videos paired by name with "
                    "--videos: the real set, and PSNR/SSIM of each pair.")
flags.DEFINE_integer("num_videos", None, "Overrides eval.num_videos.")
flags.DEFINE_list("metrics", None, "Overrides eval.metrics, e.g. fvd,digits.")
flags.DEFINE_string("out", None, "The results JSON (default: <workdir>/eval/metrics_<step>.json).")
flags.DEFINE_string("shape", None, "T,H,W: evaluate at this one of the shapes the run trained "
                    "on (default: each of them, when there are several).")
flags.DEFINE_string("schedule", None, "A few-step schedule for sampling: uniform-K, heun-K, "
                    "searched-K or a .json file (default: the config's sample.schedule); the "
                    "results file is then metrics_<step>_<schedule>.json.")
flags.DEFINE_string("attention", None, "model.attention for sampling: auto (what this machine "
                    "runs best), xla, cudnn or block_sparse (default: the config's).")
flags.DEFINE_enum("task", "text", list(TASKS), "text: text-to-video; image, extend, keyframes: "
                  "videos sampled around the first, the first --given_frames, or the first and "
                  "last frames of held-out real videos.")
flags.DEFINE_integer("given_frames", 2, "How many first frames --task=extend gives.")
flags.DEFINE_float("given_noise", 0.0, "The noise level at which the model sees the given "
                   "frames, in [0, 1); the results file is then metrics_<step>_<task>_noise<level>"
                   ".json.")
flags.DEFINE_string("quantize", None, "Sample from the run's model quantized: a scheme (w8, "
                    "w4, w8a8, w8a8_fp8) or a saved plan's name (quantization/saved.py); the "
                    "results file ends in _<name>.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("pass --workdir=<train.py run> (results go to <workdir>/eval/)")
  quiet_library_logs()
  config = FLAGS.config
  if config is None:
    config = load_config(FLAGS.workdir)
  config.unlock()
  if FLAGS.attention is not None:
    config.model.attention = FLAGS.attention
  if FLAGS.num_videos is not None:
    config.eval.num_videos = FLAGS.num_videos
  if FLAGS.metrics is not None:
    config.eval.metrics = tuple(FLAGS.metrics)
  if FLAGS.schedule is not None:
    config.sample.schedule = FLAGS.schedule
  targets = shape_targets(config)
  if FLAGS.shape:
    try:
      shape = parse_shape(FLAGS.shape)
    except ValueError as e:
      raise app.UsageError(f"--shape: {e}") from None
    if shape not in targets:
      raise app.UsageError(f"--shape={FLAGS.shape}: the run trained on "
                           f"{', '.join(map(shape_name, targets))}; evaluate one of those")
    targets = {shape: targets[shape]}
  elif len(targets) > 1 and (FLAGS.videos or FLAGS.out):
    raise app.UsageError(f"the run trained on {len(targets)} shapes ("
                         f"{', '.join(map(shape_name, targets))}): pass --shape with --videos "
                         "or --out")
  several = len(targets) > 1 or FLAGS.shape
  schedule = config.sample.schedule
  named = "_" + os.path.basename(schedule).removesuffix(".json") if schedule else ""
  if FLAGS.task != "text":
    named += f"_{FLAGS.task}" + (f"{FLAGS.given_frames}" if FLAGS.task == "extend" else "")
    named += f"_noise{FLAGS.given_noise:g}" if FLAGS.given_noise else ""
  named += f"_{FLAGS.quantize}" if FLAGS.quantize else ""
  for shape, target in targets.items():
    if several:
      print(f"shape {shape_name(shape)} (T x H x W):")
    results = evaluate.run(target if several else config, FLAGS.workdir, step=FLAGS.step,
                           videos_dir=FLAGS.videos, reference_dir=FLAGS.reference_videos,
                           out=FLAGS.out,
                           suffix=(f"_{shape_name(shape)}" if several else "") + named,
                           task=(FLAGS.task, FLAGS.given_frames, FLAGS.given_noise),
                           quantize=FLAGS.quantize)
    print(evaluate.table(results))
    print(f"{results['num_videos']} videos in {results['seconds']['total']:.0f} s; "
          f"wrote {results['path']}")


if __name__ == "__main__":
  app.run(main)
