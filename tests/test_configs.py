import subprocess
import sys

import pytest
from flax import nnx

from configs import video_dit
from configs.common import parse_arg
from dit.config import DiTConfig
from dit.model import DiT
from configs.common import MODEL_SIZES


def test_parse_arg_types_values_by_their_defaults():
  arg = parse_arg("size=L,runlocal,steps=7", size="B", runlocal=False, steps=1)
  assert (arg.size, arg.runlocal, arg.steps) == ("L", True, 7)
  assert parse_arg("runlocal=False", runlocal=True).runlocal is False


@pytest.mark.parametrize("arg,message", [
    ("sise=B", r"unknown config variant 'sise'.*\['runlocal', 'size', 'steps'\]"),
    ("runlocal=maybe", "runlocal='maybe' must be true or false"),
    ("steps=many", "steps='many' must be a int"),
])
def test_parse_arg_rejects_what_it_cannot_read(arg, message):
  with pytest.raises(ValueError, match=message):
    parse_arg(arg, size="B", runlocal=False, steps=1)


def test_an_invalid_variant_fails_when_the_config_is_built():
  with pytest.raises(ValueError, match="model.conditioning='audio'"):
    video_dit.get_config("cond=audio")


@pytest.mark.parametrize("size", list(MODEL_SIZES))
@pytest.mark.parametrize("cond", ["text", "label"])
def test_every_size_and_conditioning_builds_a_valid_config(size, cond):
  config = video_dit.get_config(f"size={size},cond={cond}")
  assert config.model.size == size and config.model.conditioning == cond
  assert config.model.hidden_size == MODEL_SIZES[size]["hidden_size"]


def test_every_size_runs_the_kernels_at_a_head_dim_they_do_not_pad():
  # The GPU kernels pad the head dim to a power of two, and the TPU's tiles are 128 wide.
  for size, fields in MODEL_SIZES.items():
    head_dim = fields["hidden_size"] // fields["num_heads"]
    assert head_dim in ((16,) if size == "tiny" else (64, 128)), size


def test_runlocal_shrinks_the_experiment_to_a_cpu():
  local, full = video_dit.get_config("runlocal"), video_dit.get_config()
  assert local.model.size == "tiny" and full.model.size == "B"
  assert local.train.batch_size < full.train.batch_size
  assert local.train.num_steps < full.train.num_steps
  DiT(DiTConfig.from_dict(local.model), rngs=nnx.Rngs(0))  # builds


def test_a_field_that_does_not_exist_cannot_be_set():
  config = video_dit.get_config()
  with pytest.raises(AttributeError, match="hidden_size"):
    config.model.hiden_size = 512
  with pytest.raises(AttributeError):
    config.trian = {}


def run_count_params(*flags):
  return subprocess.run([sys.executable, "-m", "training.count_params",
                         "--config=configs/video_dit.py:size=S", *flags],
                        capture_output=True, text=True)


def test_command_line_overrides_reach_the_model():
  result = run_count_params("--config.model.depth=6", "--config.model.conditioning=label")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[:8] == ["S", "hidden", "384", "depth", "6", "heads", "6", "dual"]


@pytest.mark.parametrize("flag,message", [
    ("--config.model.hiden_size=512", 'Did you mean "hidden_size"'),
    ("--config.model.attention=flash", "model.attention='flash' is not an attention"),
    ("--config.model.remat=all", "model.remat='all' is not a remat policy"),
    ("--config.model.num_heads=5", "hidden_size=384 is not divisible by model.num_heads=5"),
    ("--config.flow.cond_dropout=1.5", "flow.cond_dropout=1.5 must be a probability"),
    ("--config.optim.warmup_steps=300000", "optim.warmup_steps=300000 must be in [0, "),
    ("--config.sample.sampler=rk4", "sample.sampler='rk4'; choose one of ['euler', 'heun']"),
    ("--config.sample.guidance_interval=(0.5,0.2)", "sample.guidance_interval (0.5, 0.2) must"),
    ("--config.sample.shift=-1", "sample.shift=-1.0 must be positive"),  # None, yet settable
    ("--config.train.video_shape=(16,31,32)", "train.video_shape=(16, 31, 32) (T, H, W) must be"),
])
def test_command_line_errors_say_what_is_wrong(flag, message):
  result = run_count_params(flag)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_a_config_missing_a_section_or_a_field_names_what_to_add():
  import json  # noqa: PLC0415

  import ml_collections  # noqa: PLC0415

  from configs.checks import validate_config  # noqa: PLC0415

  written = json.loads(video_dit.get_config("runlocal").to_json_best_effort())
  del written["sample"]["sparse"]["warmup"], written["train"]["sample_every"]
  with pytest.raises(ValueError) as error:
    validate_config(ml_collections.ConfigDict(written))
  assert "sample.sparse has no fields ['warmup']" in str(error.value)
  assert "train has no fields ['sample_every']" in str(error.value)
  del written["eval"]
  with pytest.raises(ValueError, match=r"no \['eval'\] section"):
    validate_config(ml_collections.ConfigDict(written))
  assert validate_config(video_dit.get_config("runlocal")).size == "tiny"
