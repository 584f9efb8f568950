"""What python -m eval computes: generated videos against real ones from the config's dataset.

  FVD      Fréchet distance of I3D (Kinetics-400) logits of 16-frame clips at 224x224
  FID      Fréchet distance of InceptionV3 pool features of every frame at 299x299
  digits   the quick-start classifier: accuracy of the prompted digit and direction of motion,
           Fréchet and kernel distances of its features (moving_digits only)
  PSNR, SSIM  when the generated and reference videos are paired (--reference_videos)

evaluate() checks everything a metric needs (weights, data, captions) before sampling, so a
missing file fails in seconds; a metric of eval.metrics that cannot run on this data is skipped
and the results say why.
"""
import json
import os
import time

import jax
import ml_collections
import numpy as np

METRICS = ("fvd", "fid", "digits")


def plan(config: ml_collections.ConfigDict, settings, captions_known: bool) -> tuple[dict, dict]:
  """(metric -> what it needs, loaded up front; metric -> why it is skipped)."""
  from eval import digit_classifier, i3d  # noqa: PLC0415

  ready, skipped = {}, {}
  if "fvd" in settings.metrics:
    ready["fvd"] = i3d.weights_path()  # raises, saying what to install
  if "fid" in settings.metrics:
    if settings.inception_weights:
      from eval.inception_weights import read_state_dict  # noqa: PLC0415
      path = os.path.expanduser(settings.inception_weights)
      read_state_dict(path)  # a bad path or file fails now, not after sampling
      ready["fid"] = path
    else:
      skipped["fid"] = ("no InceptionV3 weights: set --config.eval.inception_weights to "
                        "pytorch-fid's pt_inception-2015-12-05 .pth (or .safetensors/.npz)")
  if "digits" in settings.metrics:
    try:
      digit_classifier.check_data(config.data)
    except ValueError as e:
      skipped["digits"] = str(e)
    else:
      if captions_known:
        ready["digits"] = True
      else:
        skipped["digits"] = ("the generated videos have no captions (prompts.txt or "
                             "<name>.txt) to score against")
  return ready, skipped


def compute_metrics(ready: dict, settings, workdir: str, config, generated: np.ndarray,
                    captions, real: np.ndarray, log=print) -> tuple[dict, dict]:
  """(metrics, seconds per metric) of generated vs real videos [N, T, H, W, C] in [-1, 1]."""
  from eval.frechet import frechet_distance  # noqa: PLC0415

  metrics, seconds = {}, {}
  if "digits" in ready:
    from eval import digit_classifier  # noqa: PLC0415
    start = time.perf_counter()
    model, meta = digit_classifier.trained_classifier(
        workdir, config.data, real.shape[1], real.shape[-1], log=log,
        steps=settings.classifier_steps)
    metrics.update(digit_classifier.digit_metrics(model, generated, captions, real))
    metrics["classifier_held_out_digit_accuracy"] = meta["held_out_digit_accuracy"]
    if meta["held_out_direction_accuracy"] is not None:  # None: still images
      metrics["classifier_held_out_direction_accuracy"] = meta["held_out_direction_accuracy"]
    seconds["digits"] = time.perf_counter() - start
  if "fvd" in ready:
    from eval import i3d  # noqa: PLC0415
    start = time.perf_counter()
    network = i3d.fvd_network(settings.feature_batch_size, ready["fvd"])
    clips = lambda v: i3d.fit_frames(v, settings.fvd_frames)
    metrics["fvd"] = frechet_distance(network(clips(generated)), network(clips(real)))
    seconds["fvd"] = time.perf_counter() - start
  if "fid" in ready:
    from eval.inception import fid_features  # noqa: PLC0415
    from eval.inception_weights import load_inception  # noqa: PLC0415
    start = time.perf_counter()
    model = load_inception(ready["fid"])
    frames = lambda v: v.reshape(-1, *v.shape[2:])  # every frame: [N * T, H, W, C]
    batch = 8 * settings.feature_batch_size
    metrics["fid"] = frechet_distance(fid_features(model, frames(generated), batch),
                                      fid_features(model, frames(real), batch))
    seconds["fid"] = time.perf_counter() - start
  return metrics, seconds


