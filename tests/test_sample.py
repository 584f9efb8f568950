"""sample.py: videos from a run's workdir or one checkpoint, for prompts given on the command
line, written as mp4, gif and a PNG frame grid."""
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import numpy as np
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tiny_run):
  return tiny_run


def sample(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_sampling_prompts_from_a_workdir_writes_videos_and_a_frame_grid(workdir, tmp_path):
  result = sample(f"--workdir={workdir}", "--prompt=the digit 4 moves down",
                  "--prompt=the digit 9 moves up", "--num_steps=2", "--sampler=euler",
                  "--guidance_scale=2", "--seed=3", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 6: wrote 2 videos" in result.stdout
  for i in range(2):
    # T, H, W: 16x16 videos written 2x larger (sample.upscale)
    assert iio.imread(tmp_path / f"{i}.mp4").shape[:3] == (2, 32, 32)
    assert iio.imread(tmp_path / f"{i}.gif", index=None).shape[:3] == (2, 32, 32)
  grid = iio.imread(tmp_path / "grid.png")
  assert grid.shape[0] > 2 * 32 and grid.shape[1] > 2 * 32  # 2 rows (videos) x 2 frames
  with open(tmp_path / "prompts.txt") as f:
    assert f.read() == "0: the digit 4 moves down\n1: the digit 9 moves up\n"


def test_one_checkpoint_can_be_sampled_and_the_same_seed_gives_the_same_video(workdir,
                                                                                 tmp_path):
  for out in ("a", "b"):
    result = sample(f"--checkpoint={workdir}/checkpoints/3", "--num_steps=2", "--seed=1",
                    f"--out={tmp_path / out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3: wrote 2 videos" in result.stdout  # the config's two sample prompts
  assert (iio.imread(tmp_path / "a" / "grid.png") == iio.imread(tmp_path / "b" / "grid.png")).all()


def test_adaspa_and_static_patterns_are_sampling_options_and_adaspa_reports_recall(workdir,
                                                                                 tmp_path):
  # 16 video and 16 text tokens in blocks of 8: 2 video blocks, of which AdaSpa keeps 1.
  result = sample(f"--workdir={workdir}", "--num_steps=4", "--sparse_attention=adaspa",
                  "--sparsity=0.5", "--sparse_block=8", "--sparse_warmup=0.25",
                  f"--out={tmp_path / 'adaspa'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "AdaSpa search at step 1: recall" in result.stdout
  with open(tmp_path / "adaspa" / "sparse_attention.json") as f:
    report = json.load(f)
  assert [s["step"] for s in report["searches"]] == [1, 2]  # 10 and 30 of 50, at 4 steps
  assert report["sparsity"] == 0.5 and 0 < report["recall"] <= 1
  assert len(report["searches"][0]["recall_per_layer"]) == 2  # the tiny model's 2 blocks
  result = sample(f"--workdir={workdir}", "--num_steps=2", "--sparse_attention=temporal",
                  f"--out={tmp_path / 'temporal'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(tmp_path / "temporal" / "grid.png")
  result = sample(f"--workdir={workdir}", "--sparse_attention=adaspa", "--sparsity=1.5")
  assert result.returncode != 0 and "sample.sparse.sparsity=1.5 must be in [0, 1)" in result.stderr


def test_an_attention_that_cannot_run_here_is_a_clear_error(workdir):
  if jax.default_backend() == "gpu":
    pytest.skip("cuDNN runs here")
  result = sample(f"--workdir={workdir}", "--attention=cudnn")
  assert result.returncode != 0
  assert "model.attention='cudnn' runs" in result.stderr  # on GPUs, in bfloat16 or float16


def test_a_folder_written_again_holds_only_the_new_videos_and_the_files_it_did_not_write(
    tmp_path):
  from rundir.videos import write_videos  # pylint: disable=g-import-not-at-top
  (tmp_path / "notes.txt").write_text("mine")
  (tmp_path / "7.mp4").write_text("not written by write_videos")
  videos = np.random.default_rng(0).uniform(-1, 1, (2, 2, 8, 8, 1)).astype(np.float32)
  write_videos(videos, ["one", "two"], str(tmp_path))
  write_videos(videos[:1], ["three"], str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == [".written_videos", "0.gif", "0.mp4", "7.mp4",
                                          "grid.png", "notes.txt", "prompts.txt"]
  assert (tmp_path / "prompts.txt").read_text() == "0: three\n"


def test_flags_the_run_cannot_use_are_errors(workdir):
  result = sample(f"--workdir={workdir}", "--label=3")  # a text model
  assert result.returncode != 0 and "conditioned on text; pass --prompt" in result.stderr


def test_a_workdir_without_checkpoints_is_a_clear_error(tmp_path):
  result = sample(f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "config.json not found" in result.stderr


def test_a_config_json_missing_model_fields_is_a_clear_error(workdir, tmp_path):
  """A config.json without a model field (other than rundir.config_file.ADDED_FIELDS, read with
  what runs did before they existed) is an error that names the field, before anything is
  restored: there are no silent defaults."""
  import shutil  # pylint: disable=g-import-not-at-top
  old = tmp_path / "old_run"
  shutil.copytree(workdir, old)
  config = json.loads((old / "config.json").read_text())
  del config["model"]["sparse_pattern"], config["model"]["ulysses_degree"]
  (old / "config.json").write_text(json.dumps(config))
  result = sample(f"--workdir={old}", "--num_steps=2", f"--out={tmp_path / 'out'}")
  assert result.returncode != 0
  assert "missing fields ['sparse_pattern', 'ulysses_degree']" in result.stderr
  assert not (tmp_path / "out").exists()
