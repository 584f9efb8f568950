"""Samples videos from a trained run.

  python sample.py --workdir=runs/quickstart --prompt="the digit 3 moves up" \
      --prompt="the digit 7 moves to the right" --num_steps=50 --guidance_scale=4 --out=samples

  python sample.py --checkpoint=runs/quickstart/checkpoints/2000 --label=3 --label=7

It writes <out>/<i>.mp4 and <out>/<i>.gif per video, grid.png (one row of frames per video) and
prompts.txt. Without --prompt or --label it uses the config's train.sample_prompts or
train.sample_labels. The EMA parameters are used unless --noema.

Sparse attention after a warm-up of full attention (diffusion/sparse_sampling.py):

  python sample.py --workdir=runs/quickstart --sparse_attention=adaspa --sparsity=0.8
  python sample.py --workdir=runs/quickstart --sparse_attention=window

A few-step schedule (diffusion/schedules.py): K Euler steps, or the run's searched schedule of K
model calls (python -m eval.search_schedule writes it):

  python sample.py --workdir=runs/quickstart --schedule=uniform-4
  python sample.py --workdir=runs/quickstart --schedule=searched-4

AdaSpa also writes sparse_attention.json: the recall of attention mass and the sparsity of every
layer's pattern at each search.

Any shape the model takes (T, H, W divisible by its patch size; latent frames and pixels for a
latent DiT) with --shape=T,H,W, default train.video_shape; it prints the shapes the run trained
on, which sample best (a run of several shapes: configs/mixed_shapes.py):

  python sample.py --workdir=runs/mixed_shapes --shape=8,32,32 --prompt="the digit 3 moves up"
  python sample.py --workdir=runs/mixed_shapes --shape=1,32,32 --prompt="the digit 3"

Given frames (a run fine-tuned for per-frame noise levels, configs/frame_timesteps.py): the
given frames are held while the others are sampled around them (diffusion/frame_sampling.py):

  python sample.py --workdir=runs/quickstart_frames --task=image --given=digit.png \
      --prompt="the digit 3 moves up"
  python sample.py --workdir=runs/quickstart_frames --task=extend --given_frames=2 \
      --given=clip.mp4 --prompt="the digit 3 moves up"
  python sample.py --workdir=runs/quickstart_frames --task=keyframes \
      --given=first.png,last.png --prompt="the digit 3 moves up"

One --given per video (one for all prompts, or one prompt for all of them).

A LoRA run (configs/lora.py) samples with its adapters attached to its base run's weights, or
merged into them:

  python sample.py --workdir=runs/quickstart_lora --merge_lora

Quantized (quantization/): int8 or int4 weights, or int8/fp8 weights and activations; the
first call calibrates and quantizes the model and saves it under <workdir>/quantized/:

  python sample.py --workdir=runs/quickstart --quantize=w8a8

It runs on the mesh of the training run's config, or on --mesh=seq=4,data=-1 (the parameters are
restored straight into that mesh's shards); multi-host as train.py.
"""
import json
import os

import jax
import numpy as np
from absl import app, flags, logging

from configs.common import parse_arg, uses_lora
from data.video_io import UnreadableVideo
from diffusion.frame_sampling import TASKS
from diffusion.sparse_sampling import SPARSE_ATTENTION
from eval.shapes import parse_shape, shape_name, trained_shapes
from quantization.saved import quantized_run
from rundir.config_file import load_config
from rundir.given_frames import check_files, read_given
from rundir.logs import quiet_library_logs
from rundir.open_run import check_dit_run, open_run
from rundir.open_vae import video_shape
from rundir.videos import write_videos
from sharding import distributed
from sharding.mesh import MESH_AXES

flags.DEFINE_string("workdir", None, "The train.py run to sample from (its latest checkpoint).")
flags.DEFINE_string("checkpoint", None, "A checkpoint folder, <workdir>/checkpoints/<step>; "
                    "instead of --workdir.")
