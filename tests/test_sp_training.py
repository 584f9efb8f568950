"""train.py under adaptive sequence parallelism (sharding.sequence_parallel_plan="adaptive") on 8
simulated devices: the packed stage plans each step's device groups, logs the plan, and resumes
to the same bits; what it cannot run is a clear error before training."""
import os
import shutil

import pytest

import train
from configs.checks import validate_config
from configs.mixed_shapes import get_config
from rundir.metric_writers import read_metrics
from saved_runs import assert_bitwise_equal, final_state
from training import checkpoints


def adaptive_config(steps=6):
  """The mixed-shapes smoke run's packed video stage alone, planned adaptively."""
  config = get_config("tiny,adaptive")
  config.unlock()
  config.stages = (dict(config.stages[1], num_steps=steps),)
  config.train.update(num_steps=steps, keep_checkpoints=10)
  return config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("adaptive")
  train.train(adaptive_config(), str(workdir))
  return workdir


def test_each_packed_step_runs_its_own_plan_of_device_groups(uninterrupted):
  metrics = read_metrics(str(uninterrupted))
  assert [m["step"] for m in metrics] == [2, 3, 4, 6]
  assert all(m["planned_step_seconds"] > 0 for m in metrics)
  assert any(m["sp_groups"] > 1 for m in metrics)  # the devices split into several groups
  assert os.path.exists(uninterrupted / "sp_hardware.json")  # measured once, kept


def test_an_adaptive_run_killed_mid_stage_resumes_to_the_same_bits(uninterrupted, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(uninterrupted, workdir)
  for later in [s for s in checkpoints.saved_steps(workdir) if s > 3]:
    shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), str(later)))
  train.train(adaptive_config(), str(workdir))
  assert_bitwise_equal(final_state(workdir), final_state(uninterrupted))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.mesh.update(data=4, fsdp=2), r"set mesh \{'fsdp': 2, 'seq': 1, 'tensor': 1\}"),
    (lambda c: c.model.update(sequence_parallel="ulysses"), "leave model.sequence_parallel"),
    (lambda c: c.sharding.update(sp_hardware="a100"), "sp_hardware='a100'"),
    (lambda c: c.stages[0]["data"].update(tokens_per_device=0), "tokens_per_device"),
], ids=["fsdp", "model sp", "hardware", "no budget"])
def test_what_adaptive_plans_cannot_run_is_named(change, message):
  config = adaptive_config()
  change(config)
  with pytest.raises(ValueError, match=message):
    validate_config(config)


def test_a_video_too_long_for_all_devices_is_named_before_training(tmp_path):
  config = adaptive_config()
  config.stages[0]["data"].update(tokens_per_device=8)  # 8 devices hold 64 tokens of a video
  with pytest.raises(ValueError, match=r"example \d+ of shape \(8, 32, 32\).* 136 tokens is "
                     r"too long.*data.tokens_per_device"):  # 128 video and 8 text tokens
    train.train(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "config.json")
