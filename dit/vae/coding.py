"""Coding long videos in bounded memory and large frames in tiles.

Chunks: the first frame is coded alone, then `chunk` groups of `temporal_factor` frames (or
latent frames, decoding) at a time in one compiled loop, each causal layer carrying its last
frames from one chunk to the next (dit/vae/layers.py). The result equals coding the whole video
at once (tests/test_vae.py), while the working memory is one chunk's, whatever the length.

Tiles: height and width split into overlapping tiles of `tile` pixels, each coded on its own
(in chunks) and blended where they overlap with weights that ramp linearly across the overlap.
Tiles see no context beyond their borders, so tiled coding is close to, not equal to, whole-frame
coding; tests/test_vae.py measures how close.

    encode(vae, video [B, T, H, W, C]) -> mean, logvar [B, T', H', W', Z]
    decode(vae, z [B, T', H', W', Z]) -> video [B, T, H, W, C] in [-1, 1]
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit.vae.model import CausalVAE


@functools.partial(jax.jit, static_argnums=(0, 3))
def encode_in_chunks(graphdef, state, video: jax.Array, chunk: int) -> jax.Array:
  """The first frame alone, then `chunk` * temporal_factor frames per step: the posterior's
  moments [B, T', H', W', 2Z] (mean | logvar)."""
  vae = nnx.merge(graphdef, state)

  def code(frames, cache):
    (mean, logvar), cache = nnx.merge(graphdef, state).encode(frames, cache)
    return jnp.concatenate([mean, logvar], axis=-1), cache

  return _scan_chunks(code, video, chunk * vae.config.temporal_factor, chunk)


@functools.partial(jax.jit, static_argnums=(0, 3))
def decode_in_chunks(graphdef, state, z: jax.Array, chunk: int) -> jax.Array:
  """The first latent frame alone, then `chunk` latent frames per step."""
  vae = nnx.merge(graphdef, state)
  return _scan_chunks(lambda latents, cache: nnx.merge(graphdef, state).decode(latents, cache),
                      z, chunk, chunk * vae.config.temporal_factor)


def _scan_chunks(code, x: jax.Array, step_in: int, step_out: int) -> jax.Array:
  """code(first frame), then code(each `step_in` frames) -> `step_out` frames under a scan that
  carries the causal cache and writes each result into the output in place, so the working
  memory is one step's whatever the number of frames."""
  first, cache = code(x[:, :1], None)
  steps = (x.shape[1] - 1) // step_in
  if not steps:
    return first
  out = jnp.zeros((first.shape[0], 1 + steps * step_out, *first.shape[2:]), first.dtype)
  out = jax.lax.dynamic_update_slice_in_dim(out, first, 0, axis=1)

  def body(i, carry):
    cache, out = carry
    frames = jax.lax.dynamic_slice_in_dim(x, 1 + i * step_in, step_in, axis=1)
    y, cache = code(frames, cache)
    return cache, jax.lax.dynamic_update_slice_in_dim(out, y.astype(out.dtype),
                                                      1 + i * step_out, axis=1)

  return jax.lax.fori_loop(0, steps, body, (cache, out))[1]


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0) if n else 1


def quarter_overlap(tile: int, factor: int) -> int:
  """The overlap of tiles of `tile` pixels: a quarter of a tile, in whole latent pixels of a VAE
  whose spatial factor is `factor`."""
  return tile // 4 // factor * factor


