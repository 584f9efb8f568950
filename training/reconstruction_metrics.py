"""How close a reconstruction is to its video: PSNR and SSIM per video, for videos in [-1, 1].

SSIM is Wang et al. (2004)'s, per frame and channel: Gaussian windows of 11 pixels (sigma 1.5)
over the valid region, K1 = 0.01, K2 = 0.03, for a data range of 2; a video's SSIM is the mean
over its frames, channels and windows (frames smaller than the window use the frame's size).
"""
import jax
import jax.numpy as jnp

DATA_RANGE = 2.0  # [-1, 1]


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """[B, T, H, W, C] twice -> [B] peak signal-to-noise ratios in dB."""
  mse = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)),
                 axis=tuple(range(1, a.ndim)))
  return 10.0 * jnp.log10(DATA_RANGE ** 2 / jnp.maximum(mse, 1e-12))


def _gaussian_window(size: int, sigma: float = 1.5) -> jax.Array:
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  w = jnp.exp(-0.5 * jnp.square(x / sigma))
  return w / w.sum()


def ssim(a: jax.Array, b: jax.Array, window: int = 11) -> jax.Array:
  """[B, T, H, W, C] twice -> [B] mean structural similarity."""
  batch, frames, height, width, channels = a.shape
  size = min(window, height, width)
  w = _gaussian_window(size)

  def blur(x):  # [N, H, W] -> [N, H - size + 1, W - size + 1], separable
    x = jax.lax.conv_general_dilated(x[:, None], w[None, None, :, None], (1, 1), "VALID")
    return jax.lax.conv_general_dilated(x, w[None, None, None, :], (1, 1), "VALID")[:, 0]

  def planes(x):  # every frame and channel as one image
    return jnp.moveaxis(x.astype(jnp.float32), -1, 2).reshape(-1, height, width)

  x, y = planes(a), planes(b)
  mu_x, mu_y = blur(x), blur(y)
  var_x = blur(x * x) - mu_x ** 2
  var_y = blur(y * y) - mu_y ** 2
  cov = blur(x * y) - mu_x * mu_y
  c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
  index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  return index.reshape(batch, -1).mean(-1)