flags.DEFINE_multi_string("prompt", None, "A caption to sample a video for; repeat the flag.")
flags.DEFINE_multi_integer("label", None, "A class label, for label-conditioned models.")
flags.DEFINE_integer("num_steps", None, "ODE steps (default: the config's sample.num_steps).")
flags.DEFINE_string("sampler", None, "euler or heun (default: the config's sample.sampler).")
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale; 1 turns it off.")
flags.DEFINE_string("schedule", None, "A few-step schedule in place of --num_steps and "
                    "--sampler: uniform-K, heun-K, searched-K (K model calls; searched by python "
                    "-m eval.search_schedule) or a .json file (default: the config's "
                    "sample.schedule).")
flags.DEFINE_integer("upscale", None, "Write videos this many times larger (nearest "
                     "neighbour); default: the config's sample.upscale.")
flags.DEFINE_string("shape", None, "T,H,W of the videos (an image: 1,H,W); default: the run's "
                    "train.video_shape.")
flags.DEFINE_integer("seed", 0, "Seed of the initial noise.")
flags.DEFINE_string("out", None, "Output folder (default: <workdir>/samples/sample_<step>).")
flags.DEFINE_integer("fps", 8, "Frames per second of the written videos.")
flags.DEFINE_bool("ema", True, "Sample from the EMA parameters (--noema: the raw ones).")
flags.DEFINE_enum("sparse_attention", None, list(SPARSE_ATTENTION),
                  "Sparse attention after the warm-up: adaspa (patterns searched online per layer "
                  "and head, reused across steps) or a static pattern; none: as trained (default: "
                  "the config's sample.sparse.attention).")
flags.DEFINE_float("sparsity", None, "AdaSpa's average fraction of video key blocks dropped, in "
                   "[0, 1) (default: the config's sample.sparse.sparsity).")
flags.DEFINE_float("sparse_warmup", None, "Fraction of the steps with full attention first.")
flags.DEFINE_integer("sparse_block", None, "Block size of sparse patterns in tokens (0: "
                     "model.sparse_block).")
flags.DEFINE_string("attention", None, "model.attention for sampling: auto (what this machine "
                    "runs best), xla, cudnn or block_sparse (default: the run's config).")
flags.DEFINE_enum("task", "text", list(TASKS), "text: text-to-video; image: image-to-video (the "
                  "first frame given); extend: the first --given_frames frames given; keyframes: "
                  "the first and the last frames given.")
flags.DEFINE_multi_string("given", None, "The given frames of a video, from files (repeat the "
                          "flag per video): image: an image or a video's first frame; extend: a "
                          "video; keyframes: first.png,last.png or a video's first and last "
                          "frames.")
flags.DEFINE_integer("given_frames", 2, "How many first frames --task=extend gives.")
flags.DEFINE_float("given_noise", 0.0, "The noise level at which the model sees the given "
                   "frames, in [0, 1) (0: clean); they come out as given.")
flags.DEFINE_string("quantize", None, "Sample from the model quantized: w8 or w4 (int8/int4 "
                    "weights), w8a8 (int8 weights and activations), w8a8_fp8, or a saved plan's "
                    "name; made once (calibrated on the run's own trajectories) and saved under "
                    "<workdir>/quantized/<step>/<name>.")
flags.DEFINE_bool("merge_lora", False, "A LoRA run (configs/lora.py): sample with its adapters "
                  "merged into the base weights (the default runs them attached; both compute "
                  "the same).")
flags.DEFINE_string("mesh", None, "Mesh sizes as axis=size pairs, e.g. seq=4,data=-1 (default: "
                    "the training config's mesh).")
distributed.define_flags()


def parse_mesh(text: str) -> dict[str, int]:
  """'seq=4,data=-1' -> {'data': -1, 'fsdp': 1, 'seq': 4, 'tensor': 1}."""
  try:
    return dict(parse_arg(text, **{axis: 1 for axis in MESH_AXES}))
  except ValueError as e:
    raise app.UsageError(f"--mesh={text}: {e}; write axis=size pairs such as "
                         "seq=4,data=-1") from None


