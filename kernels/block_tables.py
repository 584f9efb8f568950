"""Block-sparsity patterns as compact tables, built once and read by the kernels.

A pattern says which key blocks each query block attends to. As a boolean block mask it is
[B, H, nQ, nK]; the forward kernel reads it as tables:

  kv_indices int32 [B, H, nQ, Kmax]: the key blocks of each query block, ascending; entries past
                                      the count repeat the last listed block (0 if none), so a
                                      kernel may prefetch them without reading out of bounds.
  kv_counts  int32 [B, H, nQ]:        how many entries of kv_indices are real.

The backward pass walks the transpose: for each key block, the query blocks that attend to it
(`transpose_tables`). Building a pattern and running it are separate, as in splash attention:
`PatternTables` holds both directions, built once and passed to every layer that uses it.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


def mask_to_tables(block_mask, max_blocks: int | None = None):
  """bool [..., nQ, nK] -> (kv_indices int32 [..., nQ, Kmax], kv_counts int32 [..., nQ]).

  Kmax is max_blocks, or the largest count in the mask (which then must be concrete). A row with
  more blocks than max_blocks is an error, not a silent truncation: a ValueError here for a
  concrete mask; inside jit, a runtime error carrying the same message when the call runs.
  """
  # A numpy mask gives numpy tables: concrete wherever they are built, even inside shard_map.
  xp = np if isinstance(block_mask, np.ndarray) else jnp
  block_mask = xp.asarray(block_mask, bool)
  num_kv_blocks = block_mask.shape[-1]
  counts = block_mask.sum(-1, dtype=np.int32)
  largest = _concrete_max(counts)  # None inside jit
  if max_blocks is None:
    if largest is None:
      raise ValueError("inside jit the table width cannot be read off the mask: pass max_blocks")
    max_blocks = max(largest, 1)
  elif largest is not None:
    _check_width(largest, max_blocks)
  elif max_blocks < num_kv_blocks:  # traced: a row might not fit; checked when the call runs
    jax.debug.callback(functools.partial(_check_width, max_blocks=max_blocks), counts.max())
  max_blocks = min(max_blocks, num_kv_blocks)
  # A stable sort of "not in the mask" puts the listed blocks first, in ascending order.
  order = xp.argsort(~block_mask, axis=-1, stable=True)[..., :max_blocks].astype(np.int32)
  last = xp.take_along_axis(order, xp.maximum(counts - 1, 0)[..., None], axis=-1)
  last = xp.where(counts[..., None] > 0, last, 0)
  slot = xp.arange(max_blocks, dtype=np.int32)
  indices = xp.where(slot < counts[..., None], order, last).astype(np.int32)
  return indices, xp.minimum(counts, max_blocks).astype(np.int32)


def _check_width(largest, max_blocks: int) -> None:
  if int(largest) > max_blocks:
    raise ValueError(f"a query block attends to {int(largest)} key blocks, more than "
                     f"max_blocks={max_blocks}: raise max_blocks")


def _concrete_max(counts) -> int | None:
  try:
    return int(np.max(np.asarray(counts), initial=0))
  except jax.errors.TracerArrayConversionError:
    return None


def tables_to_mask(kv_indices, kv_counts, num_kv_blocks: int):
  """(kv_indices [..., nQ, Kmax], kv_counts [..., nQ]) -> bool block mask [..., nQ, nK].

  A scatter, O(entries) in time and O(nQ * nK) in memory, so it builds inside jit at video sizes.
  """
  kv_indices = jnp.asarray(kv_indices, jnp.int32)
  kv_counts = jnp.asarray(kv_counts, jnp.int32)
  *lead, num_q_blocks, width = kv_indices.shape
  rows = kv_indices.reshape(-1, width)
  listed = (jnp.arange(width) < kv_counts.reshape(-1, 1))
  mask = jnp.zeros((rows.shape[0], num_kv_blocks), bool)
  mask = mask.at[jnp.arange(rows.shape[0])[:, None], rows].max(listed)
  return mask.reshape(*lead, num_q_blocks, num_kv_blocks)


def transpose_tables(kv_indices, kv_counts, num_kv_blocks: int, max_blocks: int | None = None):
  """The backward pass's tables: for each key block, the query blocks that attend to it.

  Returns (q_indices int32 [..., nK, Qmax], q_counts int32 [..., nK]).
  """
  mask = tables_to_mask(kv_indices, kv_counts, num_kv_blocks)
  return mask_to_tables(jnp.swapaxes(mask, -1, -2), max_blocks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PatternTables:
  """A block-sparsity pattern as the kernels read it: the forward tables and their transpose.

  The leading dims are [B, H], either of which may be 1 to share one pattern across the batch or
  the heads (the kernels then read the same table for every batch element or head).
  """
  kv_indices: jax.Array  # int32 [B|1, H|1, nQ, Kmax]
  kv_counts: jax.Array   # int32 [B|1, H|1, nQ]
  q_indices: jax.Array   # int32 [B|1, H|1, nK, Qmax]
  q_counts: jax.Array    # int32 [B|1, H|1, nK]
  block_q: int = dataclasses.field(metadata=dict(static=True))
  block_k: int = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def from_mask(cls, block_mask, *, block_q: int, block_k: int, max_blocks: int | None = None,
                max_q_blocks: int | None = None) -> "PatternTables":
    """bool [nQ, nK], [H, nQ, nK] or [B, H, nQ, nK] -> tables (widths as in mask_to_tables)."""
    xp = np if isinstance(block_mask, np.ndarray) else jnp
    block_mask = xp.asarray(block_mask, bool)
    if not 2 <= block_mask.ndim <= 4:
      raise ValueError(f"a block mask is [nQ, nK], [H, nQ, nK] or [B, H, nQ, nK]; got shape "
                       f"{block_mask.shape}")
    block_mask = block_mask.reshape((1,) * (4 - block_mask.ndim) + block_mask.shape)
    kv_indices, kv_counts = mask_to_tables(block_mask, max_blocks)
    q_indices, q_counts = mask_to_tables(xp.swapaxes(block_mask, -1, -2), max_q_blocks)
    return cls(kv_indices, kv_counts, q_indices, q_counts, block_q, block_k)

  @classmethod
  def from_tables(cls, kv_indices, kv_counts, *, num_kv_blocks: int, block_q: int,
                  block_k: int, max_q_blocks: int | None = None) -> "PatternTables":
    """Forward tables [B|1, H|1, nQ, Kmax] -> both directions; the transpose is built here.

    Inside jit the transpose's width defaults to nQ (every query block), which is always enough.
    """
    kv_indices = jnp.asarray(kv_indices, jnp.int32)
    kv_counts = jnp.asarray(kv_counts, jnp.int32)
    if kv_indices.ndim != 4 or kv_counts.shape != kv_indices.shape[:3]:
      raise ValueError(f"expected kv_indices [B, H, nQ, Kmax] and kv_counts [B, H, nQ]; got "
                       f"{kv_indices.shape} and {kv_counts.shape}")
    if max_q_blocks is None and _concrete_max(kv_counts) is None:
      max_q_blocks = kv_indices.shape[2]
    q_indices, q_counts = transpose_tables(kv_indices, kv_counts, num_kv_blocks, max_q_blocks)
    return cls(kv_indices, kv_counts, q_indices, q_counts, block_q, block_k)

  @classmethod
  def full(cls, q_len: int, kv_len: int, block: int = 128,
           min_block: int = 16) -> "PatternTables":
    """Every block listed, shared by all batch elements and heads; blocks of `block`, or the
    next power of two >= min_block for a shorter sequence. Numpy tables: concrete inside any
    trace."""
    block_q = min(block, max(min_block, 1 << (q_len - 1).bit_length()))
    block_k = min(block, max(min_block, 1 << (kv_len - 1).bit_length()))
    mask = np.ones((-(-q_len // block_q), -(-kv_len // block_k)), bool)
    return cls.from_mask(mask, block_q=block_q, block_k=block_k)

  @property
  def num_q_blocks(self) -> int:
    return self.kv_indices.shape[2]

  @property
  def num_kv_blocks(self) -> int:
    return self.q_indices.shape[2]

  def refine(self, block_q: int, block_k: int) -> "PatternTables":
    """The same token pattern on smaller blocks (dividing the current ones): a table operation,
    cheap inside jit. Lets a kernel run at tiles other than the pattern's blocks."""
    fq, fk = self.block_q // block_q, self.block_k // block_k
    if fq * block_q != self.block_q or fk * block_k != self.block_k or min(fq, fk) < 1:
      raise ValueError(f"blocks {block_q} x {block_k} must divide the pattern's "
                       f"{self.block_q} x {self.block_k}")
    kv_indices, kv_counts = _refine_tables(self.kv_indices, self.kv_counts, fq, fk)
    q_indices, q_counts = _refine_tables(self.q_indices, self.q_counts, fk, fq)
    return PatternTables(kv_indices, kv_counts, q_indices, q_counts, block_q, block_k)

  def to_mask(self) -> jax.Array:
    """bool [B|1, H|1, nQ, nK]."""
    return tables_to_mask(self.kv_indices, self.kv_counts, self.num_kv_blocks)

  def density(self) -> jax.Array:
    """The fraction of (query block, key block) pairs visited, over the table's [B, H]."""
    return self.kv_counts.sum() / (self.kv_counts.size * self.num_kv_blocks)


def _refine_tables(indices, counts, row_factor: int, entry_factor: int):
  """Rows split row_factor ways; entry e becomes e*f .. e*f + f-1 (f = entry_factor)."""
  sub = jnp.arange(entry_factor, dtype=jnp.int32)
  refined = (indices[..., None] * entry_factor + sub).reshape(*indices.shape[:-1], -1)
  refined_counts = counts * entry_factor
  # Keep the padding convention: entries past the count repeat the last listed one.
  slot = jnp.arange(refined.shape[-1])
  last = jnp.take_along_axis(refined, jnp.maximum(refined_counts - 1, 0)[..., None], axis=-1)
  refined = jnp.where(slot < refined_counts[..., None], refined,
                      jnp.where(refined_counts[..., None] > 0, last, 0))
  return (jnp.repeat(refined, row_factor, axis=-2), jnp.repeat(refined_counts, row_factor,
                                                                axis=-1))
