"""python -m eval (eval/evaluate.py, eval/videos.py): a run's samples against real videos."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data import video_io
from rundir.config_file import load_config
from eval import evaluate, videos as video_sets


def tiny_config(workdir, **eval_overrides):
  config = load_config(str(workdir))
  config.eval.update(eval_overrides)
  return config


def test_it_samples_a_checkpoint_and_scores_the_prompted_digits(tiny_run, tmp_path):
  out = str(tmp_path / "metrics.json")
  results = evaluate.run(tiny_config(tiny_run, metrics=("digits",), num_videos=6, batch_size=4),
                         str(tiny_run), out=out, log=None)
  with open(out) as f:
    saved = json.load(f)
  assert saved["step"] == 6 and saved["num_videos"] == 6
  for name in ("digit_accuracy", "direction_accuracy", "digit_frechet_distance",
               "digit_kernel_distance"):
    assert np.isfinite(saved["metrics"][name])
  assert set(saved["seconds"]) >= {"sampling", "digits", "total"}
  assert "metric" in evaluate.table(results) and "digit_accuracy" in evaluate.table(results)
  # The classifier is cached in the workdir for the next run.
  assert os.listdir(os.path.join(tiny_run, "eval", "digit_classifier"))


def test_a_label_conditioned_run_is_sampled_for_the_real_videos_labels(tmp_path):
  import train  # noqa: PLC0415  (defines flags: only here)
  from configs.video_dit import get_config  # noqa: PLC0415

  config = get_config("runlocal,cond=label")
  config.unlock()
  config.train.update(num_steps=2, checkpoint_every=2, sample_every=0)
  train.train(config, str(tmp_path))
  config.eval.update(metrics=("digits",), num_videos=4, batch_size=4, classifier_steps=5)
  results = evaluate.run(config, str(tmp_path), out=str(tmp_path / "m.json"), log=None)
  assert results["step"] == 2 and np.isfinite(results["metrics"]["digit_accuracy"])


def write_folder(folder, videos, captions):
  os.makedirs(folder, exist_ok=True)
  for i, video in enumerate(video_io.to_uint8(videos)):
    video_io.write_gif(os.path.join(folder, f"{i}.gif"), video)
  with open(os.path.join(folder, "prompts.txt"), "w") as f:
    f.write("".join(f"{i}: {c}\n" for i, c in enumerate(captions)))


def test_a_folder_of_videos_is_read_with_its_prompts_and_paired_with_references(tiny_run,
                                                                              tmp_path):
  config = tiny_config(tiny_run, metrics=("digits",), num_videos=5)
  real, captions, _ = video_sets.real_videos(config, 5, seed=3)
  write_folder(tmp_path / "generated", real, captions)
  write_folder(tmp_path / "reference", real, captions)
  read, read_captions = video_sets.folder_videos(str(tmp_path / "generated"), (2, 16, 16), 1)
  assert read.shape == real.shape and read_captions == captions
  np.testing.assert_allclose(read, real, atol=1.5 / 127.5)  # written as 8-bit GIF, read back
  results = evaluate.run(config, str(tiny_run), videos_dir=str(tmp_path / "generated"),
                         reference_dir=str(tmp_path / "reference"),
                         out=str(tmp_path / "m.json"), log=None)
  assert results["metrics"]["psnr"] == float("inf") and results["metrics"]["ssim"] == 1.0
  assert results["step"] is None and results["num_videos"] == 5


def test_a_folder_without_captions_skips_the_digit_metrics_and_says_why(tiny_run, tmp_path):
  config = tiny_config(tiny_run, metrics=("digits",))
  real, captions, _ = video_sets.real_videos(config, 3, seed=4)
  write_folder(tmp_path / "generated", real, captions)
  os.remove(tmp_path / "generated" / "prompts.txt")
  results = evaluate.run(config, str(tiny_run), videos_dir=str(tmp_path / "generated"),
                         out=str(tmp_path / "m.json"), log=None)
  assert "no captions" in results["skipped"]["digits"]


def test_bad_settings_fail_before_any_sampling(tiny_run, tmp_path):
  with pytest.raises(ValueError, match="unknown"):
    evaluate.run(tiny_config(tiny_run, metrics=("fvd", "is")), str(tiny_run), log=None)
  with pytest.raises(FileNotFoundError, match="inception"):
    evaluate.run(tiny_config(tiny_run, metrics=("fid",),
                             inception_weights=str(tmp_path / "missing.pth")),
                 str(tiny_run), log=None)
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    evaluate.run(tiny_config(tiny_run), str(tmp_path), log=None)


def test_the_command_writes_json_prints_a_table_and_keeps_earlier_results(tiny_run):
  command = [sys.executable, "-m", "eval", f"--workdir={tiny_run}", "--num_videos=4"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = [subprocess.run(command + [f"--metrics={metrics}"], capture_output=True, text=True,
                         timeout=600, cwd=root) for metrics in ("digits,fvd", "digits")]
  for done in runs:
    assert done.returncode == 0, done.stderr[-3000:]
  assert "fvd" in runs[0].stdout and "digit_accuracy" in runs[0].stdout
  earlier = json.load(open(os.path.join(tiny_run, "eval", "metrics_6.1.json")))
  assert earlier["metrics"]["fvd"] > 0 and earlier["fvd_frames"] == 16
  latest = json.load(open(os.path.join(tiny_run, "eval", "metrics_6.json")))
  assert "fvd" not in latest["metrics"] and "digit_accuracy" in latest["metrics"]


def test_a_video_sampler_draws_other_prompts_with_its_compiled_sampler(tiny_run):
  import jax  # noqa: PLC0415

  from rundir.open_run import open_run  # noqa: PLC0415
  from sharding.mesh import make_mesh  # noqa: PLC0415

  mesh = make_mesh({"data": 1, "fsdp": 1, "seq": 1, "tensor": 1}, devices=jax.devices()[:1])
  with open_run(str(tiny_run), mesh=mesh) as run:
    params = run.params
    own = ["the digit 1 moves up", "the digit 2 moves down"]
    sampler = run.sampler(prompts=own)
    key = jax.random.key(0)
    names, cond = sampler.condition(own)
    assert names == own
    np.testing.assert_array_equal(sampler.generate(params, key, cond),
                                  sampler.generate(params, key))
    _, other = sampler.condition(["the digit 7 moves to the left", "the digit 0 moves up"])
    assert not np.allclose(sampler.generate(params, key, other), sampler.generate(params, key))
    _, three = sampler.condition(own + own[:1])
    with pytest.raises(ValueError, match="2 videos at a time"):
      sampler.generate(params, key, three)
