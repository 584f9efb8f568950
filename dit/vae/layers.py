"""The causal VAE's layers. Every tensor is channels-last: a video is [B, T, H, W, C].

Causal coding a chunk of frames at a time: a layer that mixes frames takes the `cache` it
returned for the previous chunk (the last frames it saw) and returns the next one. `cache=None`
means the chunk starts the video: the past is zeros, as whole-video causal padding is, and the
resampling layers treat its first frame alone (so an image is a one-frame video). Coding a whole
video is coding one chunk with `cache=None`; coding it a chunk at a time gives the same result.

Initialised as an image VAE inflated to video: every causal convolution starts with only its
current frame's taps (drawn as a 2D convolution's) and the temporal resampling starts as frame
copies, so a new VAE codes each frame on its own and training learns what mixing frames adds
(inflation, as image-to-video models are grown). On moving digits this reached 19.9 dB held out
after 100 steps where random temporal taps reached 15.6.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

Cache = dict | jax.Array | None


def _conv_kwargs(dtype, rngs: nnx.Rngs) -> dict:
  return dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _past(cache: jax.Array | None, x: jax.Array, frames: int) -> jax.Array:
  """The `frames` frames before x: the cache, or zeros at the start of the video."""
  if cache is None:
    return jnp.zeros((x.shape[0], frames, *x.shape[2:]), x.dtype)
  return cache.astype(x.dtype)


def current_frame_init(key, shape, dtype=jnp.float32):
  """A [kt, kh, kw, Cin, Cout] causal kernel that sees only the current (last) frame: a 2D
  convolution's LeCun-normal kernel there, zeros on the past frames."""
  kernel = nnx.initializers.lecun_normal()(key, shape[1:], dtype)
  return jnp.zeros(shape, dtype).at[-1].set(kernel)


