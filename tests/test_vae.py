"""The causal VAE (dit/vae): causality, images as one-frame videos, chunked and tiled coding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit.vae import coding
from dit.vae.config import WAN21, VAEConfig
from dit.vae.model import CausalVAE, kl_divergence, sample_posterior

# 4x4x4 in two levels, 4 latent channels: 1 + 4k frames give 1 + k latent frames.
TINY = VAEConfig(in_channels=3, base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                 temporal_downsample=(True, True), latent_channels=4)


def random_vae(key: jax.Array, config: VAEConfig = TINY) -> CausalVAE:
  """Random weights drawn from `key` (in numpy: no compile per shape): kernels scaled by
  1/sqrt(fan-in), norm gains and biases away from 1 and 0."""
  vae = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
  state = nnx.state(vae)
  for path, variable in nnx.to_flat_state(state):
    shape = variable.shape
    if path[-1] == "gamma":
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    elif path[-1] == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif path[-1] == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:  # the latent statistics
      value = np.asarray(config.latents_mean or np.zeros(shape)) if "mean" in path[-1] else \
          np.asarray(config.latents_std or np.ones(shape))
    variable.set_value(jnp.asarray(value, jnp.float32))
  nnx.update(vae, state)
  return vae


@nnx.jit
def encode(vae: CausalVAE, video: jax.Array):
  """Whole-video coding, compiled (op by op it compiles every layer on its own)."""
  return vae.encode(video)[0]


@nnx.jit(static_argnames="clip")
def decode(vae: CausalVAE, z: jax.Array, clip: bool = True):
  return vae.decode(z, clip=clip)[0]


def random_video(key: jax.Array, frames: int = 9, size=(16, 16)) -> jax.Array:
  return jax.random.uniform(key, (2, frames, *size, 3), minval=-1.0, maxval=1.0)


def test_shapes_follow_the_factors(key):
  vae = random_vae(key)
  mean, logvar = encode(vae, random_video(key, 9, (16, 24)))
  assert mean.shape == logvar.shape == (2, 3, 4, 6, 4)
  video = decode(vae, mean)
  assert video.shape == (2, 9, 16, 24, 3) and float(jnp.abs(video).max()) <= 1.0
  assert TINY.latent_shape((9, 16, 24, 3)) == (3, 4, 6, 4)
  assert WAN21.latent_shape((81, 480, 832, 3)) == (21, 60, 104, 16)
  assert WAN21.compression((81, 480, 832)) == pytest.approx(81 * 480 * 832 * 3 / (21 * 60 * 104
                                                                                   * 16))


def test_no_latent_or_frame_sees_the_future(key):
  vae = random_vae(key)
  video = random_video(key)
  later = video.at[:, 5:].set(random_video(jax.random.fold_in(key, 1))[:, 5:])  # frames 5-8
  mean, _ = encode(vae, video)
  mean_later, _ = encode(vae, later)
  # Latent frame 0 holds frame 0, latent frame 1 frames 1-4, latent frame 2 frames 5-8.
  np.testing.assert_array_equal(mean[:, :2], mean_later[:, :2])
  assert not np.allclose(mean[:, 2], mean_later[:, 2], atol=1e-3)

  z_later = mean.at[:, 2].set(mean_later[:, 2])
  decoded = decode(vae, mean, clip=False)
  decoded_later = decode(vae, z_later, clip=False)
  np.testing.assert_array_equal(decoded[:, :5], decoded_later[:, :5])
  assert not np.allclose(decoded[:, 5:], decoded_later[:, 5:], atol=1e-3)


def test_a_new_vae_codes_each_latent_frame_from_one_frame(key):
  """Initialised as an image VAE inflated to video: latent frame k holds frame 4k alone, and
  the decoder repeats each latent frame's image over its four frames."""
  vae = CausalVAE(TINY, rngs=nnx.Rngs(0))
  video = random_video(key)
  others = video.at[:, jnp.array([1, 2, 3, 5, 6, 7])].set(0.5)
  mean, _ = encode(vae, video)
  np.testing.assert_array_equal(encode(vae, others)[0], mean)
  frames = decode(vae, mean, clip=False)
  np.testing.assert_allclose(frames[:, 1:5], jnp.repeat(frames[:, 4:5], 4, axis=1), atol=1e-6)
  np.testing.assert_allclose(frames[:, 5:], jnp.repeat(frames[:, 8:9], 4, axis=1), atol=1e-6)
  assert not np.allclose(frames[:, 0], frames[:, 4], atol=1e-3)


def test_an_image_codes_as_the_first_frame_of_a_video(key):
  vae = random_vae(key)
  video = random_video(key)
  mean, logvar = encode(vae, video)
  image_mean, image_logvar = encode(vae, video[:, :1])
  assert image_mean.shape == (2, 1, 4, 4, 4)
  np.testing.assert_allclose(image_mean, mean[:, :1], atol=1e-6)
  np.testing.assert_allclose(image_logvar, logvar[:, :1], atol=1e-6)
  frames = decode(vae, mean)
  image = decode(vae, mean[:, :1])
  assert image.shape == (2, 1, 16, 16, 3)
  np.testing.assert_allclose(image, frames[:, :1], atol=1e-5)


def test_chunked_coding_equals_whole_video_coding(key):
  """One latent frame per chunk encoding (Wan's four frames), two per chunk decoding."""
  vae = random_vae(key)
  video = random_video(key, frames=17)
  mean, logvar = encode(vae, video)
  chunked_mean, chunked_logvar = coding.encode(vae, video, chunk=1)
  np.testing.assert_allclose(chunked_mean, mean, atol=2e-5)
  np.testing.assert_allclose(chunked_logvar, logvar, atol=2e-5)
  decoded = decode(vae, mean)
  np.testing.assert_allclose(coding.decode(vae, mean, chunk=2), decoded, atol=2e-5)


