"""The FID InceptionV3 and its weight loader.

No published weights are downloaded: each test writes a randomly initialised checkpoint in
torchvision's layout (random BatchNorm statistics and scales too, so a mix-up of any two
tensors changes the numbers) and reads it back. The .pth files are written without torch by
tests/torch_files.py.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eval import inception_weights
from eval.inception import InceptionV3, avg_pool_excluding_padding, fid_features
from eval.inception_weights import (inception_state_dict, inception_weight_shapes,
                                    load_inception, save_inception_weights)
from torch_files import write_state_dict
from weights.torch_checkpoint import load_torch_state_dict

SMALL = 75  # the smallest input the network takes: fast forward passes


def _random_state_dict(key: jax.Array, num_classes: int = 1008) -> dict[str, np.ndarray]:
  """Torch-layout weights: He-scaled convs and fc, BatchNorm scale U(0.5, 1.5), bias and
  running_mean N(0, 0.1^2), running_var U(0.5, 2); activations stay O(1) through 94 layers."""
  abstract = nnx.eval_shape(lambda: InceptionV3(num_classes=num_classes, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  state = {}
  for name, shape in inception_weight_shapes(abstract).items():
    if name.endswith("conv.weight") or name == "fc.weight":
      value = rng.standard_normal(shape, np.float32) * np.sqrt(2 / np.prod(shape[1:]))
    elif name.endswith("bn.weight"):
      value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    else:  # bias, running_mean
      value = rng.normal(0, 0.1, shape)
    state[name] = value.astype(np.float32)
  return state


def _model(state: dict[str, np.ndarray]) -> InceptionV3:
  num_classes = state["fc.weight"].shape[0]
  model = nnx.eval_shape(lambda: InceptionV3(num_classes=num_classes, rngs=nnx.Rngs(0)))
  inception_weights.set_inception_state(model, state)
  return model


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
  """One random FID checkpoint (1008 classes) for the module: 24M values take seconds to draw.
  Fresh each run from its own seed, replayed like the key fixture's by DIT_TEST_SEED."""
  seed = int(os.environ.get("DIT_TEST_SEED", time.time_ns() % (2**31)))
  print(f"weights seed: {seed} (replay with DIT_TEST_SEED={seed})")
  return _random_state_dict(jax.random.key(seed))


@pytest.fixture(scope="module")
def model(weights) -> InceptionV3:
  return _model(weights)


def _frames(key: jax.Array, n: int, size: int = 32, channels: int = 3) -> np.ndarray:
  return np.asarray(jax.random.uniform(key, (n, size, size, channels), minval=-1, maxval=1))


def _assert_state_equal(got: dict, want: dict) -> None:
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# The loader.

@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_loader_round_trips_its_checkpoint(suffix, weights, model, key, tmp_path):
  path = str(tmp_path / f"inception{suffix}")
  save_inception_weights(model, path)
  loaded = load_inception(path)
  _assert_state_equal(inception_state_dict(loaded), weights)
  frames = _frames(key, 3)
  want = fid_features(model, frames, image_size=SMALL, progress=False)
  np.testing.assert_array_equal(fid_features(loaded, frames, image_size=SMALL, progress=False),
                                want)


