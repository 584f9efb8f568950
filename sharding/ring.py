"""Ring attention: K/V shards passed round the seq axis with ppermute, combined by log-sum-exp.

Inside shard_map over the `seq` axis each device keeps its queries [B, Lq/s, H, D] and, over s
steps, attends to every device's keys and values as they come round the ring; the partial
results are merged with an online softmax over their log-sum-exps. Any attention that also
returns its lse can run inside (attention_with_lse below: the dense reference or our kernel).

With `stride` u the rings link devices u apart on the axis (u rings of s/u devices): the outer,
inter-node half of USP, after Ulysses has run within each group of u neighbours.
"""
import jax
import jax.numpy as jnp

from kernels.block_sparse_attention import full_pattern, sparse_attention
from kernels.block_tables import PatternTables
from kernels.reference import block_sparse_attention_reference


def ring_attention(q, k, v, *, axis_name: str, attention_with_lse, segment_ids=None,
                   kv_segment_ids=None, scale=None, stride: int = 1):
  """Per-shard q [B, Lq/s, H, D], k, v [B, Lk/s, H, D], segment ids [B, L/s] -> [B, Lq/s, H, D].

  `attention_with_lse(q, k, v, segment_ids=, kv_segment_ids=, scale=)` -> (out, lse [B, H, Lq])
  with zeros and lse = -inf on rows that see nothing (as both implementations here do).
  """
  size = jax.lax.axis_size(axis_name)
  if size % stride:
    raise ValueError(f"rings of stride {stride} do not tile the seq axis of size {size}")
  degree = size // stride
  ring = [(i, (i + stride) % size) for i in range(size)]
  kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
  out = jnp.zeros(q.shape, jnp.float32)
  lse = jnp.full((q.shape[0], q.shape[2], q.shape[1]), -jnp.inf, jnp.float32)
  for step in range(degree):
    part, part_lse = attention_with_lse(q, k, v, segment_ids=segment_ids,
                                        kv_segment_ids=kv_segment_ids, scale=scale)
    out, lse = merge(out, lse, part, part_lse)
    if step + 1 < degree:  # pass this device's current K/V on to the next one
      k, v = (jax.lax.ppermute(x, axis_name, ring) for x in (k, v))
      if kv_segment_ids is not None:
        kv_segment_ids = jax.lax.ppermute(kv_segment_ids, axis_name, ring)
  return out.astype(q.dtype)


def merge(out, lse, part, part_lse):
  """Two softmax-normalised partial outputs [B, L, H, D] and their lse [B, H, L] -> one.

  Safe where either or both saw nothing (lse = -inf): no NaN in values or gradients.
  """
  top = jnp.maximum(lse, part_lse)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  w_old, w_new = jnp.exp(lse - top), jnp.exp(part_lse - top)  # 0 where lse = -inf
  total = w_old + w_new
  seen = total > 0
  total = jnp.where(seen, total, 1.0)
  merged_lse = jnp.where(seen, top + jnp.log(total), -jnp.inf)
  as_columns = lambda w: jnp.swapaxes(w / total, 1, 2)[..., None]  # [B, L, H, 1]
  merged = out * as_columns(w_old) + part.astype(jnp.float32) * as_columns(w_new)
  return merged, merged_lse


def dense_with_lse(q, k, v, *, segment_ids=None, kv_segment_ids=None, scale=None):
  """The float32 dense reference, with its lse."""
  pattern = PatternTables.full(q.shape[1], k.shape[1])
  return block_sparse_attention_reference(
      q, k, v, pattern.kv_indices, pattern.kv_counts, block_q=pattern.block_q,
      block_k=pattern.block_k, scale=scale, segment_ids=segment_ids,
      kv_segment_ids=kv_segment_ids)


def block_sparse_with_lse(q, k, v, *, segment_ids=None, kv_segment_ids=None, scale=None):
  """Our Pallas kernel over every block, with its lse."""
  return sparse_attention(q, k, v, full_pattern(q.shape[1], k.shape[1]), scale=scale,
                          segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                          return_lse=True)


ATTENTION_WITH_LSE = {"xla": dense_with_lse, "block_sparse": block_sparse_with_lse}
