"""Block-sparsity patterns as compact tables, built once and read by the kernels.

A pattern says which key blocks each query block attends to. As a boolean block mask it is
[B, H, nQ, nK]; the forward kernel reads it as tables:

  kv_indices int32 [B, H, nQ, Kmax]: the key blocks of each query block, ascending; entries past
                                      the count repeat the last listed block (0 if none), so a
                                      kernel may prefetch them without reading out of bounds.
  kv_counts  int32 [B, H, nQ]:        how many entries of kv_indices are real.

The backward pass walks the transpose: for each key block, the query blocks that attend to it
(`transpose_tables`). Building a pattern and running it are separate, as in splash attention.
"""
import jax
import jax.numpy as jnp
import numpy as np


def mask_to_tables(block_mask, max_blocks: int | None = None):
  """bool [..., nQ, nK] -> (kv_indices int32 [..., nQ, Kmax], kv_counts int32 [..., nQ]).

  Kmax is max_blocks, or the largest count in the mask (which then must be concrete). A row with
  more blocks than max_blocks is an error, not a silent truncation.
  """
  block_mask = jnp.asarray(block_mask, bool)
  num_kv_blocks = block_mask.shape[-1]
  counts = block_mask.sum(-1, dtype=jnp.int32)
  largest = _concrete_max(counts)  # None inside jit
  if max_blocks is None:
    if largest is None:
      raise ValueError("inside jit the table width cannot be read off the mask: pass max_blocks")
    max_blocks = max(largest, 1)
  elif largest is not None and largest > max_blocks:
    raise ValueError(f"a query block attends to {largest} key blocks, more than "
                     f"max_blocks={max_blocks}: raise max_blocks")
  max_blocks = min(max_blocks, num_kv_blocks)
  # A stable sort of "not in the mask" puts the listed blocks first, in ascending order.
  order = jnp.argsort(~block_mask, axis=-1, stable=True)[..., :max_blocks].astype(jnp.int32)
  last = jnp.take_along_axis(order, jnp.maximum(counts - 1, 0)[..., None], axis=-1)
  last = jnp.where(counts[..., None] > 0, last, 0)
  slot = jnp.arange(max_blocks, dtype=jnp.int32)
  indices = jnp.where(slot < counts[..., None], order, last)
  return indices, jnp.minimum(counts, max_blocks)


def _concrete_max(counts) -> int | None:
  try:
    return int(np.max(np.asarray(counts), initial=0))
  except jax.errors.TracerArrayConversionError:
    return None


def tables_to_mask(kv_indices, kv_counts, num_kv_blocks: int):
  """(kv_indices [..., nQ, Kmax], kv_counts [..., nQ]) -> bool block mask [..., nQ, nK]."""
  kv_indices = jnp.asarray(kv_indices)
  listed = jnp.arange(kv_indices.shape[-1]) < jnp.asarray(kv_counts)[..., None]
  hits = (kv_indices[..., None] == jnp.arange(num_kv_blocks)) & listed[..., None]
  return hits.any(-2)


def transpose_tables(kv_indices, kv_counts, num_kv_blocks: int, max_blocks: int | None = None):
  """The backward pass's tables: for each key block, the query blocks that attend to it.

  Returns (q_indices int32 [..., nK, Qmax], q_counts int32 [..., nK]).
  """
  mask = tables_to_mask(kv_indices, kv_counts, num_kv_blocks)
  return mask_to_tables(jnp.swapaxes(mask, -1, -2), max_blocks)
