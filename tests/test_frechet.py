"""eval/frechet.py: the Fréchet distance of Gaussian fits (FID, FVD) and the kernel distance."""
import numpy as np
import pytest

from eval.frechet import Gaussian, frechet_distance, gaussian_fit, kernel_distance


@pytest.fixture
def rng(key):
  import jax  # noqa: PLC0415
  return np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))


def test_a_set_is_at_distance_zero_from_itself(rng):
  features = rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32))
  assert abs(frechet_distance(features, features)) < 1e-6 * np.trace(np.cov(features.T))


def test_the_distance_is_symmetric(rng):
  a = rng.normal(size=(200, 16))
  b = 0.5 * rng.normal(size=(150, 16)) @ rng.normal(size=(16, 16)) + 1.0
  assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_the_distance_of_diagonal_gaussians_has_its_closed_form(rng):
  # d = |m1 - m2|^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2 for diagonal covariances.
  m1, m2 = rng.normal(size=8), rng.normal(size=8)
  v1, v2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  got = frechet_distance(Gaussian(m1, np.diag(v1)), Gaussian(m2, np.diag(v2)))
  assert got == pytest.approx(expected, rel=1e-9)


def test_the_fit_is_the_sample_mean_and_unbiased_covariance(rng):
  features = rng.normal(size=(50, 4)).astype(np.float32)
  fit = gaussian_fit(features)
  assert fit.mean.dtype == np.float64
  # Against the float64 mean: a float32 one carries rounding of ~1e-7 of the values' size, far
  # from a relative 1e-6 where a mean is near zero.
  np.testing.assert_allclose(fit.mean, features.astype(np.float64).mean(0), rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(fit.covariance, np.cov(features.astype(np.float64).T), rtol=1e-12)


def test_the_distance_grows_with_a_shift_and_with_a_spread(rng):
  a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
  base = frechet_distance(a, b)
  assert base < frechet_distance(a, b + 0.5) < frechet_distance(a, b + 1.0)
  assert base < frechet_distance(a, 2 * b) < frechet_distance(a, 3 * b)


def test_fewer_samples_than_dimensions_still_give_a_finite_distance(rng):
  a, b = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 1
  assert np.isfinite(frechet_distance(a, b)) and frechet_distance(a, b) > 0


def test_kernel_distance_is_near_zero_for_one_distribution_and_grows_apart(rng):
  a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
  same, _ = kernel_distance(a, b, num_subsets=20, subset_size=100)
  apart, _ = kernel_distance(a, b + 1.0, num_subsets=20, subset_size=100)
  assert abs(same) < 0.1 * apart
  assert apart > 0


def test_bad_features_are_rejected_with_what_is_wrong():
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    frechet_distance(np.ones(5), np.ones(5))
  with pytest.raises(ValueError, match="NaN"):
    frechet_distance(np.full((3, 2), np.nan), np.ones((3, 2)))
  with pytest.raises(ValueError, match="widths"):
    frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4))
