"""data/moving_digits.py: captioned moving-digit videos made on the fly."""
import numpy as np
import pytest

from data import moving_digits
from data.moving_digits import DIRECTIONS, MovingDigits, _digit_images


def centre_of_mass(frame):
  weights = frame - frame.min()
  ys, xs = np.indices(frame.shape)
  return np.array([(weights * ys).sum(), (weights * xs).sum()]) / weights.sum()


def test_an_example_is_a_video_in_minus_one_to_one_with_a_caption_and_label():
  example = MovingDigits(num_examples=10, num_frames=8, size=32)[3]
  assert example["video"].shape == (8, 32, 32, 1)
  assert example["video"].dtype == np.float32
  assert example["video"].min() == -1.0 and 0.5 < example["video"].max() <= 1.0
  assert example["caption"].startswith(f"the digit {example['label']} moves ")
  assert example["label"].dtype == np.int32


def test_examples_are_deterministic_for_a_seed_and_differ_across_seeds_and_indices():
  a, b = MovingDigits(seed=1), MovingDigits(seed=1)
  np.testing.assert_array_equal(a[5]["video"], b[5]["video"])
  assert a[5]["caption"] == b[5]["caption"]
  assert not np.array_equal(a[5]["video"], a[6]["video"])
  assert not np.array_equal(a[5]["video"], MovingDigits(seed=2)[5]["video"])


@pytest.mark.parametrize("index", range(12))
def test_the_digit_moves_as_its_caption_says(index):
  source = MovingDigits(num_examples=100, num_frames=8, size=32, speed=2, seed=7)
  example = source[index]
  step, name = next((step, name) for step, name in DIRECTIONS
                    if example["caption"].endswith(f"moves {name}"))
  video = example["video"][..., 0]
  # The whole digit stays on the canvas, so its centre of mass moves exactly with it.
  moved = centre_of_mass(video[-1]) - centre_of_mass(video[0])
  np.testing.assert_allclose(moved, np.array(step) * 2 * 7, atol=1e-3)
  assert np.isclose(video[0].sum(), video[-1].sum(), rtol=1e-5)  # nothing left the canvas


def test_two_digit_videos_name_both_digits():
  source = MovingDigits(num_examples=50, max_digits=2, seed=0)
  captions = [source[i]["caption"] for i in range(50)]
  assert any(c.count("the digit") == 2 for c in captions)
  assert any(c.count("the digit") == 1 for c in captions)


def test_train_and_test_splits_use_different_digit_images():
  train, test = MovingDigits(split="train", speed=0), MovingDigits(split="test", speed=0)
  train_frames = {train[i]["video"][0].tobytes() for i in range(30)}
  assert not any(test[i]["video"][0].tobytes() in train_frames for i in range(30))


def test_a_canvas_too_small_for_the_motion_is_rejected_with_what_to_change():
  with pytest.raises(ValueError, match="canvas of at least 30px"):
    MovingDigits(num_frames=8, size=24, digit_scale=2, speed=2)


def test_styles_per_digit_keeps_that_many_images_of_every_digit():
  images, labels = _digit_images("train", 1, 3)
  assert images.shape == (30, 8, 8)
  assert np.bincount(labels).tolist() == [3] * 10
  all_images, all_labels = _digit_images("train", 1)
  assert len(all_images) > 1000
  np.testing.assert_array_equal(images[labels == 4][0], all_images[all_labels == 4][0])
  example = MovingDigits(styles_per_digit=3, seed=0)[0]
  assert example["caption"].startswith(f"the digit {example['label']} moves")


def test_parse_caption_inverts_caption_and_rejects_other_text():
  source = MovingDigits(num_examples=20, max_digits=2, size=48, seed=3)
  for index in range(20):
    text = source[index]["caption"]
    pairs = moving_digits.parse_caption(text)
    assert moving_digits.caption(*zip(*pairs)) == text
    assert pairs[0][0] == source[index]["label"]
  for bad in ("a cat runs", "the digit 12 moves up", "the digit 3 moves sideways", ""):
    with pytest.raises(ValueError, match="not a moving-digits caption"):
      moving_digits.parse_caption(bad)
