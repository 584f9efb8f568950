"""Ulysses sequence parallelism: all-to-all from sequence shards to head shards around attention.

Inside shard_map over the `seq` axis each device holds q, k, v [B, L/s, H, D]. One all-to-all
gives it every token of H/s heads, [B, L, H/s, D]; any attention runs there unchanged; a second
all-to-all brings the output back to [B, L/s, H, D]. Needs H divisible by s.

With `group_size` u < s the all-to-alls run within groups of u consecutive devices on the axis
(the inner, intra-node half of USP, sharding/sequence_parallel.py): each device then holds its
group's L/(s/u) tokens of H/u heads.
"""
import jax

from kernels.block_tables import PatternTables


def check_heads(num_heads: int, degree: int) -> None:
  if num_heads % degree:
    raise ValueError(f"Ulysses splits the {num_heads} attention heads over the seq axis of size "
                     f"{degree}, which does not divide them: use a seq degree that divides the "
                     "heads, or ring attention")


def ulysses_attention(q, k, v, *, axis_name: str, attention, segment_ids=None,
                      kv_segment_ids=None, scale=None, pattern: PatternTables | None = None,
                      group_size: int | None = None):
  """Per-shard q [B, Lq/s, H, D], k, v [B, Lk/s, H, D]; segment ids [B, L/s] -> [B, Lq/s, H, D].

  `attention(q, k, v, segment_ids=, kv_segment_ids=, scale=[, pattern=])` sees whole sequences
  (with group_size: the group's part of them) of this device's heads. A per-head pattern is cut
  to those heads. The heads and groups were checked against the mesh by the caller
  (sharding.sequence_parallel.sequence_parallel_attention).
  """
  size = jax.lax.axis_size(axis_name)
  degree = size if group_size is None else group_size
  groups = None if degree == size else [list(range(start, start + degree))
                                        for start in range(0, size, degree)]
  to_heads = lambda x: jax.lax.all_to_all(x, axis_name, split_axis=2, concat_axis=1, tiled=True,
                                          axis_index_groups=groups)
  gather = lambda ids: None if ids is None else jax.lax.all_gather(
      ids, axis_name, axis=1, tiled=True, axis_index_groups=groups)
  kwargs = dict(segment_ids=gather(segment_ids), kv_segment_ids=gather(kv_segment_ids),
                scale=scale)
  if pattern is not None:
    kwargs["pattern"] = _local_heads(pattern, q.shape[2] // degree, axis_name, degree)
  out = attention(to_heads(q), to_heads(k), to_heads(v), **kwargs)  # [B, L, H/s, D]
  return jax.lax.all_to_all(out, axis_name, split_axis=1, concat_axis=2, tiled=True,
                            axis_index_groups=groups)


def _local_heads(pattern: PatternTables, heads_per_device: int, axis_name: str, degree: int):
  if pattern.kv_indices.shape[1] == 1:  # shared by every head
    return pattern
  start = jax.lax.axis_index(axis_name) % degree * heads_per_device
  cut = lambda x: jax.lax.dynamic_slice_in_dim(x, start, heads_per_device, axis=1)
  return PatternTables(cut(pattern.kv_indices), cut(pattern.kv_counts), cut(pattern.q_indices),
                       cut(pattern.q_counts), pattern.block_q, pattern.block_k)
