"""AdaSpa's head-adaptive hierarchical block selection: from block masses to a sparse pattern.

Every query-block row keeps its top-k key blocks by attention mass (kernels/attention_search.py
measures the masses), k set by a sparsity s (the fraction of key blocks dropped). Heads differ:
one whose recall (kept mass / total mass) at s exceeds 0.8 is easy and moves to sparsity
(1 + s) / 2; as many of the lowest-recall heads move to (3s - 1) / 2, so the average sparsity
stays s. Text blocks (forced) are always kept, on top of the sparsity, which counts the free
(video) blocks only; text query blocks keep every block (text reads the whole video, as in the
static patterns of kernels/video_patterns.py). The result feeds the block_sparse kernel until the
next search.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kernels.block_tables import PatternTables

RECALL_THRESHOLD = 0.8


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdaptivePattern:
  tables: PatternTables   # [B, H, nQ, Kmax]
  sparsity: jax.Array     # float32 [B, H]: the fraction of free key blocks each head drops
  recall: jax.Array       # float32 [B, H]: the attention mass the pattern keeps


def keep_counts(sparsity: float, num_blocks: int, num_forced: int = 0) -> tuple[int, int, int]:
  """Key blocks kept per row at the three levels (sparser, base, denser) of the hierarchy.

  The sparsity is over the free (not forced) blocks; the forced ones are kept on top, and every
  level keeps at least one free block. The denser count is 2 * base - sparser, so a promoted and
  a demoted head together keep what two heads at the base keep: the average sparsity is exactly
  the base's. Where the denser level cannot fit (s near 0), the sparser one is raised to match,
  so at s = 0 every head keeps every block.
  """
  if not 0 <= sparsity < 1:
    raise ValueError(f"sparsity {sparsity} must be in [0, 1): the fraction of key blocks dropped")
  free = num_blocks - num_forced
  if free < 1:
    raise ValueError(f"all {num_blocks} key blocks are forced: nothing left to select")
  base = max(1, round((1 - sparsity) * free))
  sparser = max(1, round((1 - sparsity) / 2 * free), 2 * base - free)  # (1 + s) / 2 dropped
  denser = 2 * base - sparser  # (3s - 1) / 2 dropped
  return num_forced + sparser, num_forced + base, num_forced + denser


def hierarchy_ranks(recall: jax.Array, threshold: float = RECALL_THRESHOLD) -> jax.Array:
  """int32 [B, H]: +1 for heads moved sparser, -1 for heads moved denser, 0 for the rest.

  The heads above `threshold` (at most half of them, the highest) move sparser and as many of
  the lowest-recall heads move denser.
  """
  heads = recall.shape[-1]
  moved = jnp.minimum(jnp.sum(recall > threshold, axis=-1, keepdims=True), heads // 2)
  rank = jnp.argsort(jnp.argsort(recall, axis=-1), axis=-1)  # 0 = the lowest recall
  return jnp.where(rank >= heads - moved, 1, jnp.where(rank < moved, -1, 0)).astype(jnp.int32)


def select_pattern(masses: jax.Array, sparsity: float, *, block_q: int, block_k: int,
                   forced_blocks: np.ndarray | None = None,
                   dense_rows: np.ndarray | None = None,
                   threshold: float = RECALL_THRESHOLD) -> AdaptivePattern:
  """masses float32 [B, H, nQ, nK] -> the head-adaptive pattern at average sparsity `sparsity`.

  forced_blocks: bool [nK], key blocks every row keeps (the text blocks).
  dense_rows: bool [nQ], query blocks that keep every key block (the text queries, which read
  the whole video); the recall and the hierarchy count the other rows only.
  """
  num_q, num_kv = masses.shape[-2:]
  forced = np.zeros(num_kv, bool) if forced_blocks is None else np.asarray(forced_blocks, bool)
  dense = np.zeros(num_q, bool) if dense_rows is None else np.asarray(dense_rows, bool)
  num_forced = int(forced.sum())
  sparser, base, denser = keep_counts(sparsity, num_kv, num_forced)
  score = jnp.where(forced, jnp.inf, masses)
  _, order = jax.lax.top_k(score, denser)  # [B, H, nQ, denser], most mass first
  selected_rows = jnp.asarray(~dense)[:, None]  # [nQ, 1]
  kept = jnp.where(selected_rows, jnp.take_along_axis(masses, order, axis=-1), 0)
  total = jnp.where(selected_rows, masses, 0).sum(axis=(-2, -1))

  def recall_of(counts):  # counts [B, H]: each row keeps its first `counts` blocks of `order`
    listed = jnp.arange(denser) < counts[..., None, None]
    return jnp.where(listed, kept, 0).sum(axis=(-2, -1)) / jnp.maximum(total, 1e-30)

  base_counts = jnp.full(masses.shape[:2], base, jnp.int32)
  moves = hierarchy_ranks(recall_of(base_counts), threshold)
  counts = jnp.where(moves > 0, sparser, jnp.where(moves < 0, denser, base)).astype(jnp.int32)
  keep = jnp.arange(denser) < counts[..., None, None]  # [B, H, 1, denser]
  mask = jnp.put_along_axis(jnp.zeros(masses.shape, bool), order,
                            jnp.broadcast_to(keep, order.shape), axis=-1, inplace=False)
  mask = mask | jnp.asarray(dense)[:, None]
  tables = PatternTables.from_mask(mask, block_q=block_q, block_k=block_k,
                                   max_blocks=num_kv if dense.any() else denser,
                                   max_q_blocks=num_q)
  dropped = 1.0 - (counts - num_forced).astype(jnp.float32) / (num_kv - num_forced)
  return AdaptivePattern(tables, dropped, recall_of(counts))


def pattern_recall(masses: jax.Array, block_mask: jax.Array) -> jax.Array:
  """float32 [B, H]: the share of the attention mass inside bool block_mask [B|1, H|1, nQ, nK]."""
  kept = jnp.where(block_mask, masses, 0).sum(axis=(-2, -1))
  return kept / jnp.maximum(masses.sum(axis=(-2, -1)), 1e-30)
