"""Multi-stage training (configs/stages.py, train.py): stages in order, resumable in any stage."""
import os
import shutil

import jax
import optax
import pytest

import train
from configs.checks import validate_config
from configs.common import stage_config
from configs.mixed_shapes import get_config
from configs.stages import resolve_stages, stage_at
from rundir.metric_writers import read_metrics
from saved_runs import assert_bitwise_equal, final_state
from training import checkpoints


def tiny_config():
  config = get_config("tiny")
  config.unlock()
  config.train.keep_checkpoints = 10  # every checkpoint kept: the test resumes from several
  return config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("stages")
  train.train(tiny_config(), str(workdir))
  return workdir


def resume_from(run, step, workdir):
  """A copy of `run` as a kill after its checkpoint `step` leaves it, trained to the end."""
  shutil.copytree(run, workdir)
  for later in [s for s in checkpoints.saved_steps(workdir) if s > step]:
    shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), str(later)))
  train.train(tiny_config(), str(workdir))
  return final_state(workdir)


def test_stages_run_in_order_with_their_own_batching(uninterrupted):
  metrics = read_metrics(str(uninterrupted))
  stage_of = {m["step"]: m["stage"] for m in metrics}
  assert stage_of[4] == 0 and stage_of[6] == 1 and max(stage_of) == 12
  # Packed rows over the tests' 8 data-parallel devices: their estimated imbalance is logged.
  assert all(m["rank_imbalance"] >= 1 for m in metrics if m["stage"] == 1)
  assert not any("rank_imbalance" in m for m in metrics if m["stage"] == 0)  # plain batches
  assert {4, 12} <= set(checkpoints.saved_steps(uninterrupted))  # each stage's end is saved


def test_the_optimizer_restarts_at_a_reset_stage(uninterrupted):
  state = final_state(uninterrupted)
  counts = [int(s.count) for s in jax.tree.leaves(
      state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
      if isinstance(s, optax.ScaleByAdamState)]
  assert counts == [8]  # the second stage's 8 steps, not the run's 12


@pytest.mark.parametrize("step", [6, 4], ids=["inside the second stage", "at its start"])
def test_a_run_killed_in_its_second_stage_resumes_there_to_the_same_bits(
    uninterrupted, tmp_path, step):
  assert_bitwise_equal(resume_from(uninterrupted, step, tmp_path / "resumed"),
                       final_state(uninterrupted))


def test_a_damaged_checkpoint_falls_back_across_the_stage_boundary(uninterrupted, tmp_path):
  """The newest checkpoint (step 6, in the second stage) does not restore: the run resumes from
  step 4, the first stage's last, with that stage's data position, and ends the same."""
  from test_train import damage_truncated_array  # noqa: PLC0415

  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  for later in (9, 12):
    shutil.rmtree(workdir / "checkpoints" / str(later))
  damage_truncated_array(workdir / "checkpoints" / "6")
  state = train.train(tiny_config(), str(workdir))
  assert os.listdir(workdir / "checkpoints_damaged") == ["6"]
  assert_bitwise_equal(state, final_state(uninterrupted))


def test_stages_resolve_to_effective_configs_and_schedules():
  config = get_config("image_steps=10,video_steps=20")
  images, videos = resolve_stages(config)
  assert (images.start, images.end, videos.start, videos.end) == (0, 10, 10, 30)
  assert images.config.train.video_shape == (1, 32, 32) and images.config.train.batch_size == 32
  assert videos.config.data.batching == "packing" and videos.config.data.name == "mixture"
  assert videos.config.train.num_steps == 20 and config.train.num_steps == 30
  assert videos.schedule_start == 10  # reset: its schedule counts from its own start
  assert stage_at([images, videos], 9) is images and stage_at([images, videos], 10) is videos
  config.unlock()
  config.stages = (config.stages[0], dict(config.stages[1], optimizer="carry"))
  assert resolve_stages(config)[1].schedule_start == 0  # carried: from the first stage's


@pytest.mark.parametrize("stages,message", [
    ((stage_config("a", 100), stage_config("b", 5)), r"num_steps=300 must be the stages' sum"),
    ((stage_config("a", 100), stage_config("b", 200, model=dict(depth=3))),
     r"unknown keys \['model'\]"),
    ((stage_config("a", 100), stage_config("b", 200, optimizer="keep")), r"optimizer='keep'"),
    ((stage_config("a", 100), stage_config("b", 200, train=dict(batch_sise=4))),
     r"train has no field 'batch_sise'"),
    ((stage_config("a", 100), stage_config("b", 200, data=dict(batching="packing"))),
     r"(?s)stage 1 \('b'\).*data.row_tokens=0 must be positive"),
    ((stage_config("a", 100), stage_config("b", 200, train=dict(checkpoint_every=5))),
     r"set it for the whole run"),
    ((stage_config("a", 100), stage_config("b", 200, data=dict(
        batching="packing", row_tokens=64), train=dict(grad_accum=2))),
     r"takes train.grad_accum=1"),
    ((stage_config("a", 100), stage_config("b", 200, data=dict(
        name="mixture", kwargs=dict(parts=())))), r"gives examples of several shapes"),
])
def test_a_bad_stage_is_a_clear_error(stages, message):
  config = get_config("image_steps=100,video_steps=200")
  config.unlock()
  config.stages = stages
  with pytest.raises(ValueError, match=message):
    validate_config(config)


def test_a_vae_experiment_has_no_stages():
  from configs.vae_quickstart import get_config as vae_config  # noqa: PLC0415
  config = vae_config("tiny")
  config.unlock()
  config.stages = (stage_config("a", 3),)
  with pytest.raises(ValueError, match="a VAE experiment has none"):
    validate_config(config)


def test_each_trained_shape_is_judged_on_its_own(uninterrupted):
  from eval import evaluate  # noqa: PLC0415
  from eval.shapes import shape_targets, trained_shapes  # noqa: PLC0415
  from rundir.config_file import load_config  # noqa: PLC0415

  config = load_config(str(uninterrupted))
  assert trained_shapes(config) == {
      "images": [(1, 32, 32)],
      "videos": [(1, 32, 32), (4, 32, 32), (4, 32, 48), (8, 32, 32)]}
  targets = shape_targets(config)
  wide = targets[(4, 32, 48)]
  assert wide.data.name == "moving_digits" and tuple(wide.data.kwargs.size) == (32, 48)
  image = targets[(1, 32, 32)]
  image.eval.update(num_videos=4, batch_size=4, metrics=("digits",))
  results = evaluate.run(image, str(uninterrupted), log=None, suffix="_1x32x32")
  assert results["video_shape"] == [1, 32, 32, 1]
  assert results["path"].endswith("metrics_12_1x32x32.json")
  assert "digit_accuracy" in results["metrics"]
  assert "direction_accuracy" not in results["metrics"]  # a still image has no motion
