import jax
import numpy as np
import pytest

from dit.patchify import patch_grid, patch_positions, patchify, unpatchify


@pytest.mark.parametrize("shape,patch", [
    ((2, 4, 8, 12, 3), (1, 2, 2)),
    ((2, 4, 8, 12, 3), (2, 4, 3)),
    ((3, 1, 16, 16, 4), (1, 2, 2)),  # an image is a one-frame video
])
def test_unpatchify_inverts_patchify(key, shape, patch):
  video = jax.random.normal(key, shape)
  tokens = patchify(video, patch)
  grid = patch_grid(shape, patch)
  assert tokens.shape == (shape[0], np.prod(grid), np.prod(patch) * shape[-1])
  np.testing.assert_array_equal(unpatchify(tokens, grid, patch), video)


def test_each_token_holds_the_patch_at_its_position(key):
  patch = (2, 2, 3)
  video = jax.random.normal(key, (1, 4, 6, 9, 2))
  tokens = patchify(video, patch)
  positions = patch_positions(patch_grid(video.shape, patch))
  for token, (t, h, w) in zip(tokens[0], positions):
    expected = video[0, 2 * t:2 * t + 2, 2 * h:2 * h + 2, 3 * w:3 * w + 3]
    np.testing.assert_array_equal(token, expected.reshape(-1))


def test_positions_are_raster_order_over_the_grid():
  positions = patch_positions((2, 3, 4))
  assert positions.shape == (24, 3)
  np.testing.assert_array_equal(positions[:5], [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3],
                                                [0, 1, 0]])
  np.testing.assert_array_equal(positions[-1], [1, 2, 3])


@pytest.mark.parametrize("shape,message", [
    ((1, 3, 8, 8, 3), "T=3 is not divisible by the patch size 2"),
    ((1, 2, 7, 8, 3), "H=7 is not divisible by the patch size 2"),
    ((1, 2, 8, 9, 3), "W=9 is not divisible by the patch size 2"),
])
def test_indivisible_video_is_a_clear_error(shape, message):
  with pytest.raises(ValueError, match=message):
    patchify(np.zeros(shape), (2, 2, 2))


def test_a_four_dimensional_input_is_rejected():
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    patch_grid((1, 8, 8, 3), (1, 2, 2))
