"""kernels/video_patterns.py: static patterns for (T, H, W) video tokens, against a token-level
brute force on small random grids."""
import numpy as np
import pytest

from kernels import video_patterns as vp


def brute_force_block_mask(grid, window, block_q, block_k, num_text=0, token_order=None):
  """Token pairs within the window ([L, L]), reduced to blocks with any(): the definition."""
  t, h, w = np.unravel_index(np.arange(np.prod(grid)), grid)
  coords = np.stack([t, h, w], -1)
  if token_order is not None:
    coords = coords[token_order]  # sequence position -> its token's coordinates
  near = np.ones((len(coords), len(coords)), bool)
  for axis, half_width in enumerate(window):
    if half_width is not None:
      near &= np.abs(coords[:, None, axis] - coords[None, :, axis]) <= half_width
  length = len(coords) + num_text
  tokens = np.ones((length, length), bool)  # text rows and columns are always kept
  tokens[:len(coords), :len(coords)] = near
  nq, nk = -(-length // block_q), -(-length // block_k)
  padded = np.zeros((nq * block_q, nk * block_k), bool)
  padded[:length, :length] = tokens
  return padded.reshape(nq, block_q, nk, block_k).any(axis=(1, 3))


@pytest.mark.parametrize("seed", range(6))
def test_window_blocks_are_the_blocks_of_the_token_window(seed):
  rng = np.random.default_rng(seed)
  grid = tuple(int(g) for g in rng.integers(2, 7, size=3))
  window = tuple(None if rng.random() < 0.25 else int(rng.integers(0, 3)) for _ in range(3))
  block_q, block_k = (int(b) for b in rng.choice([4, 8, 16], size=2))
  num_text = int(rng.choice([0, 5, 16]))
  got = vp.window_block_mask(grid, window, block_q=block_q, block_k=block_k, num_text=num_text)
  np.testing.assert_array_equal(
      got, brute_force_block_mask(grid, window, block_q, block_k, num_text),
      err_msg=f"grid={grid} window={window} blocks={block_q, block_k} text={num_text}")


def test_temporal_and_spatial_heads_keep_their_axis():
  grid, block = (8, 16, 16), 64  # a block is a quarter of a frame
  temporal = vp.temporal_block_mask(grid, block_q=block, block_k=block)
  spatial = vp.spatial_block_mask(grid, block_q=block, block_k=block)
  # Temporal: quarter q of frame t sees quarter q of every frame; spatial: its own frame.
  np.testing.assert_array_equal(temporal, np.tile(np.eye(4, dtype=bool), (8, 8)))
  np.testing.assert_array_equal(spatial, np.kron(np.eye(8, dtype=bool), np.ones((4, 4), bool)))
  heads = vp.spatial_temporal_heads(grid, 4, block_q=block, block_k=block)
  np.testing.assert_array_equal(heads, np.stack([spatial, temporal] * 2))


def test_text_blocks_are_kept_as_queries_and_as_keys():
  mask = vp.temporal_block_mask((4, 8, 8), block_q=32, block_k=32, num_text=40)
  assert mask.shape == (10, 10)
  assert mask[8:].all() and mask[:, 8:].all()  # 256 video tokens: blocks 8, 9 hold the text
  assert not mask[:8, :8].all()


def test_tile_order_makes_each_block_one_tile_and_windows_exact():
  grid, tile = (4, 12, 12), (2, 4, 4)  # a (2, 3, 3) grid of tiles of 32 tokens
  order = vp.tile_order(grid, tile)
  np.testing.assert_array_equal(np.sort(order), np.arange(4 * 12 * 12))
  t, h, w = np.unravel_index(order[:32], grid)
  assert set(t) == {0, 1} and set(h) == {0, 1, 2, 3} and set(w) == {0, 1, 2, 3}
  window = (1, 3, 3)  # reaches into the neighbouring tiles, never two tiles away
  got = vp.window_block_mask(grid, window, block_q=32, block_k=32, token_order=order)
  np.testing.assert_array_equal(got, brute_force_block_mask(grid, window, 32, 32,
                                                            token_order=order))
  # Block i is tile i of the (2, 3, 3) tile grid: the pattern is "neighbouring tiles".
  tiles = np.stack(np.unravel_index(np.arange(18), (2, 3, 3)), -1)
  neighbours = (np.abs(tiles[:, None] - tiles[None]) <= 1).all(-1)
  assert not neighbours.all()
  np.testing.assert_array_equal(got, neighbours)
  with pytest.raises(ValueError, match="must divide the grid"):
    vp.tile_order(grid, (3, 4, 4))


def test_full_and_bad_arguments():
  assert vp.full_block_mask(300, block_q=128, block_k=64).shape == (3, 5)
  with pytest.raises(ValueError, match="half-widths must be >= 0"):
    vp.window_block_mask((2, 2, 2), (-1, 0, 0), block_q=4, block_k=4)
  with pytest.raises(ValueError, match="permutation"):
    vp.window_block_mask((2, 2, 2), (1, 1, 1), block_q=4, block_k=4, token_order=np.zeros(8))
