"""Batches of varied shapes: buckets and packed rows, deterministic, split and resumable."""
import collections

import numpy as np
import pytest

from data.batching import BucketBatches, PackedBatches
from data.mixture import Mixture
from data.moving_digits import STILL, parse_caption
from data.pipeline import EncodeCaptions, make_iterator, make_shaped_dataset

PATCH = (1, 4, 4)


def digits(num_examples, num_frames, size, **kwargs):
  return dict(name="moving_digits", kwargs=dict(num_examples=num_examples,
                                                num_frames=num_frames, size=size,
                                                digit_scale=1, speed=1, **kwargs))


def mixture(seed=0):
  """Still images (16 tokens), short square videos (64) and long wide ones (192)."""
  return Mixture([digits(60, 1, 16), digits(40, 4, 16), digits(20, 8, (16, 24))], seed=seed)


def test_a_mixture_keeps_each_parts_shape_and_knows_it_without_building():
  source = mixture()
  assert len(source) == 120
  for index, shape in ((0, (1, 16, 16)), (59, (1, 16, 16)), (60, (4, 16, 16)),
                       (119, (8, 16, 24))):
    assert source.example_shape(index) == shape
    assert source[index]["video"].shape == (*shape, 1)
  assert parse_caption(source[0]["caption"])[0][1] == STILL  # images name no motion
  assert parse_caption(source[60]["caption"])[0][1] != STILL
  with pytest.raises(ValueError, match="part 0 must be dict"):
    Mixture([dict(kwargs={})])


def test_buckets_hold_one_shape_each_sized_by_the_token_budget():
  batches = BucketBatches(mixture(), patch_size=PATCH, tokens_per_device=192, ranks=2, seed=0)
  assert batches.buckets == [(1, 16, 16), (4, 16, 16), (8, 16, 24)]
  assert batches.batch_sizes == [24, 6, 2]  # 192 // tokens per device, times 2 devices
  epoch = batches.plan_epoch(0)
  counts = collections.Counter(bucket for bucket, _ in epoch)
  assert counts == {0: 2, 1: 6, 2: 10}  # every bucket cut whole: 48/60, 36/40, 20/20
  seen = np.concatenate([indices for _, indices in epoch])
  assert len(set(seen.tolist())) == len(seen)  # no example twice in an epoch
  for k in range(len(epoch)):
    batch = batches[k]
    shapes = {v.shape for v in batch["video"]}
    assert len(shapes) == 1 and batch["video"].shape[0] == batches.batch_sizes[epoch[k][0]]
  assert [b for b, _ in batches.plan_epoch(1)] != [b for b, _ in epoch]  # reshuffled


def assert_resumes_to_the_same_batches(make_batches, skip: int, count: int, keys) -> None:
  """An iterator restored from the state after `skip` batches reads the next `count` ones
  (their `keys`) as the uninterrupted iterator does."""
  make = lambda: make_iterator(make_shaped_dataset(make_batches()))
  iterator = make()
  for _ in range(skip):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(count)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in keys:
      np.testing.assert_array_equal(got[key], want[key])


def test_a_bucketed_pipeline_resumes_mid_epoch_to_the_same_next_batch():
  # 23 batches: past the first epoch's 18.
  assert_resumes_to_the_same_batches(
      lambda: BucketBatches(mixture(), patch_size=PATCH, tokens_per_device=192, ranks=2,
                            seed=3), skip=23, count=3, keys=("video", "caption"))


def packed(process_index=0, process_count=1, balance=True, seed=0):
  return PackedBatches(mixture(), patch_size=PATCH, num_rows=4, row_tokens=192, max_slots=8,
                       ranks=4, balance=balance, seed=seed, process_index=process_index,
                       process_count=process_count)


def test_packed_batches_fill_rows_with_whole_examples_once_an_epoch():
  batches = packed()
  epoch = batches.plan_epoch(0)
  seen = [i for rows, _ in epoch for row in rows for i in row]
  assert len(seen) == len(set(seen)) and len(seen) > 100  # most of the 120, none twice
  for rows, _ in epoch:
    assert all(0 < len(row) <= 8 for row in rows)
    assert all(batches.tokens[row].sum() <= 192 for row in rows)
  batch = batches[0]
  assert batch["patches"].shape == (4, 192, 16) and batch["caption"].shape == (4, 8)
  assert batch["rank_imbalance"] >= 1.0
  assert packed(seed=1).plan_epoch(0) != epoch


def test_processes_read_disjoint_rows_that_make_up_the_global_batch():
  whole = packed()[5]
  halves = [packed(process_index=p, process_count=2)[5] for p in range(2)]
  for key in ("patches", "segment_ids", "positions", "slot_shapes", "label"):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_captions_of_packed_rows_are_encoded_per_slot_and_empty_slots_masked():
  batch = packed()[0]
  encode = EncodeCaptions(lambda captions: {
      "text": np.array([[len(c)] * 3 for c in captions], np.int32),
      "text_mask": np.ones((len(captions), 3), bool)})
  out = encode.map(batch)
  assert out["text"].shape == (4, 8, 3)
  used = batch["slot_shapes"][..., 0] > 0
  assert out["text_mask"][used].all() and not out["text_mask"][~used].any()
  assert out["text"][0, 0, 0] == len(batch["caption"][0, 0])


def test_a_packed_pipeline_resumes_mid_epoch_to_the_same_next_batch():
  assert_resumes_to_the_same_batches(lambda: packed(seed=5), skip=7, count=2,
                                     keys=("patches", "segment_ids", "positions", "slot_shapes"))
