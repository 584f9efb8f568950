"""Batches of examples of varied shapes, as config.data.batching picks them:

  "buckets"  examples grouped by shape (T, H, W); each bucket's batches hold as many examples
             as fit data.tokens_per_device video tokens per data-parallel device; an epoch is
             every bucket cut into batches, in a shuffled order, so buckets are drawn in
             proportion to their data. A step compiles once per bucket shape.
  "packing"  examples packed into train.batch_size rows of data.row_tokens video tokens, at
             most data.max_slots a row (data/packing.py): one compiled step for every mix.
             With data.balance, examples go to data-parallel ranks so that each rank's
             estimated cost is about equal (Seaweed's runtime balance); each batch reports its
             rank imbalance (slowest over mean estimated cost).

Both plan an epoch from the examples' shapes alone (no video is read to plan), in an order
shuffled per epoch from the seed, so batch k is the same on every run and every process for
the same number of data-parallel devices (the plans place examples on them: resume on as many);
a grain MapDataset over k gives the iterator position that checkpoints save (resumable), and
each process reads only its own share of every global batch (its rows or examples). Planning
costs ~50 us per example with balance, once per epoch; the plans of past epochs are kept.
"""
import threading
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from data.mixture import example_shape
from data.packing import assign_rows, example_cost, imbalance, pack_rows, rank_costs
from dit.patchify import num_video_tokens

BATCHINGS = ("fixed", "buckets", "packing")
ENDLESS = 2**40  # the length of an endless batch sequence: epochs repeat with new shuffles


class EpochPlans:
  """Global batch k of an endless sequence of epochs, each planned (once, when first asked
  for) by plan_epoch(epoch) -> list of batch plans. Thread-safe (grain reads on threads)."""

  def __init__(self, plan_epoch: Callable[[int], list]):
    self.plan_epoch = plan_epoch
    self._plans: list[list] = []
    self._starts = [0]  # first batch index of each planned epoch, and one past the last
    self._lock = threading.Lock()

  def __getitem__(self, k: int):
    with self._lock:
      while k >= self._starts[-1]:
        plan = self.plan_epoch(len(self._plans))
        if not plan:
          raise ValueError("an epoch of the data holds no batch: add data, or lower "
                           "data.tokens_per_device (buckets) or train.batch_size (packing: "
                           "every data-parallel device needs an example)")
        self._plans.append(plan)
        self._starts.append(self._starts[-1] + len(plan))
      epoch = int(np.searchsorted(self._starts, k, side="right")) - 1
      return self._plans[epoch][k - self._starts[epoch]]


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def example_shapes(source) -> np.ndarray:
  """int64 [N, 3]: every example's (T, H, W), without building them when the source knows."""
  fixed = getattr(source, "video_shape", None)
  if fixed is not None and not hasattr(source, "example_shape"):
    return np.tile(np.asarray(fixed, np.int64), (len(source), 1))
  return np.array([example_shape(source, i) for i in range(len(source))], np.int64)


class BucketBatches:
  """Batches of one shape each: {"video" [b, T, H, W, C], "caption" [b], "label" [b]} where
  b = this process's share of the bucket's global batch."""

  def __init__(self, source, *, patch_size: Sequence[int], tokens_per_device: int, ranks: int,
               seed: int, process_index: int = 0, process_count: int = 1):
    self.source, self.seed = source, seed
    self.process_index, self.process_count = process_index, process_count
    shapes = example_shapes(source)
    self.buckets = sorted({tuple(s) for s in shapes.tolist()})
    self.bucket_of = np.array([self.buckets.index(tuple(s)) for s in shapes.tolist()])
    self.batch_sizes = []
    for shape in self.buckets:
      tokens = num_video_tokens(shape, patch_size)
      per_device = tokens_per_device // tokens
      if per_device < 1:
        raise ValueError(f"an example of shape {shape} has {tokens} video tokens, more than "
                         f"data.tokens_per_device={tokens_per_device}: raise the budget")
      self.batch_sizes.append(per_device * ranks)
    counts = np.bincount(self.bucket_of, minlength=len(self.buckets))
    for shape, size, count in zip(self.buckets, self.batch_sizes, counts):
      if count < size:
        logging.warning("the %d examples of shape %s are fewer than one batch of %d: they never "
                        "train; lower data.tokens_per_device", count, shape, size)
    for size in self.batch_sizes:
      if size % process_count:
        raise ValueError(f"a bucket's global batch of {size} does not split over "
                         f"{process_count} processes")
    self.plans = EpochPlans(self.plan_epoch)

  def plan_epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """(bucket, example indices) of every batch of the epoch, in the epoch's order."""
    order = epoch_order(len(self.source), self.seed, epoch)
    batches = []
    for b, size in enumerate(self.batch_sizes):
      members = order[self.bucket_of[order] == b]
      batches += [(b, members[i:i + size]) for i in range(0, len(members) - size + 1, size)]
    shuffle = np.random.default_rng([self.seed, epoch, 0xB0C4]).permutation(len(batches))
    return [batches[i] for i in shuffle]

  def __len__(self) -> int:
    return ENDLESS

  def __getitem__(self, k: int) -> dict:
    _, indices = self.plans[k]
    share = len(indices) // self.process_count
    mine = indices[self.process_index * share:(self.process_index + 1) * share]
    items = [self.source[int(i)] for i in mine]
    batch = {"video": np.stack([np.asarray(e["video"], np.float32) for e in items])}
    for key in ("caption", "label"):
      if key in items[0]:
        batch[key] = np.array([e[key] for e in items])
    return batch


