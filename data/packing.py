"""Packing: examples of any shapes (videos, and images as one-frame videos) into rows of a
fixed number of patch tokens, so one compiled train step serves every mix of shapes (NaViT).

A packed batch of R rows, each of `row_tokens` video tokens and up to `max_slots` examples:

  patches      float32 [R, L, P]  each example's patch tokens (dit.patchify), one after another
  segment_ids  int32 [R, L]       slot s + 1 of the example a token belongs to; 0: padding
  positions    int32 [R, L, 3]    each token's (t, h, w) patch coordinate in its own example
  slot_shapes  int32 [R, S, 3]    each slot's video shape (T, H, W); 0 for an empty slot
  caption      str [R, S]         ("" for an empty slot), or label int32 [R, S]

DiT.packed attends within each example and conditions each on its own timestep and text, and
diffusion.flow_matching.packed_flow_matching_loss averages the loss per example.

Which examples share a row is planned from their token counts alone (`assign_rows`): first
fit in the order given, or, with `balance`, the costliest example first onto the row of the
data-parallel rank with the least estimated cost (Seaweed's runtime balance: attention is
quadratic in length, so equal tokens are not equal time).
"""
from collections.abc import Sequence

import numpy as np

from dit.patchify import patch_grid, patch_positions, patchify, unpatchify


def example_cost(tokens: int | np.ndarray, text_tokens: int = 0,
                 hidden_size: int = 64) -> float | np.ndarray:
  """A transformer layer's estimated cost of one example of `tokens` video tokens and
  `text_tokens` text tokens, in units of one token's linear layers: n + n^2 / (6 D) for its
  n joint tokens (a token's projections and MLP take ~24 D^2 FLOPs, its attention ~4 n D)."""
  n = np.asarray(tokens, np.float64) + text_tokens
  return n + n * n / (6.0 * hidden_size)


def assign_rows(tokens: Sequence[int], num_rows: int, row_tokens: int, max_slots: int, *,
                ranks: int = 1, balance: bool = False, costs: Sequence[float] | None = None
                ) -> tuple[list[list[int]], list[int]]:
  """Examples (their token counts, in order) onto num_rows rows of row_tokens tokens and at
  most max_slots examples each -> (rows: the example positions in each row, left: the positions
  that fit nowhere, in order).

  Rows belong to `ranks` data-parallel ranks in equal consecutive runs. Without balance each
  example goes to the first row with room; with balance the examples go costliest first (by
  `costs`, default example_cost) onto the row with room whose rank has the least cost so far
  (then the emptiest such row), and no rank takes more than an equal share of the total cost
  (or the costliest example alone): what would overload every rank is left for the next
  batch, since the step waits for its slowest rank. Each row keeps its examples in order.
  """
  if num_rows % ranks:
    raise ValueError(f"{num_rows} rows do not split over {ranks} data-parallel ranks")
  costs = example_cost(np.asarray(tokens)) if costs is None else np.asarray(costs, np.float64)
  rows: list[list[int]] = [[] for _ in range(num_rows)]
  room = np.full(num_rows, row_tokens, np.int64)
  rank_of_row = np.arange(num_rows) // (num_rows // ranks)
  rank_cost = np.zeros(ranks)
  left = []
  order = sorted(range(len(tokens)), key=lambda i: -costs[i]) if balance else range(len(tokens))
  cap = max(costs.max(initial=0.0), costs.sum() / ranks) * (1 + 1e-9)
  for i in order:
    fits = (room >= tokens[i]) & (np.array([len(r) for r in rows]) < max_slots)
    if balance:  # a rank may exceed the cap only with its first example
      loaded = rank_cost[rank_of_row] + costs[i]
      fits &= (loaded <= cap) | (rank_cost[rank_of_row] == 0)
    fits = np.flatnonzero(fits)
    if not fits.size:
      left.append(i)
      continue
    if balance:  # least-loaded rank first, then the row with the most room
      row = min(fits, key=lambda r: (rank_cost[rank_of_row[r]], -room[r], r))
    else:
      row = fits[0]
    rows[row].append(i)
    room[row] -= tokens[i]
    rank_cost[rank_of_row[row]] += costs[i]
  return [sorted(r) for r in rows], sorted(left)