def run(config, workdir: str, *, step=None, videos_dir=None, reference_dir=None, out=None,
        log=print, suffix: str = "", task: tuple[str, int, float] | None = None,
        quantize: str | None = None) -> dict:
  """Evaluates and writes the results JSON; returns the results. config: the run's (or another)
  experiment config, checked here first; log (None: quiet) gets progress messages; suffix ends
  the default results file's name (metrics_<step><suffix>.json); task: (name, given frames,
  their noise level) samples around the frames of held-out real videos (eval/frame_tasks.py);
  quantize: sample from the run's model quantized by this scheme or saved plan
  (quantization/saved.py: loaded from the run's folder, or made and saved there)."""
  from configs.checks import validate_config  # noqa: PLC0415  (heavy imports: only when run)
  from eval import videos  # noqa: PLC0415
  from rundir.open_run import restore_run  # noqa: PLC0415
  from rundir.open_vae import video_shape  # noqa: PLC0415
  from training.checkpoints import checkpoint_dir  # noqa: PLC0415

  from rundir.open_run import check_dit_run  # noqa: PLC0415

  from configs.common import uses_lora  # noqa: PLC0415
  from data.reflow_pairs import with_real_data  # noqa: PLC0415
  from diffusion.frame_sampling import fill_held  # noqa: PLC0415

  start = time.perf_counter()
  log = log or (lambda message: None)
  check_dit_run(workdir, config)
  model = validate_config(config)
  config = with_real_data(config)  # a run of reflow pairs is judged by its teacher's data
  if videos_dir is None and not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ to sample: train first, or pass "
                            "--videos=<folder of generated videos>")
  if reference_dir and not videos_dir:
    raise ValueError("--reference_videos pairs with --videos; pass both")
  if task is not None and task[0] == "text":
    task = None
  if quantize and videos_dir:
    raise ValueError("--quantize samples the run's quantized model; it cannot read --videos")
  if quantize and config.sample.sparse.attention != "none":
    raise ValueError("--quantize samples with dense attention: set sample.sparse.attention "
                     "to none")
  if task is not None and videos_dir:
    raise ValueError(f"--task={task[0]} samples around the frames of real videos it draws; it "
                     "cannot read --videos")
  if task is not None and config.data.name == "moving_digits":  # held-out digits' frames
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.data.kwargs.split = "test"
  settings = config.eval
  *shape, channels = video_shape(config)  # the videos, decoded from latents for a latent DiT
  shape = tuple(shape)
  generated = captions = None
  if videos_dir:
    generated, captions = videos.folder_videos(videos_dir, shape, channels,
                                               settings.num_videos)
  ready, skipped = plan(config, settings,
                        captions_known=videos_dir is None or captions is not None)
  num = len(generated) if generated is not None else settings.num_videos
  if num < 2:
    raise ValueError(f"{videos_dir} holds {num} video; the distances need at least 2")
  if reference_dir:
    real, _ = videos.folder_videos(reference_dir, shape, channels, num)
    if len(real) != num:
      raise ValueError(f"--reference_videos has {len(real)} videos, --videos {num}")
  else:
    real, real_captions, real_labels = videos.real_videos(config, num, settings.seed)
  timings, sampling = {}, None
  if videos_dir is None:
    t = time.perf_counter()
    # Quantization takes the plain DiT a LoRA run's merged adapters make.
    opened = restore_run(workdir, config, model, step=step,
                         merge_lora=bool(quantize) and uses_lora(config))
    step = opened.step
    with opened:
      if quantize:
        from quantization.saved import quantized_run  # noqa: PLC0415
        opened = quantized_run(opened, quantize)
      batch = min(settings.batch_size, num)
      # The real videos' captions, or their labels for a label-conditioned model.
      frame_task = opened.frame_task(*task) if task else None
      if config.model.conditioning == "text":
        prompts, sampler = real_captions, opened.sampler(prompts=real_captions[:batch],
                                                         task=frame_task)
      else:
        prompts, sampler = real_labels, opened.sampler(labels=real_labels[:batch],
                                                       task=frame_task)
      captions = real_captions
      # Only the given frames reach the model, as from sample.py (a causal VAE's encoder
      # would read the real frames between them).
      given = fill_held(real, frame_task) if frame_task else None
      generated = videos.sampled_videos(sampler, opened.params, prompts, batch, settings.seed,
                                        given=given)
      schedule = sampler.schedule
      sampling = dict(calls=sampler.calls(), guidance_scale=config.sample.guidance_scale,
                      block_calls=schedule.block_calls(model.depth) if schedule else
                      sampler.calls() * model.depth, depth=model.depth,
                      schedule=(sampler.schedule.to_dict() if sampler.schedule else
                                dict(num_steps=config.sample.num_steps,
                                     sampler=config.sample.sampler)))
    timings["sampling"] = time.perf_counter() - t
    log(f"sampled {num} videos from step {step} in {timings['sampling']:.0f} s")
  metrics, seconds = compute_metrics(ready, settings, workdir, config, generated, captions,
                                     real, log=log)
  timings.update(seconds)
  if task is not None:
    if "digits" in ready:
      from eval import frame_tasks  # noqa: PLC0415
      t = time.perf_counter()
      classifier, _ = frame_tasks.still_classifier(workdir, config.data, real.shape[-1], log=log,
                                                   steps=settings.classifier_steps)
      metrics.update(frame_tasks.task_metrics(frame_task, generated, real, captions, classifier))
      timings["task"] = time.perf_counter() - t
    else:
      skipped["task"] = "the task's numbers read moving digits: add digits to eval.metrics"
  if reference_dir:
    metrics.update(paired_metrics(generated, real))
  timings["total"] = time.perf_counter() - start
  results = dict(
      workdir=os.path.abspath(workdir), step=step, videos=videos_dir and os.path.abspath(
          videos_dir), reference=os.path.abspath(reference_dir) if reference_dir
      else f"{config.data.name} (seed {settings.seed})", num_videos=num,
      video_shape=list(generated.shape[1:]), fvd_frames=settings.fvd_frames, sampling=sampling,
      task=None if task is None else dict(name=task[0], given_frames=np.flatnonzero(
          frame_task.given).tolist(), given_noise=frame_task.level),
      quantized=quantize or None, metrics=metrics, skipped=skipped,
      seconds={k: round(v, 1) for k, v in timings.items()},
      devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}")
  out = out or os.path.join(workdir, "eval", f"metrics_{step if step is not None else 'videos'}"
                            f"{suffix}.json")
  _write_keeping_old(out, results)
  results["path"] = out
  return results


def _write_keeping_old(path: str, results: dict) -> None:
  from rundir.keep import keep_earlier  # noqa: PLC0415

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  keep_earlier(path)
  with open(path, "w") as f:
    json.dump(results, f, indent=1, default=float)


def paired_metrics(generated: np.ndarray, reference: np.ndarray) -> dict:
  from eval.fidelity import psnr, ssim  # noqa: PLC0415
  return dict(psnr=psnr(generated, reference), ssim=ssim(generated, reference))


def table(results: dict) -> str:
  """The metrics as an aligned text table; a skipped metric gives its reason."""
  rows = [("metric", "value")]
  for name, value in results["metrics"].items():
    rows.append((name, f"{value:.4f}" if isinstance(value, float) else str(value)))
  for name, why in results["skipped"].items():
    rows.append((name, "skipped: " + why[:60] + ("..." if len(why) > 60 else "")))
  widths = [max(len(r[i]) for r in rows) for i in range(2)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
