"""Few-step sampling from a trained run: a schedule search written to the run, and sample.py,
python -m eval and the run's sampler taking schedules by name."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffusion import schedules
from eval import evaluate
from rundir.config_file import load_config
from rundir.open_run import open_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


def test_a_named_uniform_schedule_samples_as_the_configured_euler_sampler(tiny_run):
  config = load_config(str(tiny_run))
  config.sample.update(num_steps=2, sampler="euler", guidance_scale=2.0)
  with open_run(str(tiny_run), config=config) as run:
    default = run.sampler()
    videos = default.generate(run.params, jax.random.key(4))
    config.sample.schedule = "uniform-2"
    named = run.sampler(config=config)
    assert named.schedule == schedules.uniform(2, named.schedule.meta["shift"])
    assert named.calls() == default.calls() == 2
    np.testing.assert_allclose(named.generate(run.params, jax.random.key(4)), videos,
                               rtol=1e-5, atol=1e-5)


def test_a_searched_schedule_is_written_to_the_run_and_sampled_by_name(tiny_run, tmp_path):
  result = command("-m", "eval.search_schedule", f"--workdir={tiny_run}", "--calls=2",
                   "--num_videos=8", "--population=3", "--generations=1", "--parents=1",
                   "--max_skip=1")
  assert result.returncode == 0, result.stderr[-3000:]
  path = schedules.searched_path(str(tiny_run), 2)
  found = schedules.Schedule.load(path)
  depth = load_config(str(tiny_run)).model.depth
  assert found.name == "searched-2" and found.block_calls(depth) <= 2 * depth
  assert found.meta["start"]["name"] == "uniform-2" and found.meta["evaluations"] >= 3
  assert [h["generation"] for h in found.meta["history"]] == [0, 1]

  result = command("sample.py", f"--workdir={tiny_run}", "--schedule=searched-2",
                   "--prompt=the digit 4 moves down", f"--out={tmp_path / 'videos'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "searched-2: sigmas" in result.stdout
  result = command("sample.py", f"--workdir={tiny_run}", "--schedule=searched-3")
  assert result.returncode != 0 and "eval.search_schedule" in result.stderr

  config = load_config(str(tiny_run))
  config.eval.update(metrics=("digits",), num_videos=4, batch_size=4)
  config.sample.schedule = "searched-2"
  results = evaluate.run(config, str(tiny_run), out=str(tmp_path / "m.json"), log=None)
  assert results["sampling"]["calls"] == found.calls()
  assert results["sampling"]["schedule"]["sigmas"] == list(found.sigmas)


def test_a_schedule_with_sparse_attention_is_a_config_error(tiny_run):
  from configs.checks import validate_config  # noqa: PLC0415
  config = load_config(str(tiny_run))
  config.sample.update(schedule="uniform-2", sparse=dict(config.sample.sparse, attention="adaspa"))
  with pytest.raises(ValueError, match="cannot be combined"):
    validate_config(config)
  for bad in ("uniform-0", "heun-two", "my schedule"):
    config.sample.update(schedule=bad, sparse=dict(config.sample.sparse, attention="none"))
    with pytest.raises(ValueError, match="uniform-K"):
      validate_config(config)