def rank_costs(rows: list[list[int]], costs: Sequence[float], ranks: int) -> np.ndarray:
  """The estimated cost per data-parallel rank of a plan of rows (consecutive runs per rank)."""
  per_row = np.array([sum(costs[i] for i in row) for row in rows])
  return per_row.reshape(ranks, -1).sum(1)


def imbalance(rank_cost: np.ndarray) -> float:
  """The slowest rank's estimated cost over the mean rank's: 1 is perfectly balanced."""
  mean = float(np.mean(rank_cost))
  return float(np.max(rank_cost)) / mean if mean > 0 else 1.0


def pack_rows(examples: Sequence[dict], rows: list[list[int]], *, patch_size: Sequence[int],
              row_tokens: int, max_slots: int) -> dict[str, np.ndarray]:
  """The packed batch (see the module docstring) of `examples` ({"video" [T, H, W, C],
  "caption" or "label"}) arranged as `rows` (positions into examples, from assign_rows)."""
  channels = examples[0]["video"].shape[-1]
  patch_dim = int(np.prod(patch_size)) * channels
  num_rows = len(rows)
  batch = {
      "patches": np.zeros((num_rows, row_tokens, patch_dim), np.float32),
      "segment_ids": np.zeros((num_rows, row_tokens), np.int32),
      "positions": np.zeros((num_rows, row_tokens, 3), np.int32),
      "slot_shapes": np.zeros((num_rows, max_slots, 3), np.int32),
  }
  if "caption" in examples[0]:
    batch["caption"] = np.full((num_rows, max_slots), "", dtype=object)
  if "label" in examples[0]:
    batch["label"] = np.zeros((num_rows, max_slots), np.int32)
  for r, row in enumerate(rows):
    if len(row) > max_slots:
      raise ValueError(f"row {r} holds {len(row)} examples, more than max_slots={max_slots}")
    start = 0
    for slot, i in enumerate(row):
      video = np.asarray(examples[i]["video"], np.float32)
      if video.ndim != 4 or video.shape[-1] != channels:
        raise ValueError(f"example {i} has a video of shape {video.shape}; packing takes "
                         f"[T, H, W, {channels}] (an image is T=1)")
      grid = patch_grid((1, *video.shape), patch_size)
      tokens = patchify(video[None], patch_size)[0]  # [n, P]
      end = start + len(tokens)
      if end > row_tokens:
        raise ValueError(f"row {r} needs {end} tokens, more than row_tokens={row_tokens}")
      batch["patches"][r, start:end] = tokens
      batch["segment_ids"][r, start:end] = slot + 1
      batch["positions"][r, start:end] = patch_positions(grid)
      batch["slot_shapes"][r, slot] = video.shape[:3]
      if "caption" in batch:
        batch["caption"][r, slot] = str(examples[i]["caption"])
      if "label" in batch:
        batch["label"][r, slot] = int(examples[i]["label"])
      start = end
  return batch


def unpack_videos(patches: np.ndarray, batch: dict, patch_size: Sequence[int]
                  ) -> list[list[np.ndarray]]:
  """Per row, per used slot: the video [T, H, W, C] of those slots' tokens in `patches`
  [R, L, P] (a packed batch's, or a prediction for it); the inverse of pack_rows."""
  videos = []
  for r in range(patches.shape[0]):
    row = []
    for slot, shape in enumerate(batch["slot_shapes"][r]):
      if not shape[0]:
        continue
      grid = patch_grid((1, *shape, 1), patch_size)
      tokens = np.asarray(patches[r])[batch["segment_ids"][r] == slot + 1]
      row.append(np.asarray(unpatchify(tokens[None], grid, patch_size))[0])
    videos.append(row)
  return videos
