"""3D patches: videos [B, T, H, W, C] to token sequences [B, L, pt*ph*pw*C] and back.

Tokens are in raster order over the patch grid (t slowest, then h, then w); `patch_positions`
gives each token's (t, h, w) grid coordinate for the 3D RoPE.
"""
from collections.abc import Sequence

import jax
import numpy as np

Grid = tuple[int, int, int]


def patch_grid(video_shape: Sequence[int], patch_size: Sequence[int]) -> Grid:
  """The (nT, nH, nW) patch grid of a [B, T, H, W, C] video; raises if a size does not divide."""
  if len(video_shape) != 5:
    raise ValueError(
        f"expected a video [B, T, H, W, C] (an image is a one-frame video), got shape "
        f"{tuple(video_shape)}")
  _, t, h, w, _ = video_shape
  pt, ph, pw = patch_size
  bad = [f"{name}={size} is not divisible by the patch size {p}"
         for name, size, p in (("T", t, pt), ("H", h, ph), ("W", w, pw)) if size % p]
  if bad:
    raise ValueError(
        f"video of shape {tuple(video_shape)} cannot be cut into patches {tuple(patch_size)}: "
        + "; ".join(bad) + ". Crop or pad the video, or change model.patch_size.")
  return t // pt, h // ph, w // pw


def num_video_tokens(frames: Sequence[int], patch_size: Sequence[int]) -> int:
  """Tokens of one video of `frames` (T, H, W) in patches of patch_size: nT * nH * nW."""
  return int(np.prod(patch_grid((1, *frames, 1), patch_size)))


def patchify(video: jax.Array, patch_size: Sequence[int]) -> jax.Array:
  """[B, T, H, W, C] -> [B, nT*nH*nW, pt*ph*pw*C]; a numpy video gives numpy (packing on the
  host, data/packing.py)."""
  nt, nh, nw = patch_grid(video.shape, patch_size)
  pt, ph, pw = patch_size
  b, c = video.shape[0], video.shape[-1]
  x = video.reshape(b, nt, pt, nh, ph, nw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [b, T, H, W, t, h, w, c]
  return x.reshape(b, nt * nh * nw, pt * ph * pw * c)


def unpatchify(tokens: jax.Array, grid: Grid, patch_size: Sequence[int]) -> jax.Array:
  """[B, nT*nH*nW, pt*ph*pw*C] -> [B, T, H, W, C]; the inverse of `patchify`."""
  nt, nh, nw = grid
  pt, ph, pw = patch_size
  b, length, dim = tokens.shape
  if length != nt * nh * nw or dim % (pt * ph * pw):
    raise ValueError(f"tokens of shape {tokens.shape} do not match grid {grid} and patch "
                     f"size {tuple(patch_size)}")
  c = dim // (pt * ph * pw)
  x = tokens.reshape(b, nt, nh, nw, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [b, T, t, H, h, W, w, c]
  return x.reshape(b, nt * pt, nh * ph, nw * pw, c)


def patch_positions(grid: Grid) -> np.ndarray:
  """int32 [nT*nH*nW, 3]: the (t, h, w) grid coordinate of each token, in token order."""
  t, h, w = np.meshgrid(*(np.arange(n) for n in grid), indexing="ij")
  return np.stack([t.ravel(), h.ravel(), w.ravel()], axis=-1).astype(np.int32)