def resolve_run(workdir: str | None, checkpoint: str | None) -> tuple[str, int | None]:
  """(workdir, step or None for the latest) from --workdir or --checkpoint."""
  if bool(workdir) == bool(checkpoint):
    raise app.UsageError("pass exactly one of --workdir and --checkpoint")
  if checkpoint:
    checkpoint = os.path.abspath(checkpoint.rstrip("/"))
    step = os.path.basename(checkpoint)
    if not step.isdigit() or not os.path.isdir(checkpoint):
      raise app.UsageError(f"--checkpoint={checkpoint} must be an existing "
                           "<workdir>/checkpoints/<step> folder")
    return os.path.dirname(os.path.dirname(checkpoint)), int(step)
  if not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir} does not exist")
  return workdir, None


def pair_given(prompts, labels, given, config):
  """(prompts, labels, given) of one length: one --given for every prompt, or one prompt (or
  label) for every --given."""
  names = prompts or labels or list(config.train.sample_prompts
                                    if config.model.conditioning == "text"
                                    else config.train.sample_labels)
  if len(given) == 1:
    given = np.repeat(given, len(names), axis=0)
  elif len(names) == 1:
    names = names * len(given)
  elif len(names) != len(given):
    raise ValueError(f"{len(given)} --given for {len(names)} prompts: give one for all "
                     "prompts, one prompt for all of them, or as many of each")
  text = config.model.conditioning == "text"
  return (names, None, given) if text else (None, names, given)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  distributed.initialize_from_flags()  # before anything touches a device
  FLAGS = flags.FLAGS
  workdir, step = resolve_run(FLAGS.workdir, FLAGS.checkpoint)
  try:
    config = load_config(workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from None
  if FLAGS.merge_lora and not uses_lora(config):
    raise app.UsageError(f"--merge_lora: {workdir} is not a LoRA run (configs/lora.py)")
  try:
    check_dit_run(workdir, config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if FLAGS.schedule and (FLAGS.num_steps or FLAGS.sampler):
    raise app.UsageError("--schedule replaces --num_steps and --sampler: pass one or the other")
  for field, value in (("num_steps", FLAGS.num_steps), ("sampler", FLAGS.sampler),
                       ("guidance_scale", FLAGS.guidance_scale), ("upscale", FLAGS.upscale),
                       ("schedule", FLAGS.schedule)):
    if value is not None:
      config.sample[field] = value
  if FLAGS.label and config.model.conditioning == "text":
    raise app.UsageError("--label: this run's model is conditioned on text; pass --prompt")
  if FLAGS.prompt and config.model.conditioning == "label":
    raise app.UsageError("--prompt: this run's model is conditioned on class labels; pass "
                         "--label")
  if FLAGS.attention is not None:
    config.model.attention = FLAGS.attention
  try:  # a courtesy: the run's data (a video folder) may not be on this machine
    trained = sorted({shape for shapes in trained_shapes(config).values() for shape in shapes})
    print(f"the run trained on shapes (T x H x W) {', '.join(map(shape_name, trained))}")
  except (ValueError, OSError) as e:
    trained = None
    logging.warning("the shapes the run trained on are unknown here (%s)", e)
  if FLAGS.shape:
    try:
      shape = parse_shape(FLAGS.shape)
    except ValueError as e:
      raise app.UsageError(f"--shape: {e}") from None
    patch = tuple(config.model.patch_size)
    if any(size % p for size, p in zip(shape, patch)):
      raise app.UsageError(f"--shape={FLAGS.shape}: T, H and W must be multiples of the "
                           f"model's patch size {patch}")
    if trained is not None and shape not in trained:
      logging.warning("--shape=%s is none of the shapes the run trained on: the model may not "
                      "draw it well", FLAGS.shape)
    config.train.video_shape = shape
  for field, value in (("attention", FLAGS.sparse_attention), ("sparsity", FLAGS.sparsity),
                       ("warmup", FLAGS.sparse_warmup), ("block", FLAGS.sparse_block)):
    if value is not None:
      config.sample.sparse[field] = value
  if config.sample.sparse.attention != "adaspa" and FLAGS.sparsity is not None:
    logging.warning("--sparsity=%s does nothing without --sparse_attention=adaspa",
                    FLAGS.sparsity)
  if FLAGS.quantize and config.sample.sparse.attention != "none":
    raise app.UsageError("--quantize samples with dense attention: pass --sparse_attention=none")
  if (FLAGS.task == "text") != (not FLAGS.given):
    raise app.UsageError(f"--given goes with --task=image, extend or keyframes, and they need "
                         f"it (--task={FLAGS.task}, {len(FLAGS.given or [])} --given)")
  try:
    check_files(FLAGS.given or [])  # before the run is restored
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from None
  mesh = parse_mesh(FLAGS.mesh) if FLAGS.mesh else None
  try:
    # Quantization takes the plain DiT a LoRA run's merged adapters make.
    merge = FLAGS.merge_lora or bool(FLAGS.quantize and uses_lora(config))
    run = open_run(workdir, step=step, ema=FLAGS.ema, mesh=mesh, config=config,
                   merge_lora=merge)
  except FileNotFoundError as e:  # no checkpoints, or no such step: say so, no traceback
    raise app.UsageError(str(e)) from None
  with run:
    if FLAGS.quantize:
      try:
        run = quantized_run(run, FLAGS.quantize)
      except ValueError as e:
        raise app.UsageError(str(e)) from None
    try:
      task = run.frame_task(FLAGS.task, FLAGS.given_frames, FLAGS.given_noise)
      prompts, labels, given = FLAGS.prompt, FLAGS.label, None
      if FLAGS.given:
        *shape, channels = video_shape(config)
        given = read_given(FLAGS.given, task, tuple(shape), channels)
        prompts, labels, given = pair_given(prompts, labels, given, config)
      sampler = run.sampler(prompts=prompts, labels=labels, task=task)
    except (FileNotFoundError, ValueError, UnreadableVideo) as e:  # a schedule or a file that
      raise app.UsageError(str(e)) from None                         # is not there, or not valid
    videos, report = sampler.generate_with_report(run.params, jax.random.key(FLAGS.seed),
                                                  given=given)
  if jax.process_index() > 0:
    return
  named = f"_{FLAGS.quantize}" if FLAGS.quantize else ""
  out = FLAGS.out or os.path.join(workdir, "samples", f"sample_{run.step}{named}")
  paths = write_videos(videos, sampler.prompts, out, fps=FLAGS.fps,
                       upscale=config.sample.upscale)
  report_path = os.path.join(out, "sparse_attention.json")
  if not report and os.path.exists(report_path):  # an earlier call's: not about these videos
    os.remove(report_path)
  if report:
    with open(report_path, "w") as f:
      json.dump(report, f, indent=1)
    for search in report["searches"]:
      print(f"AdaSpa search at step {search['step']}: recall {search['recall']:.4f} at "
            f"sparsity {search['sparsity']:.3f}; per layer "
            + " ".join(f"{r:.3f}" for r in search["recall_per_layer"]))
  how = (sampler.schedule.describe(config.model.depth) if sampler.schedule else
         f"{config.sample.num_steps} {config.sample.sampler} steps, {sampler.calls()} calls")
  if task.name != "text":
    how += f"; {task.name}: frames {np.flatnonzero(task.given).tolist()} given"
  print(f"step {run.step}: wrote {len(paths) // 2} videos (mp4 + gif) and grid.png to {out} "
        f"({how})")


if __name__ == "__main__":
  app.run(main)