def test_loader_round_trips_a_torch_zip_checkpoint(weights, key, tmp_path):
  state = {**weights,  # with torchvision's head
           "fc.weight": np.asarray(jax.random.normal(key, (1000, 2048)), np.float32) * 0.03,
           "fc.bias": np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (1000,)),
                                 np.float32)}
  extras = {"AuxLogits.fc.bias": np.ones(1000, np.float32),
            "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(7, np.int64)}
  path = tmp_path / "inception.pth"
  write_state_dict(path, {**state, **extras})
  read = load_torch_state_dict(str(path))
  _assert_state_equal(read, {**state, **extras})
  loaded = load_inception(str(path))  # skips torchvision's extras
  assert loaded.num_classes == 1000
  _assert_state_equal(inception_state_dict(loaded), state)


def test_missing_unexpected_and_misshaped_keys_are_listed(weights, tmp_path):
  state = dict(weights)
  del state["Mixed_6b.branch7x7_2.bn.running_var"]
  state["Mixed_7c.branch3x3_2a.conv.weight"] = state["Mixed_7c.branch3x3_2a.conv.weight"][..., 0]
  state["head.weight"] = np.ones(3, np.float32)
  path = str(tmp_path / "broken.npz")
  np.savez(path, **state)
  with pytest.raises(ValueError) as error:
    load_inception(path)
  message = str(error.value)
  for part in ("missing (1): Mixed_6b.branch7x7_2.bn.running_var", "unexpected (1): head.weight",
               "wrong shape (1): Mixed_7c.branch3x3_2a.conv.weight (384, 384, 1) "
               "(want (384, 384, 1, 3))", "eval.inception_weights"):
    assert part in message


@pytest.mark.parametrize("path", ["", "no/such/file.pth", "weights.ckpt"])
def test_a_bad_path_names_the_config_field(path, tmp_path):
  if path == "weights.ckpt":
    path = str(tmp_path / path)
    open(path, "wb").close()
  with pytest.raises(FileNotFoundError, match="eval.inception_weights.*empty to skip FID"):
    load_inception(path)


# The network.

def test_torch_layout_means_what_torch_computes(weights, model, key):
  """A conv, its BatchNorm and the fc, each against numpy on the torch-layout tensors."""
  state = weights
  x = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (1, 9, 11, 3), minval=-1))
  got = np.asarray(model.Conv2d_1a_3x3(jnp.asarray(x)))  # 3x3, stride 2, no padding
  w = state["Conv2d_1a_3x3.conv.weight"]  # [out, in, kh, kw]
  conv = np.zeros((1, 4, 5, 32), np.float64)
  for i in range(4):
    for j in range(5):
      conv[0, i, j] = np.einsum("oikl,kli->o", w, x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3])
  bn = {k: state[f"Conv2d_1a_3x3.bn.{k}"] for k in ("weight", "bias", "running_mean",
                                                    "running_var")}
  want = np.maximum(0, (conv - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3)
                    * bn["weight"] + bn["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  graphdef, params = nnx.split(model)
  images = jax.random.uniform(jax.random.fold_in(key, 2), (1, SMALL, SMALL, 3), minval=-1)
  out = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, images)
  pool = np.asarray(out["pool"], np.float64)
  np.testing.assert_allclose(out["logits"], pool @ state["fc.weight"].T + state["fc.bias"],
                             rtol=1e-4, atol=1e-4)


def test_average_pools_leave_padding_out(key):
  x = jax.random.normal(key, (1, 4, 5, 2))
  got = avg_pool_excluding_padding(x)
  np.testing.assert_allclose(got[0, 0, 0], x[0, :2, :2].mean(axis=(0, 1)),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got[0, 0, 2], x[0, :2, 1:4].mean(axis=(0, 1)),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got[0, 2, 2], x[0, 1:4, 1:4].mean(axis=(0, 1)),
                             rtol=1e-6, atol=1e-6)


def test_fid_features_are_finite_2048_vectors_at_299(model, key):
  frames = _frames(key, 4, size=40)
  features = fid_features(model, frames[:3], batch_size=2, progress=False)  # the last padded
  assert features.shape == (3, 2048) and features.dtype == np.float32
  assert np.isfinite(features).all() and features.std() > 0
  beside_another = fid_features(model, frames[2:], batch_size=2, progress=False)
  np.testing.assert_allclose(beside_another[0], features[2], rtol=1e-5, atol=1e-6)


def test_grayscale_frames_are_three_equal_channels(model, key):
  gray = _frames(key, 3, channels=1)
  np.testing.assert_array_equal(
      fid_features(model, gray, image_size=SMALL, progress=False),
      fid_features(model, np.repeat(gray, 3, axis=-1), image_size=SMALL, progress=False))


def test_wrong_inputs_say_what_is_expected(model, key):
  frames = _frames(key, 2)
  for bad, match in ((frames[None], r"\[N, H, W, C\]"), (frames[..., :2], "C 1 or 3"),
                     ((frames * 127.5 + 127.5).astype(np.uint8), "float frames"),
                     (frames * 127.5 + 127.5, r"\[0, 255\]"),
                     (np.where(frames > 0.9, np.nan, frames), "NaN")):
    with pytest.raises(ValueError, match=match):
      fid_features(model, bad, progress=False)
  with pytest.raises(ValueError, match="H, W >= 75"):
    model(jnp.asarray(frames))  # 32 x 32