def test_a_tile_as_large_as_the_frame_is_whole_frame_coding(key):
  vae = random_vae(key)
  video = random_video(key, frames=5)
  np.testing.assert_array_equal(coding.encode(vae, video, tile=16)[0], coding.encode(vae, video)[0])


def test_overlapping_tiles_blend_to_the_whole_for_a_pixelwise_code(key):
  """Blend weights sum to one everywhere, whatever the tiles: a code that works pixel by pixel
  (here doubling the size) comes out of tiling unchanged."""
  x = jax.random.normal(key, (1, 3, 40, 56, 2))
  code = lambda v: jnp.repeat(jnp.repeat(jnp.tanh(v), 2, axis=2), 2, axis=3)
  for tile, overlap in ((16, 4), (24, 8), (32, 16)):
    np.testing.assert_allclose(coding._tiled(code, x, tile, overlap, scale=2, align=1), code(x),
                               atol=1e-6)


def test_tiled_coding_is_close_to_whole_frame_coding(key):
  """Tiles see nothing past their borders (and the middle attention sees one tile), so tiling
  changes the result: less with larger tiles, and less where overlaps are blended than cut at a
  hard seam; a tile as large as the frame changes nothing. Measured on random 4x4x4 VAEs (seeds
  0-15) with a smooth 48x48 video, mean absolute change (the range is [-1, 1]): 32-pixel tiles
  blended over 16 pixels 0.03-0.12, cut at a seam 0.05-0.13; 16-pixel tiles 0.09-0.29. (Blending
  over 8 against 16 pixels differs by under 1%: too little to assert.)"""
  vae = random_vae(key)
  t, h, w = np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 1, 48), np.linspace(0, 1, 48),
                        indexing="ij")
  video = jnp.asarray(np.stack([np.sin(6 * h + 3 * t + c) * np.cos(5 * w - 2 * t)
                                for c in range(3)], -1)[None], jnp.float32)
  mean, _ = coding.encode(vae, video)
  whole = coding.decode(vae, mean)

  def change(tile, overlap):
    return float(jnp.abs(coding.decode(vae, mean, tile=tile, overlap=overlap) - whole).mean())

  blended, seam, small = change(32, 16), change(32, 0), change(16, 8)
  assert blended < seam < small and blended < 0.2, (blended, seam, small)
  assert change(48, 16) == 0.0


def test_chunked_decoding_memory_does_not_grow_with_frames(key):
  """XLA's compiled temporary memory: flat in the number of frames chunked, growing whole."""
  vae = random_vae(key)
  graphdef, state = nnx.split(vae)

  def temp_bytes(fn, frames):
    z = jax.ShapeDtypeStruct((1, frames, 4, 4, 4), jnp.float32)
    return fn.lower(z).compile().memory_analysis().temp_size_in_bytes

  chunked = jax.jit(lambda z: coding.decode_in_chunks(graphdef, state, z, 1))
  whole = jax.jit(lambda z: nnx.merge(graphdef, state).decode(z)[0])
  assert temp_bytes(chunked, 17) == temp_bytes(chunked, 65)
  assert temp_bytes(whole, 65) > 3 * temp_bytes(whole, 17)
  assert temp_bytes(chunked, 65) < temp_bytes(whole, 65) / 4


def test_bad_shapes_say_what_to_use(key):
  vae = random_vae(key)
  with pytest.raises(ValueError, match="8 frames; the VAE codes 1 \\+ 4k frames .* use 5 or 9"):
    coding.encode(vae, random_video(key, frames=8))
  with pytest.raises(ValueError, match="16x18; height and width must be multiples of .* 4"):
    coding.encode(vae, random_video(key, frames=5, size=(16, 18)))
  with pytest.raises(ValueError, match="temporal_downsample has 3 entries; it needs one per"):
    TINY.replace(temporal_downsample=(True, True, False))


def test_kl_and_posterior_samples(key):
  mean = jax.random.normal(key, (2, 3, 4, 4, 4))
  logvar = 0.5 * jax.random.normal(jax.random.fold_in(key, 1), mean.shape)
  want = 0.5 * (mean ** 2 + jnp.exp(logvar) - 1 - logvar).reshape(2, -1).sum(-1)
  np.testing.assert_allclose(kl_divergence(mean, logvar), want, rtol=1e-6)
  np.testing.assert_allclose(kl_divergence(jnp.zeros((1, 8)), jnp.zeros((1, 8))), [0.0])
  draws = sample_posterior(jnp.full((20000,), 2.0), jnp.full((20000,), np.log(0.25)),
                           jax.random.fold_in(key, 2))
  assert float(draws.mean()) == pytest.approx(2.0, abs=0.02)
  assert float(draws.std()) == pytest.approx(0.5, abs=0.02)


def test_latent_statistics_normalize_per_channel(key):
  config = TINY.replace(latents_mean=(1.0, -1.0, 0.5, 0.0), latents_std=(2.0, 1.0, 4.0, 0.5))
  vae = random_vae(key, config)
  z = jax.random.normal(key, (1, 2, 3, 3, 4))
  normalized = vae.normalize(z)
  np.testing.assert_allclose(normalized[..., 0], (z[..., 0] - 1.0) / 2.0, rtol=1e-6)
  np.testing.assert_allclose(vae.denormalize(normalized), z, atol=1e-6)
  trained = dict(nnx.to_flat_state(nnx.state(vae, nnx.Param)))
  assert ("latents_mean",) not in trained and ("latents_std",) not in trained
