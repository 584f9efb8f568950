"""How close a faster sampler stays to dense sampling from the same noise: PSNR and SSIM of the
videos, and the recall of attention mass that a sparse pattern keeps.

Videos are float [N, T, H, W, C] in [-1, 1] (what diffusion.samplers gives), compared frame by frame.
SSIM is Wang et al. (2004): Gaussian window sigma 1.5 (11 taps), K1 = 0.01, K2 = 0.03, per
frame and channel, averaged; computed in float64 with scipy.
"""
import numpy as np
from scipy import ndimage

DATA_RANGE = 2.0  # [-1, 1]


def psnr(videos: np.ndarray, reference: np.ndarray, data_range: float = DATA_RANGE) -> float:
  """Peak signal-to-noise ratio in dB over all the videos (inf when they are equal)."""
  videos, reference = _checked(videos, reference)
  mse = np.mean((videos - reference) ** 2)
  return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(videos: np.ndarray, reference: np.ndarray, data_range: float = DATA_RANGE,
         sigma: float = 1.5) -> float:
  """Mean structural similarity over every frame and channel (1 when they are equal)."""
  videos, reference = _checked(videos, reference)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  # Blur over H and W only: [N, T, H, W, C] frames are independent images.
  blur = lambda x: ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma, 0), truncate=3.5)
  mu_x, mu_y = blur(videos), blur(reference)
  var_x = blur(videos * videos) - mu_x**2
  var_y = blur(reference * reference) - mu_y**2
  cov = blur(videos * reference) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
  return float(ssim_map.mean())


def _checked(videos, reference):
  videos, reference = np.asarray(videos, np.float64), np.asarray(reference, np.float64)
  if videos.shape != reference.shape or videos.ndim != 5:
    raise ValueError(f"compare videos [N, T, H, W, C] of one shape; got {videos.shape} and "
                     f"{reference.shape}")
  return videos, reference
