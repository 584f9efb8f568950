"""train.py on a VAE config (configs/vae_quickstart.py:tiny): what the run directory holds, a
resumed run equal to an uninterrupted one to the bit, and a changed VAE refused."""
import os
import shutil

import pytest

import train
from configs.vae_quickstart import get_config
from rundir.config_file import load_config
from rundir.metric_writers import read_metrics
from saved_runs import assert_bitwise_equal, final_state


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  """6 steps of the tiny VAE (checkpoints 3 and 6, reconstructions at 6), trained once."""
  workdir = tmp_path_factory.mktemp("vae_run")
  train.train(get_config("tiny"), str(workdir))
  return workdir


def test_a_vae_run_logs_reconstruction_metrics_and_writes_reconstructions(vae_run):
  assert load_config(vae_run).trains == "vae"
  metrics = read_metrics(vae_run)
  assert [m["step"] for m in metrics] == [2, 3, 4, 6]
  assert {"loss", "l1", "kl", "psnr", "ssim", "grad_norm", "lr", "pixels_per_sec"} <= set(
      metrics[0])
  assert metrics[-1]["l1"] < metrics[0]["l1"]  # it learns
  samples = vae_run / "samples" / "step_6"
  assert {"0.mp4", "1.gif", "grid.png", "prompts.txt"} <= set(os.listdir(samples))
  assert (samples / "prompts.txt").read_text().startswith("0: original | reconstruction: the "
                                                           "digit")
  assert sorted(os.listdir(vae_run / "checkpoints")) == ["3", "6"]


def test_a_resumed_vae_run_equals_the_uninterrupted_one_bitwise(vae_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(vae_run, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")  # as if stopped after the checkpoint at 3
  config = get_config("tiny")
  config.unlock()
  config.train.sample_every = 0
  state = train.train(config, str(workdir))
  assert int(state.step) == 6
  assert_bitwise_equal(state, final_state(vae_run))


def test_a_changed_vae_on_a_saved_run_is_an_error(vae_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(vae_run, workdir)
  config = get_config("tiny")
  config.unlock()
  config.vae.latent_channels = 8
  with pytest.raises(ValueError, match=r"(?s)cannot resume.*vae.latent_channels: 4 -> 8"):
    train.train(config, str(workdir))
  config.vae.update(latent_channels=4, dtype="bfloat16", latents_std=(2.0,) * 4)  # runtime
  assert train.identity_changes(load_config(str(workdir)), config) == []


def test_a_video_shape_the_vae_cannot_code_is_an_error_before_training(tmp_path):
  config = get_config("tiny")
  config.unlock()
  config.train.video_shape = (6, 16, 18)
  with pytest.raises(ValueError, match=r"(?s)train.video_shape has 6 frames.*use 5 or 9.*"
                                       r"16x18; height and width must be multiples"):
    train.train(config, str(tmp_path))
  assert not os.listdir(tmp_path)