class PackedBatches:
  """Packed batches (data/packing.py) of this process's rows of each global batch of
  `num_rows` rows, with "rank_imbalance" (the global batch's estimated slowest-over-mean rank
  cost)."""

  def __init__(self, source, *, patch_size: Sequence[int], num_rows: int, row_tokens: int,
               max_slots: int, ranks: int, balance: bool, seed: int, text_tokens: int = 0,
               hidden_size: int = 64, process_index: int = 0, process_count: int = 1):
    if num_rows % ranks or num_rows % process_count:
      raise ValueError(f"train.batch_size={num_rows} packed rows must split over the "
                       f"{ranks} data-parallel devices and {process_count} processes")
    self.source, self.seed = source, seed
    self.patch_size, self.num_rows = tuple(patch_size), num_rows
    self.row_tokens, self.max_slots = row_tokens, max_slots
    self.ranks, self.balance = ranks, balance
    self.process_index, self.process_count = process_index, process_count
    shapes = example_shapes(source)
    self.tokens = np.array([num_video_tokens(s, patch_size) for s in shapes.tolist()])
    too_long = np.flatnonzero(self.tokens > row_tokens)
    if too_long.size:
      i = int(too_long[0])
      raise ValueError(f"example {i} of shape {tuple(shapes[i].tolist())} has {self.tokens[i]} video "
                       f"tokens, more than a row's data.row_tokens={row_tokens}: raise it")
    self.costs = example_cost(self.tokens, text_tokens, hidden_size)
    self.plans = EpochPlans(self.plan_epoch)

  def plan_epoch(self, epoch: int) -> list[tuple[list[list[int]], float]]:
    """(rows of example indices, rank imbalance) of every global batch of the epoch: examples
    in the epoch's order fill a batch until the next fits in no row, then start the next. The
    epoch's last examples, too few to give every rank one, are dropped (the next epoch is a new
    order of all of them)."""
    pending = list(epoch_order(len(self.source), self.seed, epoch))
    capacity, slots = self.num_rows * self.row_tokens, self.num_rows * self.max_slots
    batches = []
    while pending:
      taken, total = 0, 0
      while (taken < len(pending) and taken < slots
             and total + self.tokens[pending[taken]] <= capacity):
        total += self.tokens[pending[taken]]
        taken += 1
      candidates = pending[:taken]
      rows, left = assign_rows(self.tokens[candidates], self.num_rows, self.row_tokens,
                               self.max_slots, ranks=self.ranks, balance=self.balance,
                               costs=self.costs[candidates])
      rows = [[int(candidates[i]) for i in row] for row in rows]
      pending = [candidates[i] for i in left] + pending[taken:]
      per_rank = len(rows) // self.ranks
      if not all(any(rows[r * per_rank:(r + 1) * per_rank]) for r in range(self.ranks)):
        break  # the epoch's last few examples, too few for every rank: left for the next
      batches.append((rows, imbalance(rank_costs(rows, self.costs, self.ranks))))
    return batches

  def __len__(self) -> int:
    return ENDLESS

  def __getitem__(self, k: int) -> dict:
    rows, rank_imbalance = self.plans[k]
    share = self.num_rows // self.process_count
    mine = rows[self.process_index * share:(self.process_index + 1) * share]
    items = [self.source[i] for row in mine for i in row]
    starts = np.cumsum([0] + [len(row) for row in mine])
    positions = [list(range(start, start + len(row))) for start, row in zip(starts, mine)]
    batch = pack_rows(items, positions, patch_size=self.patch_size,
                      row_tokens=self.row_tokens, max_slots=self.max_slots)
    batch["rank_imbalance"] = np.float32(rank_imbalance)
    return batch
