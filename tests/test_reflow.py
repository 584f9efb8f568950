"""Reflow and distillation: pairs drawn from a trained run, a student started from its weights,
trained on the straight paths, and a one-step student that samples in one model call."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import pytest

import train
from configs.reflow import get_config
from data import reflow_pairs
from diffusion.flow_matching import velocity_loss
from dit.model import DiT
from rundir.open_run import open_run


def draw(workdir, out, **options):
  with open_run(str(workdir)) as run:
    return reflow_pairs.write_pairs(run, str(out), **(dict(num_examples=12, shard_size=8,
                                                           batch_size=4) | options),
                                    progress=lambda message: None)


@pytest.fixture(scope="module")
def pairs(tiny_run, tmp_path_factory):
  out = tmp_path_factory.mktemp("pairs") / "pairs"
  draw(tiny_run, out)
  return out


def shard_bytes(folder):
  return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_pairs_are_reproducible_and_resume_where_they_stopped(tiny_run, pairs, tmp_path):
  again = tmp_path / "again"
  manifest = draw(tiny_run, again)
  assert shard_bytes(again) == shard_bytes(pairs)
  assert manifest["teacher"] == str(tiny_run) and manifest["teacher_step"] == 6
  assert manifest["num_steps"] == 3 and manifest["shards"] == 2
  os.remove(again / reflow_pairs.shard_name(1, 2))  # as if killed while writing shard 1
  written = []
  with open_run(str(tiny_run)) as run:
    reflow_pairs.write_pairs(run, str(again), num_examples=12, shard_size=8, batch_size=4,
                             progress=written.append)
  assert len(written) == 1 and written[0].startswith(reflow_pairs.shard_name(1, 2))
  assert shard_bytes(again) == shard_bytes(pairs)
  with pytest.raises(ValueError, match="(?s)reflow pairs of something else.*seed: 0 -> 1"):
    draw(tiny_run, again, seed=1)
  assert shard_bytes(again) == shard_bytes(pairs)

  source = reflow_pairs.ReflowPairs(str(pairs))
  example = source[3]
  np.testing.assert_array_equal(example["noise"],
                                reflow_pairs.pair_noise(0, 3, example["video"].shape))
  assert example["caption"].startswith("the digit") and len(source) == 12


def reflow_config(teacher, pairs, steps, **options):
  config = get_config(f"teacher={teacher},pairs={pairs},steps={steps}"
                      + "".join(f",{k}={v}" for k, v in options.items()))
  config.train.update(log_every=1, checkpoint_every=steps, batch_size=8)
  return config


def pair_loss(workdir, pairs) -> float:
  """The reflow loss of a run's EMA weights on every pair, at fixed noise levels."""
  source = reflow_pairs.ReflowPairs(str(pairs))
  examples = [source[i] for i in range(len(source))]
  with open_run(str(workdir)) as run:
    model = nnx.merge(run.graphdef, run.params, run.model_state)
    batch = dict(video=jnp.stack([e["video"] for e in examples]),
                 **{k: jnp.asarray(v) for k, v in run.text_encoder(
                     [e["caption"] for e in examples]).items()})
    noise, n = jnp.stack([e["noise"] for e in examples]), len(examples)
    return float(np.mean([velocity_loss(model, batch, jnp.full((n,), t), noise,
                                        jnp.zeros(n, bool))[0] for t in (0.3, 0.5, 0.7, 0.9)]))


def test_a_reflow_student_starts_as_its_teacher_and_its_loss_falls(tiny_run, pairs, tmp_path):
  start = reflow_config(tiny_run, pairs, 1, lr=1e-12)
  start.optim.update(warmup_steps=0)
  first = train.train(start, str(tmp_path / "start"))
  with open_run(str(tiny_run)) as teacher:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), teacher.params,
                 jax.device_get(first.params))

  train.train(reflow_config(tiny_run, pairs, 24, lr=0.001), str(tmp_path / "reflow"))
  saved = json.loads((tmp_path / "reflow" / "config.json").read_text())
  assert saved["train"]["init_from"] == str(tiny_run) and saved["train"]["init_step"] == 6
  assert saved["data"]["kwargs"]["folder"] == str(pairs)
  assert pair_loss(tmp_path / "reflow", pairs) < 0.5 * pair_loss(tiny_run, pairs)


def test_a_distilled_student_samples_in_one_model_call(tiny_run, pairs, tmp_path, monkeypatch):
  config = reflow_config(tiny_run, pairs, 2, distill=1)
  assert tuple(config.flow.distill_timesteps) == (1.0,) and config.sample.num_steps == 1
  train.train(config, str(tmp_path / "distilled"))
  calls = []
  original = DiT.__call__

  def counted(self, video, t, **kwargs):
    jax.debug.callback(lambda: calls.append(video.shape[0]))
    return original(self, video, t, **kwargs)

  monkeypatch.setattr(DiT, "__call__", counted)
  with open_run(str(tmp_path / "distilled")) as run:
    sampler = run.sampler(prompts=["the digit 1 moves up", "the digit 2 moves down"])
    videos = sampler.generate(run.params, jax.random.key(0))
  assert calls == [2] and sampler.calls() == 1  # one call, guidance folded in (batch not 2x)
  assert np.isfinite(videos).all()


def test_a_student_of_another_architecture_is_refused(tiny_run, pairs, tmp_path):
  config = reflow_config(tiny_run, pairs, 2)
  config.model.hidden_size = 48
  with pytest.raises(ValueError, match="(?s)another model.*model.hidden_size"):
    train.train(config, str(tmp_path / "other"))
  assert not (tmp_path / "other" / "config.json").exists()


def test_a_reflow_run_stopped_midway_resumes_to_the_same_bits(tiny_run, pairs, tmp_path):
  teacher = tmp_path / "teacher"
  shutil.copytree(tiny_run, teacher, ignore=shutil.ignore_patterns("train.lock"))
  config = reflow_config(teacher, pairs, 4)
  config.train.checkpoint_every = 2
  whole = train.train(config, str(tmp_path / "whole"))
  first_half = reflow_config(teacher, pairs, 4)
  first_half.train.update(checkpoint_every=2, num_steps=2)  # the same schedule, stopped at 2
  train.train(first_half, str(tmp_path / "resumed"))
  # The teacher moves on and drops the checkpoint the student started from: the student does
  # not need it to resume, and still records it.
  shutil.rmtree(teacher / "checkpoints" / "6")
  resumed = train.train(config, str(tmp_path / "resumed"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(whole.params),
               jax.device_get(resumed.params))
  saved = json.loads((tmp_path / "resumed" / "config.json").read_text())["train"]
  assert (saved["init_from"], saved["init_step"]) == (str(teacher), 6)
  other = reflow_config(tiny_run, pairs, 4)
  with pytest.raises(ValueError, match="resumes only as it started"):
    train.train(other, str(tmp_path / "resumed"))
