"""Static block-sparsity patterns for video tokens laid out as (T, H, W) patches.

The sequence is the DiT's: T*H*W video tokens in raster order (or any other order given as
`token_order`), then `num_text` text tokens. A pattern is a bool block mask [nQ, nK] (or
[heads, nQ, nK]); turn it into kernel tables with kernels.block_tables.PatternTables.from_mask.

  window_block_mask     3D local window: tokens within (dt, dh, dw) patches of each other
  temporal_block_mask   the same spatial position in every frame
  spatial_block_mask    every position of the same frame
  full_block_mask       everything
  tile_order            a token order that puts 3D tiles in consecutive blocks, which makes
                        windows exact at block granularity (as in sliding tile attention)
  spatial_temporal_heads  alternate spatial and temporal heads, one [H, nQ, nK] mask

A block pair is kept when any of its token pairs is within the pattern, so a block mask covers
its token pattern. Text blocks are always kept, as queries (text reads the whole video) and as
keys (every token reads the text). Built once in numpy, at trace time: the patterns depend on
shapes only.
"""
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Window = Sequence[int | None]  # half-widths (dt, dh, dw) in patches; None: the whole axis
QUERY_BLOCKS_PER_CHUNK = 64   # bounds the [chunk, T, H, W] working set at long videos


def num_blocks(length: int, block: int) -> int:
  return -(-length // block)


def full_block_mask(length: int, *, block_q: int, block_k: int, kv_length: int | None = None):
  """bool [nQ, nK], all True."""
  kv_length = length if kv_length is None else kv_length
  return np.ones((num_blocks(length, block_q), num_blocks(kv_length, block_k)), bool)


def window_block_mask(grid: Sequence[int], window: Window, *, block_q: int, block_k: int,
                      num_text: int = 0, token_order: np.ndarray | None = None) -> np.ndarray:
  """bool [nQ, nK]: query and key blocks holding tokens within `window` of each other.

  grid (T, H, W) in patches; window (dt, dh, dw) half-widths, None for a whole axis; token_order
  int [T*H*W]: the raster index of the video token at each sequence position (default: raster).
  """
  grid = tuple(int(g) for g in grid)
  if len(grid) != 3 or len(window) != 3 or min(grid) < 1:
    raise ValueError(f"expected grid (T, H, W) and window (dt, dh, dw); got {grid}, {window}")
  if any(w is not None and w < 0 for w in window):
    raise ValueError(f"window half-widths must be >= 0 or None; got {window}")
  num_video = int(np.prod(grid))
  length = num_video + num_text
  position = _positions(num_video, token_order)  # sequence position of each raster token
  q_block_of_token = (position // block_q).reshape(grid)
  num_q, num_k = num_blocks(length, block_q), num_blocks(length, block_k)
  mask = np.zeros((num_q, num_k), bool)
  video_q_blocks = num_blocks(num_video, block_q)
  for first in range(0, video_q_blocks, QUERY_BLOCKS_PER_CHUNK):
    blocks = np.arange(first, min(first + QUERY_BLOCKS_PER_CHUNK, video_q_blocks))
    reach = q_block_of_token[None] == blocks[:, None, None, None]  # [chunk, T, H, W]
    for axis, half_width in enumerate(window, start=1):
      reach = _dilate(reach, axis, half_width)
    keys = np.zeros((len(blocks), num_k * block_k), bool)
    keys[:, position] = reach.reshape(len(blocks), num_video)
    mask[blocks] = np.logical_or.reduceat(keys, np.arange(0, num_k * block_k, block_k), axis=1)
  return _keep_text(mask, num_video, num_text, block_q, block_k)


def temporal_block_mask(grid, **kwargs) -> np.ndarray:
  """Each token attends to its own (h, w) position in every frame."""
  return window_block_mask(grid, (None, 0, 0), **kwargs)


def spatial_block_mask(grid, **kwargs) -> np.ndarray:
  """Each token attends to every position of its own frame."""
  return window_block_mask(grid, (0, None, None), **kwargs)


def spatial_temporal_heads(grid, num_heads: int, **kwargs) -> np.ndarray:
  """bool [H, nQ, nK]: even heads spatial, odd heads temporal (Sparse VideoGen's split)."""
  spatial, temporal = spatial_block_mask(grid, **kwargs), temporal_block_mask(grid, **kwargs)
  return np.stack([spatial if head % 2 == 0 else temporal for head in range(num_heads)])


def tile_order(grid: Sequence[int], tile: Sequence[int]) -> np.ndarray:
  """int [T*H*W]: raster indices in tile-major order, tiles of (tt, th, tw) in raster order.

  Gather video tokens with it (x[:, order]) so that each run of tt*th*tw tokens is one 3D tile;
  with blocks of that size a window of whole tiles is exact. np.argsort(order) undoes it.
  """
  grid, tile = tuple(grid), tuple(tile)
  if len(tile) != 3 or any(g % t for g, t in zip(grid, tile)):
    raise ValueError(f"tile {tile} must divide the grid {grid} along every axis")
  (t, h, w), (tt, th, tw) = grid, tile
  raster = np.arange(t * h * w).reshape(t // tt, tt, h // th, th, w // tw, tw)
  return raster.transpose(0, 2, 4, 1, 3, 5).reshape(-1)


def _positions(num_video: int, token_order) -> np.ndarray:
  """Inverse of token_order: the sequence position of each raster-ordered token."""
  if token_order is None:
    return np.arange(num_video)
  token_order = np.asarray(token_order)
  if sorted(token_order.tolist()) != list(range(num_video)):
    raise ValueError(f"token_order must be a permutation of range({num_video})")
  return np.argsort(token_order)


def _dilate(reach: np.ndarray, axis: int, half_width: int | None) -> np.ndarray:
  """Every cell within half_width of a True cell along `axis` (all of it for None)."""
  if half_width is None:
    return np.broadcast_to(reach.any(axis=axis, keepdims=True), reach.shape)
  if half_width == 0:
    return reach
  return ndimage.maximum_filter1d(reach, size=2 * half_width + 1, axis=axis, mode="constant",
                                  cval=False)


def _keep_text(mask: np.ndarray, num_video: int, num_text: int, block_q: int,
               block_k: int) -> np.ndarray:
  """Blocks holding any text token: their rows (text queries) and columns (text keys) all True."""
  if num_text:
    mask[num_video // block_q:] = True
    mask[:, num_video // block_k:] = True
  return mask
