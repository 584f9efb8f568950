"""Sequence-parallel attention on global arrays: shard_map over the mesh, Ulysses or ring inside.

    out = sequence_parallel_attention(q, k, v, mesh=mesh, kind="ring", inner="block_sparse")

q, k, v [B, L, H, D] are split over the batch axes (data, fsdp) and the seq axis; the result is
split the same way. Heads must divide by the seq degree for Ulysses; ring has no such limit.
USP (Ulysses x ring) reaches seq degrees beyond the head count, or keeps the all-to-alls inside
a node: Ulysses within groups of `ulysses_degree` neighbouring devices on the seq axis (the
fast links), ring attention across the groups.
"""
import functools
import math

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from sharding import ring, ulysses

KINDS = ("ulysses", "ring", "usp")


def usp_ulysses_degree(num_heads: int, seq_degree: int, ulysses_degree: int = 0) -> int:
  """The Ulysses degree of USP: `ulysses_degree`, or (0) the largest that divides both the heads
  and the seq degree; the ring degree is seq_degree / it."""
  degree = ulysses_degree or math.gcd(num_heads, seq_degree)
  if seq_degree % degree:
    raise ValueError(f"USP's Ulysses degree {degree} (model.ulysses_degree) must divide the seq "
                     f"axis of size {seq_degree}")
  ulysses.check_heads(num_heads, degree)
  return degree


def sequence_parallel_attention(q, k, v, *, mesh: jax.sharding.Mesh, kind: str,
                                inner: str = "xla", attention=None, segment_ids=None,
                                kv_segment_ids=None, scale=None, pattern=None,
                                seq_axis: str = "seq",
                                batch_axes: tuple[str, ...] = ("data", "fsdp"),
                                ulysses_degree: int = 0):
  """[B, L, H, D] -> [B, L, H, D] attention with the sequence split over `seq_axis`.

  inner names the attention on each device ("xla" or "block_sparse"); for Ulysses `attention`
  may instead be any callable with the dit.attention signature, and `pattern` (PatternTables of
  the whole sequence) restricts it, cut to each device's heads. For USP, ulysses_degree is the
  size of the Ulysses groups (0: chosen by usp_ulysses_degree).
  """
  if kind not in KINDS:
    raise ValueError(f"unknown sequence parallelism {kind!r}; choose one of {list(KINDS)}")
  degree = mesh.shape[seq_axis]
  batch_degree = int(np.prod([mesh.shape[axis] for axis in batch_axes]))
  if q.shape[0] % batch_degree:
    # e.g. sampling 3 prompts on 2 data devices: each data replica runs the whole batch.
    batch_axes = ()
  for name, length in (("queries", q.shape[1]), ("keys", k.shape[1])):
    if length % degree:
      raise ValueError(f"{length} {name} do not split over the seq axis of size {degree}: pad "
                       "the sequence to a multiple of it")
  if kind == "ulysses":
    ulysses.check_heads(q.shape[2], degree)
    if attention is None:
      attention = _without_lse(ring.ATTENTION_WITH_LSE[inner])
    local = functools.partial(ulysses.ulysses_attention, axis_name=seq_axis,
                              attention=attention, scale=scale, pattern=pattern)
  else:
    if inner not in ring.ATTENTION_WITH_LSE:
      raise ValueError(f"ring attention runs {list(ring.ATTENTION_WITH_LSE)} on each device (they "
                       f"give the log-sum-exp it merges with), not {inner!r}")
    if pattern is not None:
      raise ValueError(f"{kind} attention does not take a block-sparsity pattern yet: use "
                       "Ulysses")
    local = functools.partial(ring.ring_attention, axis_name=seq_axis,
                              attention_with_lse=ring.ATTENTION_WITH_LSE[inner], scale=scale)
    if kind == "usp":
      group = usp_ulysses_degree(q.shape[2], degree, ulysses_degree)
      local = functools.partial(ulysses.ulysses_attention, axis_name=seq_axis, scale=scale,
                                group_size=group,
                                attention=functools.partial(local, stride=group))
  batch = batch_axes or None
  tokens = P(batch, seq_axis, None, None)
  ids = P(batch, seq_axis)
  segments = [x for x in (segment_ids, kv_segment_ids) if x is not None]

  def run(q, k, v, *segments):
    named = dict(zip(("segment_ids", "kv_segment_ids"), segments))
    return local(q, k, v, **named)

  if kv_segment_ids is not None and segment_ids is None:
    raise ValueError("kv_segment_ids needs segment_ids")
  return jax.shard_map(run, mesh=mesh, in_specs=(tokens,) * 3 + (ids,) * len(segments),
                       out_specs=tokens, check_vma=False)(q, k, v, *segments)


def _without_lse(attention_with_lse):
  def attention(q, k, v, **kwargs):
    return attention_with_lse(q, k, v, **kwargs)[0]
  return attention
