"""train.py on a VAE config (configs/vae_quickstart.py:tiny): what the run directory holds, a
resumed run equal to an uninterrupted one to the bit, a changed VAE refused; then a DiT trained
and sampled in that VAE's latent space (configs/latent_quickstart.py:tiny)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train
from configs.checks import validate_config
from eval import reconstruction
from configs.latent_quickstart import get_config as latent_config
from configs.vae_quickstart import get_config
from data.encode_latents import encode_dataset
from data.latent_shards import LatentShards
from data.sources import make_source
from rundir.open_run import open_run
from rundir.open_vae import (STATISTICS_FILE, latent_decoder, latent_encoder, open_vae,
                             video_shape)
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
  assert {"loss", "l1", "l2", "kl", "psnr", "ssim", "grad_norm", "lr", "pixels_per_sec"} <= set(
      metrics[0])
  assert metrics[-1]["l2"] < metrics[0]["l2"]  # it learns (the tiny config: squared error)
  # pixels a step: 8 first frames of 16x16 on the 2 image steps, 8 videos of 5 frames after
  pixels_per_step = [m["pixels_per_sec"] / m["steps_per_sec"] for m in metrics]
  assert pixels_per_step == pytest.approx([8 * 16 * 16] + [8 * 5 * 16 * 16] * 3)
  samples = vae_run / "samples" / "step_6"
  assert {"0.mp4", "1.gif", "grid.png", "prompts.txt"} <= set(os.listdir(samples))
  assert (samples / "prompts.txt").read_text().startswith("0: original | reconstruction: the "
                                                           "digit")
  assert sorted(os.listdir(vae_run / "checkpoints")) == ["3", "6"]
  with pytest.raises(ValueError, match="is a VAE run .* python -m eval.reconstruction"):
    open_run(str(vae_run))  # sample.py and python -m eval open DiT runs


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


def get_source(config):
  return make_source(config.data.name, seed=config.seed, **config.data.kwargs)


def test_the_vae_run_measures_its_latent_statistics(vae_run):
  measured = json.loads((vae_run / STATISTICS_FILE).read_text())
  assert measured["step"] == 6 and measured["videos"] == 64
  assert len(measured["mean"]) == len(measured["std"]) == 4 and min(measured["std"]) > 0
  vae = open_vae(str(vae_run))
  np.testing.assert_allclose(vae.latents_std[...], measured["std"], rtol=1e-6)


def test_a_dit_trains_and_samples_in_the_latent_space_of_a_vae_run(vae_run, tmp_path):
  config = latent_config(f"tiny,vae={vae_run}")
  config.unlock()
  config.train.sample_every = 0  # sampled below, as sample.py does
  state = train.train(config, str(tmp_path))
  assert int(state.step) == 4
  saved = load_config(tmp_path)
  assert saved.latents.vae == str(vae_run) and os.path.isabs(saved.latents.vae)
  # Pinned: a VAE run that trains on (a newer checkpoint, re-measured statistics) is not
  # picked up by this DiT, resumed or sampled.
  measured = json.loads((vae_run / STATISTICS_FILE).read_text())
  assert saved.latents.vae_step == 6
  assert list(saved.latents.latents_std) == pytest.approx(measured["std"], rel=1e-12)
  assert list(saved.latents.latents_mean) == pytest.approx(measured["mean"], rel=1e-12)
  changed = load_config(tmp_path)
  changed.latents.vae_step = 3
  changed.latents.latents_std = (1.0,) * 4
  assert train.identity_changes(saved, changed) == [
      "latents.vae_step: 6 -> 3",
      f"latents.latents_std: {tuple(saved.latents.latents_std)!r} -> (1.0, 1.0, 1.0, 1.0)"]
  with pytest.raises(FileNotFoundError, match=r"has no checkpoint 9 .*\(its config\.latents\."
                                              r"vae_step\)"):
    open_vae(str(vae_run), step=9)
  shards_only = latent_config("tiny")
  shards_only.unlock()
  shards_only.latents.update(vae="", shards="x")
  with pytest.raises(ValueError, match="latents.shards='x' needs latents.vae"):
    validate_config(shards_only)
  pixels = load_config(tmp_path)
  pixels.latents.vae = ""  # the same DiT in pixel space: another run
  assert train.identity_changes(saved, pixels) == [f"latents.vae: {str(vae_run)!r} -> ''"]
  assert video_shape(config) == (5, 16, 16, 1)  # what its 2x4x4x4 latents decode to
  with open_run(str(tmp_path)) as run:  # as sample.py and python -m eval open it
    videos = run.sampler().generate(run.params, jax.random.key(0))
  assert videos.shape == (2, 5, 16, 16, 1)
  assert np.abs(videos).max() <= 1.0 and np.isfinite(videos).all()
  vae = open_vae(str(vae_run))
  # The latents the step trains on are the VAE's normalized posterior means.
  video = jnp.asarray(np.stack([get_source(config)[i]["video"] for i in range(2)]))
  latents = latent_encoder(vae)(video)
  assert latents.shape == (2, 2, 4, 4, 4)
  (mean, _), _ = vae.encode(video)
  np.testing.assert_allclose(latents, (mean - vae.latents_mean[...]) / vae.latents_std[...],
                             rtol=1e-5, atol=1e-5)
  # Image-to-video in latents: the given first frame is the first latent frame (the causal
  # VAE codes it alone), encoded, held, and decoded as the VAE decodes it.
  with open_run(str(tmp_path)) as run:
    task = run.frame_task("image")
    assert task.mask.tolist() == [True, False]
    sampler = run.sampler(task=task)
    out = sampler.generate(run.params, jax.random.key(0), given=np.asarray(video))
    with pytest.raises(ValueError, match="the given videos are"):  # frames the VAE codes
      sampler.generate(run.params, jax.random.key(0), given=np.asarray(video)[:, :, :8])
  assert out.shape == (2, 5, 16, 16, 1) and np.isfinite(out).all()
  np.testing.assert_allclose(out[:, 0], latent_decoder(vae)(latents)[:, 0], atol=1e-4)
  assert np.abs(out[:, 1:] - np.asarray(latent_decoder(vae)(latents))[:, 1:]).max() > 1e-2


def test_latent_data_of_the_wrong_size_is_rejected_before_training(vae_run, tmp_path):
  config = latent_config(f"tiny,vae={vae_run}")
  config.unlock()
  config.data.kwargs.size = 24
  with pytest.raises(ValueError, match=r"shape \(5, 24, 24, 1\).*expects \(5, 16, 16, 1\) \(what "
                                       r"the VAE .* decodes"):
    train.train(config, str(tmp_path))
  config.data.kwargs.size = 16
  config.model.in_channels = 8
  with pytest.raises(ValueError, match="model.in_channels=8 but the VAE .* has 4 latent"):
    train.train(config, str(tmp_path))


def test_held_out_reconstructions_are_scored(vae_run):
  results = reconstruction.evaluate(str(vae_run), frames=9, num_videos=3, batch_size=2)
  assert results["video_shape"] == [9, 16, 16, 1] and results["latent_shape"] == [3, 4, 4, 4]
  assert results["compression"] == pytest.approx(9 * 16 * 16 / (3 * 4 * 4 * 4))
  assert 0 < results["psnr"] < 60 and -1 <= results["ssim"] <= 1
  assert len(results["psnr_by_frame"]) == 9 and all(0 < v < 60 for v in results["psnr_by_frame"])


def test_latent_shards_are_deterministic_resumable_and_train_a_dit(vae_run, tmp_path):
  config = latent_config(f"tiny,vae={vae_run}")
  out = tmp_path / "shards"
  written = []
  encode_dataset(config, str(out), num_examples=20, shard_size=8, batch_size=4,
                 progress=written.append)
  names = sorted(n for n in os.listdir(out) if n.endswith(".array_record"))
  assert names == [f"latents-0000{k}-of-00003.array_record" for k in range(3)] and len(written) == 3
  shards = LatentShards(str(out))
  assert len(shards) == 20
  source, vae = get_source(config), open_vae(str(vae_run))
  for i in (0, 9, 19):  # each shard's examples in order, with the raw posterior mean
    (mean, _), _ = vae.encode(jnp.asarray(source[i]["video"][None]))
    example = shards[i]
    np.testing.assert_allclose(example["video"], mean[0], rtol=1e-5, atol=1e-5)
    assert example["caption"] == source[i]["caption"] and example["label"] == source[i]["label"]

  # Resumable and deterministic: a lost shard and an unfinished one are encoded again, to the
  # same bytes; the finished shards are left alone.
  original = {n: (out / n).read_bytes() for n in names}
  (out / names[1]).rename(out / (names[1] + ".tmp"))
  with pytest.raises(FileNotFoundError, match="lacks 1 of its 3 shards .* run python -m "
                                              "data.encode_latents again"):
    LatentShards(str(out))
  written.clear()
  encode_dataset(config, str(out), num_examples=20, shard_size=8, batch_size=4,
                 progress=written.append)
  assert len(written) == 1 and written[0].startswith(names[1])
  assert {n: (out / n).read_bytes() for n in names} == original
  with pytest.raises(ValueError, match=r"(?s)holds latent shards of something else.*"
                                       r"shard_size: 8 -> 4"):
    encode_dataset(config, str(out), num_examples=20, shard_size=4, batch_size=4)
  with pytest.raises(ValueError, match="--tile=6 must be a multiple of the VAE's spatial "
                                       "factor 4"):
    encode_dataset(config, str(tmp_path / "tiled"), num_examples=20, tile=6)
  assert not (tmp_path / "tiled").exists()  # refused before anything was written
  assert {n: (out / n).read_bytes() for n in names} == original

  config.unlock()
  config.latents.shards = str(out)
  config.train.sample_every = 0
  state = train.train(config, str(tmp_path / "run"))
  assert int(state.step) == 4 and np.isfinite(read_metrics(tmp_path / "run")[-1]["loss"])
  config.data.kwargs.speed = 2  # not the data the shards were encoded from
  with pytest.raises(ValueError, match=r"(?s)were encoded from something else.*'speed': 1.*"
                                       r"'speed': 2"):
    train.train(config, str(tmp_path / "other"))
  config.data.kwargs.speed = 1
  config.latents.vae_step = 3  # another checkpoint of the VAE run: the error names theirs
  with pytest.raises(ValueError, match=r"(?s)vae_checkpoint: 6 -> 3.*--config\.latents\."
                                       r"vae_step=6\)"):
    train.train(config, str(tmp_path / "older"))


def test_pinned_statistics_travel_from_process_0_bit_for_bit():
  from rundir.open_vae import _from_process_0  # noqa: PLC0415
  statistics = ((0.1234567890123456, -2.0), (1.0000000000000002, 3.5))
  assert _from_process_0(2, 6, statistics) == (6, statistics)  # float64, not rounded to float32
  assert _from_process_0(2, 0, None) == (0, None)
  with pytest.raises(ValueError, match="2 channels but model.in_channels=4"):
    _from_process_0(4, 6, statistics)


def test_sampling_reads_the_parameters_whatever_the_optimizer_state(vae_run):
  """restore_params reads only the (EMA) parameters, the model state and the step: a checkpoint
  opens even where the optimizer's state no longer has the saved structure."""
  from training import checkpoints  # noqa: PLC0415
  from training.train_state import abstract_train_state  # noqa: PLC0415
  config = load_config(vae_run)
  _, abstract = abstract_train_state(validate_config(config), config.optim)
  changed = abstract.replace(opt_state=())  # as if the run had trained with another optimizer
  manager = checkpoints.make_manager(str(vae_run), async_save=False)
  with pytest.raises(Exception):
    checkpoints.restore(manager, changed, step=6)
  full, _ = checkpoints.restore(manager, abstract, step=6)
  manager.close()
  for use_ema, expected in ((True, full.ema_params), (False, full.params)):
    params, model_state, step = checkpoints.restore_params(str(vae_run), changed,
                                                           use_ema=use_ema)
    assert step == 6
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    jax.tree.map(np.testing.assert_array_equal, model_state, full.model_state)
  # ... but the parameters must be the model's: none missing, none left over.
  saved = dict(abstract.ema_params)
  fewer = {k: v for k, v in saved.items() if k != "quant_conv"}
  for params, message in ((fewer, "saved, not in the model: .*quant_conv"),
                          ({**saved, "extra": saved["quant_conv"]}, "not saved: .*extra/")):
    with pytest.raises(ValueError, match="checkpoint's ema_params .* does not match the model: "
                                         + message):
      checkpoints.restore_params(str(vae_run), changed.replace(ema_params=params), step=6)
