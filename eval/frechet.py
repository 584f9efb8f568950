"""Distances between two sets of features: the Fréchet distance of their Gaussian fits (FID,
FVD) and the kernel distance (KID, an unbiased MMD^2 with a cubic polynomial kernel).

Both take features [N, D] (any float dtype) and work in float64. The Fréchet distance is
||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the same quantity pytorch-fid and the FVD
reference compute, with Tr((S1 S2)^(1/2)) taken as the sum of the square roots of S1 S2's
eigenvalues (real and non-negative for covariances) rather than through scipy.linalg.sqrtm,
whose result turns spuriously complex when few samples (fewer than dimensions) make the
product singular.
"""
from typing import NamedTuple

import numpy as np
import scipy.linalg


class Gaussian(NamedTuple):
  mean: np.ndarray        # [D] float64
  covariance: np.ndarray  # [D, D] float64


def gaussian_fit(features: np.ndarray) -> Gaussian:
  """The mean and (unbiased) covariance of features [N, D], N >= 2."""
  features = _checked(features, "features")
  return Gaussian(features.mean(axis=0), np.cov(features, rowvar=False))


def frechet_distance(a: Gaussian | np.ndarray, b: Gaussian | np.ndarray) -> float:
  """The Fréchet distance between two Gaussians (or the fits of two feature sets [N, D])."""
  a = a if isinstance(a, Gaussian) else gaussian_fit(a)
  b = b if isinstance(b, Gaussian) else gaussian_fit(b)
  if a.mean.shape != b.mean.shape:
    raise ValueError(f"features of different widths: {a.mean.shape[0]} and {b.mean.shape[0]}")
  mean_term = float(np.sum((a.mean - b.mean) ** 2))
  # tr(sqrt(A B)) is the sum of the square roots of A B's eigenvalues, which are real and
  # non-negative for covariances A, B: computed so, it needs no matrix square root, whose
  # result is ill-conditioned (spuriously complex) when few samples make A B singular.
  eigenvalues = scipy.linalg.eigvals(a.covariance @ b.covariance)
  if not np.isfinite(eigenvalues).all():
    raise ValueError("the covariances are not finite: are the features?")
  trace_root = float(np.sum(np.sqrt(np.clip(eigenvalues.real, 0.0, None))))
  trace_term = float(np.trace(a.covariance) + np.trace(b.covariance) - 2 * trace_root)
  return mean_term + trace_term


def kernel_distance(a: np.ndarray, b: np.ndarray, num_subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID: the unbiased MMD^2 with kernel k(x, y) = (x.y / D + 1)^3, averaged over random
  subsets of both sets (Binkowski et al. 2018); returns (mean, standard deviation).

  Subsets hold min(subset_size, len(a), len(b)) samples each.
  """
  a, b = _checked(a, "a"), _checked(b, "b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"features of different widths: {a.shape[1]} and {b.shape[1]}")
  size = min(subset_size, len(a), len(b))
  width = a.shape[1]
  kernel = lambda x, y: (x @ y.T / width + 1.0) ** 3
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(num_subsets):
    x = a[rng.choice(len(a), size, replace=False)]
    y = b[rng.choice(len(b), size, replace=False)]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (size * (size - 1))
    estimates.append(within - 2 * kxy.mean())
  return float(np.mean(estimates)), float(np.std(estimates))


def _checked(features, name: str) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"{name} must be [N, D] features of N >= 2 samples, got shape "
                     f"{features.shape}")
  if not np.isfinite(features).all():
    raise ValueError(f"{name} holds NaN or infinite values")
  return features
