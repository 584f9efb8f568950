"""Vectorized timesteps (Pusa): the DiT takes one noise level per latent frame."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.common import flow_config, model_config
from diffusion.flow_matching import flow_matching_loss, velocity_loss
from diffusion.frame_sampling import given_frames_mask, sample_given_frames
from dit import blocks
from dit.config import DiTConfig
from dit.model import DiT


def random_model(key, randomize, **overrides):
  config = DiTConfig.from_dict(model_config("tiny", in_channels=1, dtype="float32",
                                            **overrides))
  model = DiT(config, rngs=nnx.Rngs(0))
  randomize(model, key)
  return model


def inputs(key, conditioning="text", frames=4):
  kv, kt, kx = jax.random.split(key, 3)
  video = jax.random.normal(kv, (2, frames, 8, 8, 1))
  cond = (dict(text=jax.random.normal(kx, (2, 5, 384))) if conditioning == "text"
          else dict(labels=jnp.array([3, 7])))
  return video, jax.random.uniform(kt, (2,)), cond


@pytest.mark.parametrize("conditioning", ["text", "label"])
@pytest.mark.parametrize("prediction", ["velocity", "data"])
def test_equal_frame_timesteps_are_the_scalar_timestep(key, randomize, conditioning,
                                                       prediction):
  model = random_model(key, randomize, conditioning=conditioning, prediction=prediction,
                       patch_size=(2, 2, 2))
  video, t, cond = inputs(jax.random.fold_in(key, 1), conditioning)
  scalar = model(video, t, **cond)
  frames = model(video, jnp.repeat(t[:, None], 2, axis=1), **cond)  # T / patch_t = 2
  np.testing.assert_allclose(frames, scalar, rtol=1e-5,
                             atol=1e-5 * float(jnp.abs(scalar).max()))


def test_a_frames_timestep_modulates_that_frames_tokens_only(key, randomize, monkeypatch):
  model = random_model(key, randomize, patch_size=(1, 2, 2),  # 4 latent frames of 16 tokens
                       scan_layers=False)  # eager: the modulations are concrete arrays
  video, t, cond = inputs(jax.random.fold_in(key, 2))
  seen = []
  original = blocks.modulations

  def recorded(layer, c, count, slots=None):
    out = original(layer, c, count, slots)
    seen.append(jnp.concatenate(out, axis=-1))
    return out

  monkeypatch.setattr(blocks, "modulations", recorded)
  per_frame = jnp.stack([t, t, t, t], axis=1)
  model(video, per_frame, **cond)
  before, seen[:] = list(seen), []
  model(video, per_frame.at[:, 2].set(0.9), **cond)
  first_video_block = 0  # the first dual block's video stream
  changed = jnp.abs(seen[first_video_block] - before[first_video_block]).max(axis=(0, 2))
  frame_of_token = np.repeat(np.arange(4), 16)
  assert bool(jnp.all(changed[frame_of_token == 2] > 0))
  assert bool(jnp.all(changed[frame_of_token != 2] == 0))


def test_a_timestep_of_another_shape_is_an_error(key, randomize):
  model = random_model(key, randomize, patch_size=(2, 2, 2))
  video, t, cond = inputs(key)
  with pytest.raises(ValueError, match=r"one timestep per latent frame"):
    model(video, jnp.zeros((2, 4)), **cond)


def test_the_per_frame_loss_with_equal_timesteps_is_todays_loss(key, randomize):
  model = random_model(key, randomize, patch_size=(2, 2, 2), prediction="data")
  video, t, cond = inputs(jax.random.fold_in(key, 3))
  batch = dict(video=video, **cond)
  noise = jax.random.normal(jax.random.fold_in(key, 4), video.shape)
  drop = jnp.array([False, True])
  scalar, _ = velocity_loss(model, batch, t, noise, drop)
  frames, _ = velocity_loss(model, batch, jnp.stack([t, t], axis=1), noise, drop)
  np.testing.assert_allclose(frames, scalar, rtol=1e-5)
  # A frame at another noise level is interpolated, and judged, at that level.
  mixed, _ = velocity_loss(model, batch, jnp.stack([t * 0, t], axis=1), noise, drop)
  assert float(mixed) != pytest.approx(float(scalar))


def test_training_mixes_synchronized_and_independent_frame_timesteps(key, randomize,
                                                                     monkeypatch):
  model = random_model(key, randomize, patch_size=(1, 2, 2))
  video, _, cond = inputs(key)
  seen = []
  original = DiT.__call__
  monkeypatch.setattr(DiT, "__call__", lambda self, v, t, **kw: (seen.append(t),
                                                                  original(self, v, t, **kw))[1])
  batch = dict(video=jnp.concatenate([video] * 8), text=jnp.concatenate([cond["text"]] * 8))
  config = flow_config()
  today, _ = flow_matching_loss(model, batch, key, 64, config)
  config.frame_timesteps = 0.0
  assert float(flow_matching_loss(model, batch, key, 64, config)[0]) == float(today)
  assert seen[-1].shape == (16,)
  config.frame_timesteps = 0.5
  flow_matching_loss(model, batch, key, 64, config)
  t = np.asarray(seen[-1])
  assert t.shape == (16, 4)
  synchronized = np.all(t == t[:, :1], axis=1)
  assert 0 < synchronized.sum() < 16  # some videos one level, some one per frame


@pytest.mark.parametrize("task, count", [("image", 1), ("extend", 2), ("keyframes", 1)])
def test_given_frames_come_out_of_sampling_unchanged(key, randomize, monkeypatch, task, count):
  model = random_model(key, randomize, patch_size=(1, 2, 2))
  given, _, cond = inputs(jax.random.fold_in(key, 5))
  mask = given_frames_mask(4, task, count)
  seen = []
  original = DiT.__call__
  monkeypatch.setattr(DiT, "__call__", lambda self, v, t, **kw: (seen.append(t),
                                                                  original(self, v, t, **kw))[1])
  out = jax.jit(lambda g: sample_given_frames(model, key, g, mask, cond, num_steps=3,
                                              method="heun", guidance_scale=2.0))(given)
  np.testing.assert_array_equal(out[:, np.asarray(mask)], given[:, np.asarray(mask)])
  assert seen[0].shape == (4, 4)  # both halves of the guided batch, one level per frame
  other = given.at[:, np.asarray(mask)].set(0.0)  # the sampled frames follow the given ones
  moved = sample_given_frames(model, key, other, mask, cond, num_steps=3, method="heun",
                              guidance_scale=2.0)
  assert float(jnp.abs(moved[:, ~np.asarray(mask)] - out[:, ~np.asarray(mask)]).max()) > 1e-3


def test_a_task_without_room_is_an_error():
  with pytest.raises(ValueError, match="extension gives 1 to 3"):
    given_frames_mask(4, "extend", 4)
  with pytest.raises(ValueError, match="at least 3 frames"):
    given_frames_mask(2, "keyframes")
