"""Image-to-video, extension and keyframes (Pusa): which frames a task holds, sample.py's given
frames from files, and python -m eval's numbers of videos sampled around real frames."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from data import video_io
from data.sources import make_source
from diffusion.frame_sampling import fill_held, frame_task, token_frames
from eval import digit_classifier, frame_tasks
from saved_runs import train_tiny_quickstart


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """The tiny quick start with one frame per token (4 frames of 16x16): text-to-video."""
  return train_tiny_quickstart(tmp_path_factory.mktemp("teacher_run"),
                               "tiny,text=hashed_words,patch_t=1")


@pytest.fixture(scope="module")
def frames_run(teacher_run, tmp_path_factory):
  """teacher_run fine-tuned 2 steps for per-frame noise levels by configs/frame_timesteps.py."""
  import train  # noqa: PLC0415
  from configs.frame_timesteps import get_config  # noqa: PLC0415
  workdir = tmp_path_factory.mktemp("frames_run")
  config = get_config(f"teacher={teacher_run},steps=2")
  config.train.update(batch_size=8, log_every=1)
  train.train(config, str(workdir))
  return workdir


def test_a_text_to_video_run_fine_tunes_for_frame_timesteps(teacher_run, frames_run, tiny_run):
  from configs.frame_timesteps import get_config  # noqa: PLC0415
  saved = json.loads((frames_run / "config.json").read_text())
  assert saved["flow"]["frame_timesteps"] == 0.5
  assert (saved["train"]["init_from"], saved["train"]["init_step"]) == (str(teacher_run), 6)
  with pytest.raises(ValueError, match="codes its videos in one latent frame"):
    get_config(f"teacher={tiny_run}")  # tokens of both its frames


def real_digits(count, seed=3, frames=4, size=16, speed=2):
  source = make_source("moving_digits", seed=seed, num_examples=count, num_frames=frames,
                       size=size, digit_scale=1, speed=speed, styles_per_digit=16)
  items = [source[i] for i in range(count)]
  return np.stack([i["video"] for i in items]), [i["caption"] for i in items]


def test_latent_frames_of_pixels_and_of_a_causal_vae():
  assert token_frames(4, 1).tolist() == [0, 1, 2, 3]
  assert token_frames(4, 2).tolist() == [0, 0, 1, 1]
  assert token_frames(9, 1, temporal_factor=4).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_a_task_holds_whole_latent_frames():
  image = frame_task("image", 1, token_frames(9, 1, temporal_factor=4))
  assert image.mask.tolist() == [True, False, False] and image.held.sum() == 1
  extend = frame_task("extend", 5, token_frames(9, 1, temporal_factor=4))
  assert extend.mask.tolist() == [True, True, False]
  # keyframes' last frame stands for the rest of its latent frame: held still over it
  keys = frame_task("keyframes", 1, token_frames(9, 1, temporal_factor=4))
  assert keys.mask.tolist() == [True, False, True]
  assert np.flatnonzero(keys.held).tolist() == [0, 5, 6, 7, 8]
  videos = np.arange(9, dtype=np.float32)[None, :, None, None, None]
  assert fill_held(videos, keys)[0, :, 0, 0, 0].tolist() == [0, 0, 0, 0, 0, 8, 8, 8, 8]
  # tokens of 2 frames: each keyframe held still over its token's other frame
  keys = frame_task("keyframes", 1, token_frames(6, 2))
  assert keys.mask.tolist() == [True, False, True]
  assert np.flatnonzero(keys.held).tolist() == [0, 1, 4, 5]
  videos = np.arange(6, dtype=np.float32)[None, :, None, None, None]
  assert fill_held(videos, keys)[0, :, 0, 0, 0].tolist() == [0, 0, 0, 5, 5, 5]
  with pytest.raises(ValueError, match="image-to-video needs a model whose first latent frame"):
    frame_task("image", 1, token_frames(4, 2))
  with pytest.raises(ValueError, match="codes all 4 frames of a video in one latent frame"):
    frame_task("keyframes", 1, token_frames(4, 4))
  assert not frame_task("text", 1, token_frames(4, 4)).mask.any()  # text-to-video: any model
  with pytest.raises(ValueError, match=r"extend from \[2\] frames"):
    frame_task("extend", 3, token_frames(4, 2))
  with pytest.raises(ValueError, match="noise level must be in"):
    frame_task("image", 1, token_frames(4, 1), level=1.0)


def test_the_sampler_holds_the_given_frames_of_each_task(frames_run):
  from rundir.open_run import open_run  # noqa: PLC0415
  given, captions = real_digits(2)
  outs = {}
  with open_run(str(frames_run)) as run:
    for name, count in (("image", 1), ("extend", 2), ("keyframes", 1)):
      task = run.frame_task(name, count)
      sampler = run.sampler(prompts=captions, task=task)
      out = outs[name] = sampler.generate(run.params, jax.random.key(0), given=given)
      np.testing.assert_array_equal(out[:, task.given], given[:, task.given])
      assert np.abs(out[:, ~task.held] - given[:, ~task.held]).max() > 0.05  # sampled
    # lightly noised given frames: the model sees them at that level; they come out as given
    noised = run.sampler(prompts=captions, task=run.frame_task("image", level=0.3)).generate(
        run.params, jax.random.key(0), given=given)
    np.testing.assert_array_equal(noised[:, 0], given[:, 0])
    assert np.abs(noised[:, 1:] - outs["image"][:, 1:]).max() > 1e-5  # 0 if ignored
    with pytest.raises(ValueError, match="given frames go with a task"):
      run.sampler(prompts=captions).generate(run.params, jax.random.key(0), given=given)
    with pytest.raises(ValueError, match="the given videos are"):
      sampler.generate(run.params, jax.random.key(0), given=given[:, :3])


def sample(*args):
  return subprocess.run([sys.executable, "sample.py", *args], capture_output=True, text=True)


def test_sample_py_reads_the_given_frames_from_image_and_video_files(frames_run, tmp_path):
  videos, _ = real_digits(2)
  frames = video_io.to_uint8(videos[0])  # [4, 16, 16, 1]
  video_io.write_gif(str(tmp_path / "clip.gif"), frames)
  for i in (0, 3):
    video_io.write_gif(str(tmp_path / f"frame{i}.png"), frames[i:i + 1])
  runs = dict(image=["--given", str(tmp_path / "frame0.png")],
              extend=["--given_frames=2", "--given", str(tmp_path / "clip.gif")],
              keyframes=["--given", f"{tmp_path / 'frame0.png'},{tmp_path / 'frame3.png'}"])
  for task, given in runs.items():
    out = tmp_path / task
    result = sample(f"--workdir={frames_run}", f"--task={task}", *given, f"--out={out}",
                    "--prompt=the digit 3 moves up", "--prompt=the digit 7 moves down",
                    "--num_steps=2", "--upscale=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "given" in result.stdout
    written = video_io.read_video_frames(str(out / "1.gif"), 4, start=0)
    held = {"image": [0], "extend": [0, 1], "keyframes": [0, 3]}[task]
    expected = videos[0, held, ..., 0]
    got = written[held].astype(np.float32).mean(-1) / 127.5 - 1
    assert np.abs(got - expected).max() < 0.05, task  # the given frames, as given


def test_sample_py_refuses_given_frames_it_cannot_use(frames_run, tiny_run, tmp_path):
  result = sample(f"--workdir={frames_run}", "--task=image")
  assert result.returncode != 0 and "--given goes with" in result.stderr
  result = sample(f"--workdir={frames_run}", "--task=image", f"--given={tmp_path}/none.png")
  assert result.returncode != 0 and "none.png is not a file" in result.stderr
  still = tmp_path / "still.png"
  video_io.write_gif(str(still), np.zeros((1, 16, 16, 1), np.uint8))
  result = sample(f"--workdir={frames_run}", "--task=extend", f"--given={still}")
  assert result.returncode != 0 and "has 1 frame(s); the task gives the first 2" in result.stderr
  # a model whose tokens hold both frames has no first frame of its own to be given
  result = sample(f"--workdir={tiny_run}", "--task=image", f"--given={still}")
  assert result.returncode != 0 and "in one latent frame" in result.stderr


def test_the_numbers_of_real_videos_are_a_perfect_models(seed):
  videos, captions = real_digits(16, seed=seed)
  classifier = digit_classifier.DigitClassifier(1, 1, rngs=nnx.Rngs(0))  # digits not judged
  for name, count in (("image", 1), ("extend", 2)):
    task = frame_task(name, count, token_frames(4, 1))
    numbers = frame_tasks.task_numbers(task, videos, videos, captions, classifier)
    assert numbers["motion_direction_accuracy"] == 1.0
    assert numbers["appearance_mse"] == 0.0 and numbers["given_frames_mse"] == 0.0
    assert 2.0 <= numbers["speed"] <= 2.0 * np.sqrt(2) + 1e-6  # 2 px a frame, or diagonally
    # a video that stands still on its given frame does not move, in no direction
    still = fill_held(videos, task)
    numbers = frame_tasks.task_numbers(task, still, videos, captions, classifier)
    assert numbers["motion_direction_accuracy"] == 0.0 and numbers["speed"] == 0.0
  # another hand's frames of the same digit: further from the given frame than its own
  other = frame_tasks.other_handwriting(task, videos, captions)
  assert 0.0 < other < frame_tasks.appearance_mse(task, np.full_like(videos, -1.0), videos)
  keys = frame_task("keyframes", 1, token_frames(4, 1))
  assert frame_tasks.task_numbers(keys, videos, videos, captions, classifier)["path_error"] < 0.5
  jumps = videos[:, [0, 3, 0, 3]]  # the middle frames at the keyframes, not between them
  assert frame_tasks.task_numbers(keys, jumps, videos, captions, classifier)["path_error"] > 1.5


def test_eval_scores_videos_sampled_around_held_out_frames(frames_run):
  from eval import evaluate  # noqa: PLC0415
  from rundir.config_file import load_config  # noqa: PLC0415
  config = load_config(str(frames_run))
  config.eval.metrics = ("digits",)
  results = evaluate.run(config, str(frames_run), task=("extend", 2, 0.0), log=None,
                         suffix="_extend2")
  metrics = results["metrics"]
  assert results["task"] == dict(name="extend", given_frames=[0, 1], given_noise=0.0)
  assert metrics["given_frames_mse"] == 0.0  # pixel space: held exactly
  assert metrics["real_motion_direction_accuracy"] == 1.0
  for name in ("frame_digit_accuracy", "appearance_mse", "motion_direction_accuracy", "speed",
               "digit_accuracy"):
    assert np.isfinite(metrics[name]), name
  assert results["path"].endswith("metrics_2_extend2.json")
  with open(results["path"]) as f:
    assert json.load(f)["metrics"] == metrics