def frame_copy_init(key, shape, dtype=jnp.float32):
  """A [kt, 1, 1, C, k * C] temporal kernel that copies the current frame's channels into each
  of its k output frames (identity at the last tap, zeros elsewhere)."""
  del key
  _, _, _, cin, cout = shape
  return jnp.zeros(shape, dtype).at[-1, 0, 0].set(jnp.tile(jnp.eye(cin, dtype=dtype),
                                                           (1, cout // cin)))


def per_frame(layer, x: jax.Array) -> jax.Array:
  """A 2D layer on every frame: [B, T, H, W, C] -> [B, T, H', W', C']."""
  batch, frames = x.shape[:2]
  y = layer(x.reshape(batch * frames, *x.shape[2:]))
  return y.reshape(batch, frames, *y.shape[1:])


def conv3d(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """nnx.Conv's 3D convolution (valid in time), computed as conv3d_as_2d on CPU."""
  return conv3d_as_2d(conv, x) if _on_cpu() else conv(x)


def conv3d_as_2d(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """nnx.Conv's 3D convolution (valid in time) as one 2D convolution whose input channels hold
  the kt frames of each window: the same numbers, 3-4x faster on XLA's CPU backend, whose 3D
  convolutions are slow (a 3x3x3 conv of 8 channels at 64x64, forward and backward: 1.13 s as
  3D, 0.28 s as 2D)."""
  kernel = conv.kernel[...].astype(conv.dtype or x.dtype)
  taps, kh, kw, cin, cout = kernel.shape
  batch, frames, height, width, _ = x.shape
  strides = conv.strides if isinstance(conv.strides, tuple) else (conv.strides or 1,) * 3
  stride = strides[0]
  out_frames = (frames - taps) // stride + 1
  last = stride * (out_frames - 1) + 1
  windows = jnp.concatenate([x[:, k:k + last:stride] for k in range(taps)], axis=-1)
  padding = "VALID" if conv.padding == "VALID" else conv.padding[1:]
  y = jax.lax.conv_general_dilated(
      windows.reshape(batch * out_frames, height, width, taps * cin),
      jnp.moveaxis(kernel, 0, 2).reshape(kh, kw, taps * cin, cout), tuple(strides[1:]),
      padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = y.reshape(batch, out_frames, *y.shape[1:])
  return y + conv.bias[...].astype(y.dtype) if conv.bias is not None else y


class CausalConv3d(nnx.Module):
  """A 3D convolution whose output frame t sees input frames t - (kt - 1) .. t only; the
  spatial axes are padded to keep their size."""

  def __init__(self, in_channels: int, out_channels: int, kernel=(3, 3, 3), *, dtype, rngs):
    self.past_frames = kernel[0] - 1
    self.conv = nnx.Conv(in_channels, out_channels, tuple(kernel),
                         padding=((0, 0), (kernel[1] // 2,) * 2, (kernel[2] // 2,) * 2),
                         kernel_init=current_frame_init, **_conv_kwargs(dtype, rngs))

  def __call__(self, x: jax.Array, cache: jax.Array | None = None):
    """x [B, T, H, W, Cin], cache [B, kt-1, H, W, Cin] -> ([B, T, H, W, Cout], next cache)."""
    if not self.past_frames:
      return self.conv(x), None
    padded = jnp.concatenate([_past(cache, x, self.past_frames), x], axis=1)
    y = conv3d(self.conv, padded)
    return y, padded[:, -self.past_frames:]


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


class ChannelRMSNorm(nnx.Module):
  """x / |x| * sqrt(C) * gamma over the channels of each position: nothing mixes across frames
  or pixels, so it is causal and chunks exactly."""

  def __init__(self, channels: int):
    self.scale = math.sqrt(channels)
    self.gamma = nnx.Param(jnp.ones((channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...]).astype(x.dtype)


class ResidualBlock(nnx.Module):
  """norm, SiLU, causal conv, norm, SiLU, causal conv; plus x (through a 1x1x1 conv when the
  width changes)."""

  def __init__(self, in_channels: int, out_channels: int, *, dtype, rngs):
    self.norm1 = ChannelRMSNorm(in_channels)
    self.conv1 = CausalConv3d(in_channels, out_channels, dtype=dtype, rngs=rngs)
    self.norm2 = ChannelRMSNorm(out_channels)
    self.conv2 = CausalConv3d(out_channels, out_channels, dtype=dtype, rngs=rngs)
    self.shortcut = (CausalConv3d(in_channels, out_channels, (1, 1, 1), dtype=dtype, rngs=rngs)
                     if in_channels != out_channels else None)

  def __call__(self, x: jax.Array, cache: Cache = None):
    cache = cache or {}
    h, c1 = self.conv1(jax.nn.silu(self.norm1(x)), cache.get("conv1"))
    h, c2 = self.conv2(jax.nn.silu(self.norm2(h)), cache.get("conv2"))
    skip = x if self.shortcut is None else self.shortcut(x)[0]
    return skip + h, {"conv1": c1, "conv2": c2}


class FrameAttention(nnx.Module):
  """Single-head self-attention among the pixels of each frame (no frame sees another)."""

  def __init__(self, channels: int, *, dtype, rngs):
    self.norm = ChannelRMSNorm(channels)
    self.qkv = nnx.Linear(channels, 3 * channels, **_conv_kwargs(dtype, rngs))
    self.proj = nnx.Linear(channels, channels, **_conv_kwargs(dtype, rngs))

  def __call__(self, x: jax.Array, cache: Cache = None):
    batch, frames, height, width, channels = x.shape
    qkv = self.qkv(self.norm(x)).reshape(batch * frames, height * width, 1, 3 * channels)
    q, k, v = jnp.split(qkv, 3, axis=-1)  # each [B*T, HW, 1, C]
    out = jax.nn.dot_product_attention(q, k, v)
    return x + self.proj(out.reshape(x.shape)), None


class Resample(nnx.Module):
  """Halves ("down2d", "down3d") or doubles ("up2d", "up3d") height and width, and with "3d"
  the frames after the first: 1 + 2k frames <-> 1 + k.

  down: pad right and bottom by one, 3x3 conv with stride 2 per frame; "down3d" then a causal
  temporal conv of 3 frames with stride 2 over windows (0, 1, 2), (2, 3, 4), ... after frame 0
  passes alone. up: "up3d" first maps each frame after the first through a causal temporal conv
  to two frames (frame 0 passes alone and is not in their context); then nearest-neighbour
  doubling and a 3x3 conv to half the width per frame.
  """

  def __init__(self, channels: int, mode: str, *, dtype, rngs):
    self.mode = mode
    kwargs = _conv_kwargs(dtype, rngs)
    if mode.startswith("down"):
      self.spatial = nnx.Conv(channels, channels, (3, 3), strides=(2, 2),
                              padding=((0, 1), (0, 1)), **kwargs)
      time_out = channels
    else:
      self.spatial = nnx.Conv(channels, channels // 2, (3, 3), padding=((1, 1), (1, 1)),
                              **kwargs)
      time_out = 2 * channels
    self.time = (nnx.Conv(channels, time_out, (3, 1, 1),
                          strides=(2, 1, 1) if mode == "down3d" else (1, 1, 1),
                          padding="VALID", kernel_init=frame_copy_init, **kwargs)
                 if mode.endswith("3d") else None)

  def __call__(self, x: jax.Array, cache: Cache = None):
    if self.mode.startswith("down"):
      x = per_frame(self.spatial, x)
      return (x, None) if self.time is None else self._down_time(x, cache)
    next_cache = None
    if self.time is not None:
      x, next_cache = self._up_time(x, cache)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return per_frame(self.spatial, x), next_cache

  def _down_time(self, x: jax.Array, cache):
    if cache is None:  # frame 0 alone, then windows starting at frames 0, 2, 4, ...
      head, windows = x[:, :1], (x if x.shape[1] >= 3 else None)
    else:  # windows starting at the previous chunk's last frame
      head, windows = None, jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    parts = [p for p in (head, None if windows is None else self.time(windows))
             if p is not None]
    return jnp.concatenate(parts, axis=1), x[:, -1:]

  def _up_time(self, x: jax.Array, cache):
    head, rest = (x[:, :1], x[:, 1:]) if cache is None else (None, x)
    padded = jnp.concatenate([_past(cache, x, 2), rest], axis=1)
    parts = [head]
    if rest.shape[1]:
      pairs = self.time(padded)  # [B, R, H, W, 2C]: two frames per input frame
      batch, frames, height, width, _ = pairs.shape
      pairs = pairs.reshape(batch, frames, height, width, 2, -1)
      parts.append(jnp.moveaxis(pairs, 4, 2).reshape(batch, 2 * frames, height, width, -1))
    return jnp.concatenate([p for p in parts if p is not None], axis=1), padded[:, -2:]


def run_layers(layers, x: jax.Array, cache: Cache):
  """Each layer in turn, threading its own entry of the cache: (output, caches as a list)."""
  caches = []
  for i, layer in enumerate(layers):
    x, c = layer(x, None if cache is None else cache[i])
    caches.append(c)
  return x, caches
