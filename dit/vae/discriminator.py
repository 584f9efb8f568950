"""A 3D patch discriminator for adversarial VAE training: a video -> one realness logit per
spatio-temporal patch.

PatchGAN's layout (Isola et al. 2017) with 3D convolutions, as video tokenizers train with
(MAGVIT-v2, Open-Sora's VAE): `layers` convolutions of kernel 3x4x4 halving height and width,
each but the first followed by a group norm, LeakyReLU(0.2) after each; then one at stride 1
and a 1-channel output convolution. Frames keep their count (clips are short), so every output
logit sees a few frames and a patch of pixels. The hinge losses of the two players are
`discriminator_loss` and `generator_loss`.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from dit.vae.layers import conv3d

KERNEL = (3, 4, 4)


def _groups(channels: int) -> int:
  return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and g <= channels)


def _conv(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  """Kernel 3x4x4, valid in time (the caller pads a frame each side), padded in space to give
  size / stride: (1, 1) at stride 2, (1, 2) at stride 1."""
  space = (1, 1) if stride == 2 else (1, 2)
  return nnx.Conv(cin, cout, KERNEL, strides=(1, stride, stride),
                  padding=((0, 0), space, space), rngs=rngs)


class PatchDiscriminator3D(nnx.Module):
  """[B, T, H, W, C] videos in [-1, 1] -> [B, T, H / 2^layers, W / 2^layers, 1] logits (H and W
  multiples of 2^layers)."""

  def __init__(self, in_channels: int, base_channels: int, layers: int, *, rngs: nnx.Rngs):
    widths = [base_channels * 2 ** min(i, 3) for i in range(layers + 1)]
    self.convs = nnx.List([_conv(in_channels, widths[0], 2, rngs)] + [
        _conv(widths[i - 1], widths[i], 2, rngs) for i in range(1, layers)] + [
        _conv(widths[layers - 1], widths[layers], 1, rngs)])
    self.norms = nnx.List([nnx.GroupNorm(w, num_groups=_groups(w), rngs=rngs)
                           for w in widths[1:layers + 1]])
    self.out = _conv(widths[layers], 1, 1, rngs)

  def __call__(self, video: jax.Array) -> jax.Array:
    h = nnx.leaky_relu(_same_in_time(self.convs[0], video), 0.2)
    for conv, norm in zip(self.convs[1:], self.norms):
      h = nnx.leaky_relu(norm(_same_in_time(conv, h)), 0.2)
    return _same_in_time(self.out, h).astype(jnp.float32)


def _same_in_time(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """The convolution with a zero frame before and after: as many frames out as in."""
  return conv3d(conv, jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0))))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Hinge: mean relu(1 - D(real)) + mean relu(1 + D(fake)), halved (0 when it separates
  them by a margin of 1; 1 when it cannot tell them apart)."""
  return 0.5 * (jnp.mean(nnx.relu(1.0 - real_logits)) + jnp.mean(nnx.relu(1.0 + fake_logits)))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """-mean D(fake): the decoder is pushed towards what the discriminator calls real."""
  return -jnp.mean(fake_logits)
