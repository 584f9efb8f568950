"""eval/digit_classifier.py: the quick-start classifier of digit and direction of motion."""
import json
import os

import ml_collections
import numpy as np
import pytest

from configs.common import data_config
from eval import digit_classifier


@pytest.fixture(scope="module")
def data():
  return data_config("moving_digits", num_examples=1000, num_frames=3, size=24, digit_scale=2,
                     speed=4, styles_per_digit=4)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("classifier"))
  model, meta = digit_classifier.trained_classifier(workdir, data, 3, 1, log=None, steps=300,
                                                    num_examples=4000)
  return workdir, model, meta


def test_it_learns_the_digit_and_the_direction_of_held_out_videos(trained):
  _, _, meta = trained
  print(meta)
  assert meta["held_out_digit_accuracy"] > 0.8  # chance: 0.1
  assert meta["held_out_direction_accuracy"] > 0.8  # chance: 0.125


def test_it_is_cached_in_the_workdir_and_loads_the_same(trained, data):
  workdir, model, meta = trained
  videos, digits, directions = digit_classifier.draw_examples(data, 32, seed=123)
  loaded, loaded_meta = digit_classifier.trained_classifier(workdir, data, 3, 1, log=None)
  assert loaded_meta == meta
  np.testing.assert_array_equal(digit_classifier.predict(model, videos)["features"],
                                digit_classifier.predict(loaded, videos)["features"])


def test_another_data_config_gets_its_own_cache(trained, data):
  workdir, _, _ = trained
  other = ml_collections.ConfigDict(data.to_dict())
  other.kwargs.speed = 2
  assert digit_classifier.cache_dir(workdir, other) != digit_classifier.cache_dir(workdir, data)


def test_metrics_score_prompted_labels_and_distances(trained, data):
  _, model, _ = trained
  real, _, _ = digit_classifier.draw_examples(data, 64, seed=5)
  videos, digits, directions = digit_classifier.draw_examples(data, 64, seed=6)
  captions = [f"the digit {d} moves {digit_classifier.DIRECTIONS[m][1]}"
              for d, m in zip(digits, directions)]
  good = digit_classifier.digit_metrics(model, videos, captions, real)
  wrong_digits = [f"the digit {(d + 1) % 10} moves {digit_classifier.DIRECTIONS[m][1]}"
                  for d, m in zip(digits, directions)]
  bad = digit_classifier.digit_metrics(model, videos, wrong_digits, real)
  noisy = digit_classifier.digit_metrics(
      model, np.clip(videos + np.random.default_rng(0).normal(size=videos.shape), -1, 1),
      captions, real)
  assert good["digit_accuracy"] > 0.8 and good["direction_accuracy"] > 0.8
  assert bad["digit_accuracy"] < 0.3 and bad["direction_accuracy"] == good["direction_accuracy"]
  assert good["digit_frechet_distance"] < noisy["digit_frechet_distance"]
  assert good["digit_kernel_distance"] < noisy["digit_kernel_distance"]
  # each prompted digit's own accuracy; weighted by its prompts they make up the whole
  counts = np.bincount(digits, minlength=10)
  per_digit = [good.get(f"digit_{d}_accuracy", 0.0) for d in range(10)]
  assert {f"digit_{d}_accuracy" for d in range(10) if counts[d]} <= set(good)
  np.testing.assert_allclose(np.dot(counts, per_digit) / counts.sum(), good["digit_accuracy"])


def test_other_data_or_several_digits_are_refused_with_what_to_do():
  with pytest.raises(ValueError, match="moving_digits"):
    digit_classifier.check_data(data_config("video_folder", root="x", num_frames=4))
  with pytest.raises(ValueError, match="max_digits=1"):
    digit_classifier.check_data(data_config("moving_digits", max_digits=2))
  with pytest.raises(ValueError, match="several"):
    digit_classifier.labels_of(["the digit 1 moves up and the digit 2 moves down"])


def test_one_command_trains_and_caches_it_for_a_run(tiny_run, tmp_path):
  import shutil  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  workdir = tmp_path / "run"
  shutil.copytree(tiny_run, workdir, ignore=shutil.ignore_patterns("checkpoints", "eval"))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "-m", "eval.digit_classifier", f"--workdir={workdir}",
                         "--steps=20"], capture_output=True, text=True, timeout=300, cwd=root)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "held-out accuracy" in done.stdout
  (cached,) = os.listdir(workdir / "eval" / "digit_classifier")
  assert json.load(open(workdir / "eval" / "digit_classifier" / cached / "meta.json"))[
      "steps"] == 20
