"""data/pipeline.py: deterministic, resumable, per-process batches with encoded captions."""
import numpy as np
import pytest

from data.moving_digits import MovingDigits
from data.pipeline import make_dataset, make_iterator, model_inputs

SOURCE = MovingDigits(num_examples=40, num_frames=2, size=16, digit_scale=1, speed=1)


def fake_encoder(captions):
  """Caption length as the one 'feature': enough to see the encoder ran on the right captions."""
  lengths = np.array([[len(c)] for c in captions], np.float32)
  return {"text": lengths[:, :, None], "text_mask": np.ones((len(captions), 1), bool)}


def batches(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["caption"], b["caption"])


def test_batches_are_deterministic_for_a_seed():
  def run(seed):
    return batches(make_iterator(make_dataset(SOURCE, global_batch_size=4, seed=seed)), 5)
  assert_same_batches(run(3), run(3))
  assert not np.array_equal(run(3)[0]["video"], run(4)[0]["video"])


def test_an_iterator_resumed_mid_epoch_gives_the_same_next_batches():
  dataset = make_dataset(SOURCE, global_batch_size=4, seed=0)
  uninterrupted = batches(make_iterator(dataset), 15)  # 10 batches per epoch: crosses one
  first = make_iterator(dataset)
  batches(first, 7)
  state = first.get_state()
  resumed = make_iterator(dataset)
  resumed.set_state(state)
  assert_same_batches(batches(resumed, 8), uninterrupted[7:])


def test_each_epoch_visits_every_example_once_in_a_new_order():
  iterator = make_iterator(make_dataset(SOURCE, global_batch_size=4, seed=0))
  epochs = [np.concatenate([b["caption"] for b in batches(iterator, 10)]) for _ in range(2)]
  expected = sorted(SOURCE[i]["caption"] for i in range(len(SOURCE)))
  assert sorted(epochs[0]) == expected and sorted(epochs[1]) == expected
  assert list(epochs[0]) != list(epochs[1])


def test_processes_read_disjoint_halves_of_the_data_with_half_the_batch():
  seen = []
  for index in range(2):
    dataset = make_dataset(SOURCE, global_batch_size=4, seed=0, process_index=index,
                           process_count=2)
    epoch = batches(make_iterator(dataset), 10)
    assert epoch[0]["video"].shape[0] == 2
    seen.append({b.tobytes() for batch in epoch for b in batch["video"]})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == len(SOURCE)


def test_captions_are_encoded_per_batch_and_model_inputs_drop_them():
  batch = next(make_iterator(make_dataset(SOURCE, global_batch_size=4, seed=0,
                                          text_encoder=fake_encoder)))
  np.testing.assert_array_equal(batch["text"][:, 0, 0], [len(c) for c in batch["caption"]])
  assert sorted(model_inputs(batch)) == ["label", "text", "text_mask", "video"]


def test_a_batch_larger_than_the_data_or_not_divisible_by_processes_is_rejected():
  with pytest.raises(ValueError, match="fewer than one batch"):
    make_dataset(SOURCE, global_batch_size=64, seed=0)
  with pytest.raises(ValueError, match="divisible by the number of processes"):
    make_dataset(SOURCE, global_batch_size=5, seed=0, process_index=0, process_count=2)
