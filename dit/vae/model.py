"""The causal video VAE: encoder, diagonal Gaussian latent, decoder (Wan2.1's architecture).

    video [B, 1 + 4k, H, W, C] in [-1, 1]
      --encode--> mean, logvar [B, 1 + k, H/8, W/8, Z]     (for WAN21's factors)
      --normalize--> what the DiT sees: (z - latents_mean) / latents_std
      --decode--> video [B, 1 + 4k, H, W, C]

Every method takes and returns a `cache` (dit/vae/layers.py): None codes a whole video (or its
first chunk); the returned cache continues it. dit/vae/coding.py codes long videos a chunk at a
time and large frames a tile at a time.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from dit.vae.config import VAEConfig
from dit.vae.discriminator import PatchDiscriminator3D
from dit.vae.layers import CausalConv3d, ChannelRMSNorm, FrameAttention, Resample
from dit.vae.layers import ResidualBlock, run_layers

LOGVAR_RANGE = (-30.0, 20.0)


class LatentStatistic(nnx.Variable):
  """Per-channel latent mean or std: saved with the weights, never trained by the optimizer."""


class MiddleBlock(nnx.Module):
  def __init__(self, channels: int, *, dtype, rngs):
    self.layers = nnx.List([ResidualBlock(channels, channels, dtype=dtype, rngs=rngs),
                            FrameAttention(channels, dtype=dtype, rngs=rngs),
                            ResidualBlock(channels, channels, dtype=dtype, rngs=rngs)])

  def __call__(self, x, cache=None):
    return run_layers(self.layers, x, cache)


class Head(nnx.Module):
  """norm, SiLU, causal 3x3x3 conv."""

  def __init__(self, in_channels: int, out_channels: int, *, dtype, rngs):
    self.norm = ChannelRMSNorm(in_channels)
    self.conv = CausalConv3d(in_channels, out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x, cache=None):
    return self.conv(jax.nn.silu(self.norm(x)), cache)


class Encoder(nnx.Module):
  """[B, T, H, W, C] -> [B, T', H', W', 2Z] (mean and log-variance before quant_conv)."""

  def __init__(self, config: VAEConfig, *, dtype, rngs):
    widths = [config.base_channels * m for m in (1, *config.channel_multipliers)]
    self.conv_in = CausalConv3d(config.in_channels, widths[0], dtype=dtype, rngs=rngs)
    layers = []
    for level, (in_width, out_width) in enumerate(zip(widths[:-1], widths[1:])):
      for _ in range(config.num_res_blocks):
        layers.append(ResidualBlock(in_width, out_width, dtype=dtype, rngs=rngs))
        in_width = out_width
      if level < config.levels - 1:
        mode = "down3d" if config.temporal_downsample[level] else "down2d"
        layers.append(Resample(out_width, mode, dtype=dtype, rngs=rngs))
    self.down = nnx.List(layers)
    self.middle = MiddleBlock(widths[-1], dtype=dtype, rngs=rngs)
    self.head = Head(widths[-1], 2 * config.latent_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x, cache=None):
    cache = cache or {}
    x, c_in = self.conv_in(x, cache.get("conv_in"))
    x, c_down = run_layers(self.down, x, cache.get("down"))
    x, c_mid = self.middle(x, cache.get("middle"))
    x, c_head = self.head(x, cache.get("head"))
    return x, {"conv_in": c_in, "down": c_down, "middle": c_mid, "head": c_head}


class Decoder(nnx.Module):
  """[B, T', H', W', Z] -> [B, T, H, W, C], unclipped."""

  def __init__(self, config: VAEConfig, *, dtype, rngs):
    base, mults = config.decoder_channels, config.channel_multipliers
    widths = [base * m for m in (mults[-1], *mults[::-1])]
    temporal_upsample = config.temporal_downsample[::-1]
    self.conv_in = CausalConv3d(config.latent_channels, widths[0], dtype=dtype, rngs=rngs)
    self.middle = MiddleBlock(widths[0], dtype=dtype, rngs=rngs)
    layers = []
    for level, (in_width, out_width) in enumerate(zip(widths[:-1], widths[1:])):
      if level > 0:
        in_width //= 2  # the previous level's upsampling halved the width
      for _ in range(config.num_res_blocks + 1):
        layers.append(ResidualBlock(in_width, out_width, dtype=dtype, rngs=rngs))
        in_width = out_width
      if level < config.levels - 1:
        mode = "up3d" if temporal_upsample[level] else "up2d"
        layers.append(Resample(out_width, mode, dtype=dtype, rngs=rngs))
    self.up = nnx.List(layers)
    self.head = Head(widths[-1], config.in_channels, dtype=dtype, rngs=rngs)

  def __call__(self, z, cache=None):
    cache = cache or {}
    x, c_in = self.conv_in(z, cache.get("conv_in"))
    x, c_mid = self.middle(x, cache.get("middle"))
    x, c_up = run_layers(self.up, x, cache.get("up"))
    x, c_head = self.head(x, cache.get("head"))
    return x, {"conv_in": c_in, "middle": c_mid, "up": c_up, "head": c_head}


class CausalVAE(nnx.Module):
  """A KL-regularised causal video autoencoder; built from a VAEConfig."""

  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype = jnp.dtype(config.dtype)
    z = config.latent_channels
    self.encoder = Encoder(config, dtype=dtype, rngs=rngs)
    self.quant_conv = CausalConv3d(2 * z, 2 * z, (1, 1, 1), dtype=dtype, rngs=rngs)
    self.post_quant_conv = CausalConv3d(z, z, (1, 1, 1), dtype=dtype, rngs=rngs)
    self.decoder = Decoder(config, dtype=dtype, rngs=rngs)
    self.latents_mean = LatentStatistic(jnp.asarray(config.latents_mean or [0.0] * z,
                                                    jnp.float32))
    self.latents_std = LatentStatistic(jnp.asarray(config.latents_std or [1.0] * z,
                                                   jnp.float32))
    # Trained beside the VAE (training/vae_step.py) and saved with it; coding never uses it.
    self.discriminator = PatchDiscriminator3D(
        config.in_channels, config.discriminator_channels, config.discriminator_layers,
        rngs=rngs) if config.discriminator_channels else None

  def encode(self, video: jax.Array, cache=None):
    """video [B, T, H, W, C] -> ((mean, logvar) each [B, T', H', W', Z] float32, cache)."""
    h, cache = self.encoder(video.astype(jnp.dtype(self.config.dtype)), cache)
    moments = self.quant_conv(h)[0].astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return (mean, jnp.clip(logvar, *LOGVAR_RANGE)), cache

  def decode(self, z: jax.Array, cache=None, clip: bool = True):
    """z [B, T', H', W', Z] (unnormalized) -> (video [B, T, H, W, C] float32, cache); clipped
    to [-1, 1] unless `clip=False` (training, where clipping would stop the gradient)."""
    h = self.post_quant_conv(z.astype(jnp.dtype(self.config.dtype)))[0]
    video, cache = self.decoder(h, cache)
    video = video.astype(jnp.float32)
    return (jnp.clip(video, -1.0, 1.0) if clip else video), cache

  def normalize(self, z: jax.Array) -> jax.Array:
    """Latents as the DiT sees them: per channel (z - mean) / std."""
    return (z - self.latents_mean[...]) / self.latents_std[...]

  def denormalize(self, latents: jax.Array) -> jax.Array:
    return latents * self.latents_std[...] + self.latents_mean[...]


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """z ~ N(mean, exp(logvar)), drawn by reparameterisation."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) summed over each example's latent: [B]."""
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return kl.reshape(kl.shape[0], -1).sum(-1)
