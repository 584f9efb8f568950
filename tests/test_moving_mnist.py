"""Moving MNIST: shapes, determinism, bouncing inside the canvas, captions."""
import pickle
import re

import numpy as np
import pytest

from data.moving_mnist import MovingMNIST, bounce_trajectory, caption


def ink(video: np.ndarray) -> np.ndarray:
  """[T, H, W, 1] in [-1, 1] -> [T, H, W] in [0, 1]."""
  return (video[..., 0] + 1.0) / 2.0


def test_example_has_the_documented_shapes_range_and_dtypes():
  example = MovingMNIST(num_frames=10, seed=0)[3]
  assert example["video"].shape == (10, 64, 64, 1)
  assert example["video"].dtype == np.float32
  assert example["video"].min() >= -1.0 and example["video"].max() <= 1.0
  assert example["video"].min() == -1.0 and example["video"].max() > 0.5  # background and ink
  assert isinstance(example["caption"], str)
  assert example["label"].dtype == np.int32 and example["label"].shape == ()


def test_same_seed_and_index_give_the_same_example():
  a, b = MovingMNIST(seed=5)[17], MovingMNIST(seed=5)[17]
  np.testing.assert_array_equal(a["video"], b["video"])
  assert a["caption"] == b["caption"] and a["label"] == b["label"]


def test_different_indices_and_seeds_give_different_videos():
  source = MovingMNIST(seed=0)
  assert not np.array_equal(source[0]["video"], source[1]["video"])
  assert not np.array_equal(source[0]["video"], MovingMNIST(seed=1)[0]["video"])


def test_trajectory_stays_inside_the_canvas_and_reflects_off_both_edges():
  travel = 64 - 28
  for i in range(5):
    corners = bounce_trajectory(np.random.default_rng(i), num_frames=300, travel=travel)
    assert corners.min() >= 0 and corners.max() <= travel
    # Over 300 frames of 3.6 px a digit crosses the canvas many times: it reaches both edges
    # on the axis it moves most along.
    axis = np.argmax(np.abs(np.diff(corners, axis=0)).sum(0))
    assert corners[:, axis].min() <= 3 and corners[:, axis].max() >= travel - 3


def test_a_single_digit_is_never_cut_by_the_canvas_edge():
  source = MovingMNIST(num_frames=20, num_digits=1, seed=2)
  for index in range(5):
    per_frame_ink = ink(source[index]["video"]).sum(axis=(1, 2))  # [T]
    np.testing.assert_allclose(per_frame_ink, per_frame_ink[0], rtol=1e-5)


def test_digits_move_between_frames():
  source = MovingMNIST(num_frames=20, num_digits=1, seed=3)
  ys, xs = np.mgrid[:64, :64]
  for index in range(5):
    video = ink(source[index]["video"])
    mass = video.sum(axis=(1, 2))
    center = np.stack([(video * ys).sum(axis=(1, 2)), (video * xs).sum(axis=(1, 2))], -1)
    center /= mass[:, None]  # [T, 2]
    step = np.linalg.norm(np.diff(center, axis=0), axis=-1)  # [T-1]
    assert np.median(step) > 2.0  # 3.6 px per frame, less at a bounce
    assert (step > 0).mean() >= 0.9


def test_caption_names_the_digits_and_the_label_is_the_first():
  source = MovingMNIST(num_digits=2, seed=0)
  for index in range(10):
    example = source[index]
    match = re.fullmatch(r"the digits (\d) and (\d) bounce", example["caption"])
    assert match, example["caption"]
    assert int(match.group(1)) == example["label"]


def test_caption_template_for_one_and_three_digits():
  assert caption([3]) == "the digit 3 bounces"
  assert caption([3, 7]) == "the digits 3 and 7 bounce"
  assert caption([3, 7, 1]) == "the digits 3, 7 and 1 bounce"
  example = MovingMNIST(num_digits=1, seed=0)[0]
  assert example["caption"] == f"the digit {example['label']} bounces"


def test_other_canvas_and_digit_sizes():
  example = MovingMNIST(num_frames=4, size=32, digit_size=14, num_digits=3)[0]
  assert example["video"].shape == (4, 32, 32, 1)
  assert example["video"].max() > 0.5


def test_source_pickles_without_the_digit_images():
  source = MovingMNIST(seed=4)
  source[0]  # loads the digits into the module cache
  restored = pickle.loads(pickle.dumps(source))
  assert len(pickle.dumps(source)) < 1000
  np.testing.assert_array_equal(restored[9]["video"], source[9]["video"])


def test_index_out_of_range_raises_index_error():
  with pytest.raises(IndexError):
    MovingMNIST(num_examples=3)[3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(size=28), "larger than itself"),
    (dict(num_digits=0), "num_digits"),
    (dict(num_frames=0), "num_frames"),
    (dict(num_examples=0), "num_examples"),
])
def test_bad_arguments_raise_value_error_saying_what_to_fix(kwargs, message):
  with pytest.raises(ValueError, match=message):
    MovingMNIST(**kwargs)
