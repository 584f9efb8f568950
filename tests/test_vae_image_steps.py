"""vae_loss.image_steps: the first steps of a VAE run train on each video's first frame alone."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs.checks import validate_config
from configs.vae_quickstart import get_config
from dit.vae.config import VAEConfig
from dit.vae.model import CausalVAE
from training.optimizer import make_optimizer
from training.train_state import init_train_state
from training.vae_step import make_vae_train_step

# One temporal downsampling: 5 frames give 2 latent frames.
TINY = VAEConfig(in_channels=1, base_channels=4, channel_multipliers=(1, 1),
                 num_res_blocks=1, temporal_downsample=(True,), latent_channels=2)


def test_an_image_step_is_a_step_on_the_first_frames(key):
  config = get_config("tiny")
  config.unlock()
  config.optim.warmup_steps = 0  # the first step moves the weights
  optimizer = make_optimizer(config.optim)
  graphdef, state = init_train_state(CausalVAE(TINY, rngs=nnx.Rngs(0)), optimizer)
  video = jax.random.uniform(key, (2, 5, 8, 8, 1), minval=-1, maxval=1)
  later = video.at[:, 1:].set(jax.random.uniform(jax.random.fold_in(key, 1), (2, 4, 8, 8, 1)))
  image_step = jax.jit(make_vae_train_step(graphdef, optimizer, config.vae_loss, images=True))
  video_step = jax.jit(make_vae_train_step(graphdef, optimizer, config.vae_loss))
  on_images, image_metrics = image_step(state, {"video": video}, key)
  on_later, _ = image_step(state, {"video": later}, key)  # the later frames are not seen
  on_first_frames, first_metrics = video_step(state, {"video": video[:, :1]}, key)
  on_videos, _ = video_step(state, {"video": video}, key)
  for a, b in ((on_images, on_later), (on_images, on_first_frames)):
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert not np.array_equal(on_images.params["quant_conv"]["conv"]["kernel"][...],
                            state.params["quant_conv"]["conv"]["kernel"][...])
  assert float(image_metrics["loss"]) == float(first_metrics["loss"])
  # An image never reaches the temporal resampling (frame 0 passes it alone); a video does.
  time_kernel = lambda s: np.asarray(s.params["decoder"]["up"][2]["time"]["kernel"][...])
  np.testing.assert_array_equal(time_kernel(on_images), time_kernel(state))
  assert not np.array_equal(time_kernel(on_videos), time_kernel(state))


def test_image_steps_must_leave_steps_for_videos():
  config = get_config("tiny")
  config.unlock()
  config.vae_loss.image_steps = config.train.num_steps
  with pytest.raises(ValueError, match="vae_loss.image_steps=6 leaves none of the "
                                       "train.num_steps=6 steps to videos"):
    validate_config(config)
