"""The grain input pipeline: source -> this process's shard -> shuffle per epoch -> batch ->
captions encoded for the text stream.

It is deterministic for a seed, and its iterator's state (a position) is saved with every
checkpoint, so a resumed run reads exactly the batches the uninterrupted run would have read.
"""
from typing import Callable

import grain
import jax
import numpy as np

# What the model's train step consumes; anything else in a batch (captions) stays on the host.
MODEL_INPUTS = ("video", "text", "text_mask", "label", "noise",  # reflow pairs' noise
                "patches", "segment_ids", "positions")  # packed rows (data/packing.py)


class EncodeCaptions(grain.transforms.Map):
  """Adds the text encoder's output for a batch's captions [B] (or a packed batch's [R, S]):
  text and text_mask [B, ...] (or [R, S, ...]; an empty slot's text is all masked)."""

  def __init__(self, encoder: Callable[[list[str]], dict]):
    self.encoder = encoder

  def map(self, batch: dict) -> dict:
    if "rows" in batch:  # data/planned_batches.py: one packed row per device group
      return dict(batch, rows=[None if row is None else self.map(row) for row in batch["rows"]])
    captions = np.asarray(batch["caption"])
    encoded = self.encoder([str(c) for c in captions.ravel()])
    encoded = {k: np.asarray(v).reshape(*captions.shape, *np.shape(v)[1:])
               for k, v in encoded.items()}
    if "slot_shapes" in batch:
      encoded["text_mask"] = encoded["text_mask"] & (batch["slot_shapes"][..., :1] > 0)
    return dict(batch, **encoded)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"train.batch_size={global_batch_size} must be divisible by the number of "
                     f"processes ({process_count})")
  return global_batch_size // process_count


def make_dataset(source, *, global_batch_size: int, seed: int, text_encoder=None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
  """An endless dataset of this process's batches.

  Each process reads a disjoint slice of the source (every process_count-th example) and
  batches global_batch_size / process_count of them. The order is shuffled anew every epoch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = local_batch_size(global_batch_size, process_count)
  dataset = grain.MapDataset.source(source)[process_index::process_count]
  if len(dataset) < batch_size:
    raise ValueError(f"the data source has {len(dataset)} examples for this process, fewer than "
                     f"one batch of {batch_size}: lower train.batch_size or add data")
  dataset = dataset.shuffle(seed=seed).repeat().batch(batch_size, drop_remainder=True)
  if text_encoder is not None:
    dataset = dataset.map(EncodeCaptions(text_encoder))
  return dataset


def make_shaped_dataset(batches, text_encoder=None) -> grain.MapDataset:
  """An endless dataset of data.batching's BucketBatches or PackedBatches (batch k is this
  process's share of global batch k), captions encoded."""
  dataset = grain.MapDataset.source(batches)
  if text_encoder is not None:
    dataset = dataset.map(EncodeCaptions(text_encoder))
  return dataset


def make_iterator(dataset: grain.MapDataset, num_threads: int = 2,
                  prefetch: int = 4) -> grain.DatasetIterator:
  """An iterator with get_state()/set_state(), reading ahead on `num_threads` threads."""
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(options))


def model_inputs(batch: dict) -> dict:
  """The arrays of a batch the train step takes, as numpy (captions dropped)."""
  return {k: np.asarray(v) for k, v in batch.items() if k in MODEL_INPUTS}
