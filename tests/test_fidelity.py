"""eval/fidelity.py: PSNR and SSIM of sampled videos against dense sampling's."""
import numpy as np
import pytest

from eval import sparse_fidelity
from eval.fidelity import psnr, ssim


def videos(seed=0, shape=(2, 3, 24, 24, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, shape)


def test_identical_videos_have_infinite_psnr_and_ssim_one():
  x = videos()
  assert psnr(x, x) == float("inf")
  assert ssim(x, x) == pytest.approx(1.0)


def test_psnr_follows_the_mean_squared_error_over_a_range_of_two():
  x = videos()
  # Every value off by 0.1: MSE 0.01, PSNR = 10 log10(4 / 0.01) = 26.02 dB.
  assert psnr(x + 0.1, x) == pytest.approx(10 * np.log10(4 / 0.01))


def test_ssim_of_flat_frames_is_the_luminance_term_and_falls_with_noise():
  a, b = np.full((1, 1, 16, 16, 1), 0.2), np.full((1, 1, 16, 16, 1), -0.3)
  c1 = (0.01 * 2) ** 2
  assert ssim(a, b) == pytest.approx((2 * 0.2 * -0.3 + c1) / (0.2**2 + 0.3**2 + c1))
  x = videos(1)
  rng = np.random.default_rng(2)
  scores = [ssim(x + s * rng.standard_normal(x.shape), x) for s in (0.05, 0.2, 0.8)]
  assert 1 > scores[0] > scores[1] > scores[2]
  assert ssim(x, videos(3)) == pytest.approx(ssim(videos(3), x))  # symmetric


def test_videos_of_other_shapes_are_refused():
  with pytest.raises(ValueError, match="compare videos"):
    psnr(videos(), videos()[:, :2])


def test_sparse_fidelity_is_perfect_at_sparsity_zero_and_drops_with_sparsity(tiny_run):
  # The tiny run: 16 video and 16 text tokens; blocks of 8 give 2 video blocks.
  settings = [dict(attention="adaspa", sparsity=s, block=8) for s in (0.0, 0.5)]
  results = sparse_fidelity.compare(str(tiny_run), settings, num_seeds=1, num_steps=3)
  exact, sparse = results["settings"]
  assert results["num_videos"] == 2 and exact["search_steps"] == [1]
  assert exact["psnr"] > 80 and exact["ssim"] > 0.9999 and exact["recall"] > 0.9999
  assert sparse["psnr"] < exact["psnr"] and sparse["recall"] < 1
  assert sparse["sparsity_measured"] == 0.5 and len(sparse["recall_per_layer"]) == 2
  assert "adaspa     0.50" in sparse_fidelity.table(results)
  with pytest.raises(ValueError, match="sample.sparse.sparsity=1.0"):
    sparse_fidelity.compare(str(tiny_run), [dict(attention="adaspa", sparsity=1.0)])