def encode(vae: CausalVAE, video: jax.Array, *, chunk: int = 1, tile: int | None = None,
           overlap: int = 64) -> tuple[jax.Array, jax.Array]:
  """The posterior's (mean, logvar) of `video` [B, 1 + 4k, H, W, C], coded `chunk` latent
  frames at a time (1: Wan's four frames; reduced to divide k), in tiles of `tile` pixels
  overlapping by `overlap` when the frames are larger than `tile`."""
  errors = vae.config.video_shape_errors(video.shape[1:])
  if errors:
    raise ValueError("cannot encode: " + "; ".join(errors))
  graphdef, state = nnx.split(vae)
  chunk = _largest_divisor((video.shape[1] - 1) // vae.config.temporal_factor, chunk)
  code = lambda v: encode_in_chunks(graphdef, state, v, chunk)
  factor = vae.config.spatial_factor
  moments = _tiled(code, video, tile, overlap, scale=1 / factor, align=factor)
  return tuple(jnp.split(moments, 2, axis=-1))


def decode(vae: CausalVAE, z: jax.Array, *, chunk: int = 1, tile: int | None = None,
           overlap: int = 64) -> jax.Array:
  """Video [B, 1 + 4k, H, W, C] in [-1, 1] from latents z [B, 1 + k, H', W', Z]
  (unnormalized), decoded `chunk` latent frames at a time after the first, in tiles of `tile`
  output pixels overlapping by `overlap` when the frames are larger than `tile`."""
  if z.ndim != 5 or z.shape[-1] != vae.config.latent_channels:
    raise ValueError(f"cannot decode latents of shape {z.shape}: expected [B, T', H', W', "
                     f"{vae.config.latent_channels}]")
  graphdef, state = nnx.split(vae)
  chunk = _largest_divisor(z.shape[1] - 1, chunk)
  factor = vae.config.spatial_factor
  if tile is not None and (tile % factor or overlap % factor):
    raise ValueError(f"decoding tiles of {tile} pixels overlapping by {overlap} must be "
                     f"multiples of the VAE's spatial factor {factor}")
  code = lambda latents: decode_in_chunks(graphdef, state, latents, chunk)
  return _tiled(code, z, None if tile is None else tile // factor,
                overlap // factor, scale=factor, align=1)


def _tiled(code, x: jax.Array, tile: int | None, overlap: int, scale: float, align: int):
  """code(x) over overlapping spatial tiles of x, blended: tiles of `tile` input pixels (a
  multiple of `align`) starting every tile - overlap, the last flush with the edge; `scale` is
  the output's size over the input's."""
  height, width = x.shape[2:4]
  if tile is None or (height <= tile and width <= tile):
    return code(x)
  if tile % align or overlap % align or not 0 <= overlap < tile:
    raise ValueError(f"tiles of {tile} overlapping by {overlap} must be multiples of {align} "
                     "with 0 <= overlap < tile")
  rows, cols = _starts(height, tile, overlap), _starts(width, tile, overlap)
  out, weight = None, None
  for top in rows:
    for left in cols:
      part = code(x[:, :, top:top + tile, left:left + tile])
      size = part.shape[2]
      ramp_h = _ramp(size, int(overlap * scale), top > 0, top + tile < height)
      ramp_w = _ramp(part.shape[3], int(overlap * scale), left > 0, left + tile < width)
      w = jnp.asarray(np.outer(ramp_h, ramp_w))[None, None, :, :, None]
      if out is None:
        out_shape = (*part.shape[:2], int(height * scale), int(width * scale), part.shape[-1])
        out, weight = jnp.zeros(out_shape, part.dtype), jnp.zeros(out_shape[2:4], part.dtype)
      t, l = int(top * scale), int(left * scale)
      out = out.at[:, :, t:t + size, l:l + part.shape[3]].add(part * w)
      weight = weight.at[t:t + size, l:l + part.shape[3]].add(w[0, 0, :, :, 0])
  return out / weight[None, None, :, :, None]


def _starts(size: int, tile: int, overlap: int) -> list[int]:
  """Tile starts every tile - overlap, the last tile flush with the end."""
  if size <= tile:
    return [0]
  starts = list(range(0, size - tile, tile - overlap)) + [size - tile]
  return sorted(set(starts))


def _ramp(size: int, overlap: int, before: bool, after: bool) -> np.ndarray:
  """Blend weights along one axis of a tile: rising over the first `overlap` pixels when a tile
  precedes it, falling over the last when one follows, 1 between; never 0."""
  position = np.arange(size) + 0.5
  weight = np.ones(size)
  if overlap and before:
    weight = np.minimum(weight, position / overlap)
  if overlap and after:
    weight = np.minimum(weight, (size - position) / overlap)
  return weight.astype(np.float32)
