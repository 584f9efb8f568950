"""PSNR and SSIM of reconstructions (training/reconstruction_metrics.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.reconstruction_metrics import psnr, ssim


def _pair():
  """Three smooth 24x20 frames in [-1, 1] and a noisy copy (a fixed draw: the SSIM below was
  computed on exactly these)."""
  rng = np.random.default_rng(7)
  h, w = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 20), indexing="ij")
  a = np.stack([np.sin(5 * h + f) * np.cos(4 * w - f) for f in range(3)])
  b = np.clip(a + 0.2 * rng.standard_normal(a.shape), -1, 1)
  return a[None, ..., None].astype(np.float32), b[None, ..., None].astype(np.float32)


def test_ssim_matches_scikit_image():
  """scikit-image 0.26.0's structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=2.0) per frame, averaged: 0.6482749167842653
  (computed once in a throwaway environment; scikit-image is not a dependency)."""
  a, b = _pair()
  assert float(ssim(jnp.asarray(a), jnp.asarray(b))[0]) == pytest.approx(0.6482749167842653,
                                                                          abs=2e-6)
  assert float(ssim(jnp.asarray(a), jnp.asarray(a))[0]) == pytest.approx(1.0, abs=1e-6)


def test_psnr_is_ten_log_of_range_squared_over_mse(key):
  a = jax.random.uniform(key, (2, 3, 8, 8, 1), minval=-1, maxval=1)
  b = a + 0.1 * jax.random.normal(jax.random.fold_in(key, 1), a.shape)
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=(1, 2, 3, 4))
  np.testing.assert_allclose(psnr(a, b), 10 * np.log10(4.0 / mse), rtol=1e-5)
  assert float(psnr(a, a)[0]) > 100  # identical: capped, not infinite
