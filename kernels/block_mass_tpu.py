"""The block-mass pass for TPUs: a Pallas TPU kernel that never holds more than one block pair.

Grid (B, H, nQ, nK): each step DMAs one query block [bq, D] and one key block [bk, D] into VMEM,
computes their logits [bq, bk] in float32, and adds the block's mass into the row of masses
[1, nK] of its query block, which stays resident in VMEM across the key axis ("arbitrary") and
is written back once. Memory is O(bq * bk) per step, never [Lq, Lk] (the XLA reference's
logits: 96 GiB per sample at 32K tokens and 24 heads).

Runs on CPU through Pallas's TPU interpret mode (the tests). Inputs are padded by
kernels/block_mass.py; layout here is [B, H, L, D] with lse as [B, H, Lq, 1] columns.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

LOG2_E = math.log2(math.e)
NT = (((1,), (1,)), ((), ()))  # a [m, d] x b [n, d] -> [m, n]


def _mass_kernel(q_ref, k_ref, lse_ref, *refs, block_k: int, kv_len: int, kv_len_padded: int,
                 scale: float, has_segments: bool):
  if has_segments:
    q_segments_ref, kv_segments_ref, out_ref = refs
  else:
    (out_ref,) = refs
  j = pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    out_ref[...] = jnp.zeros(out_ref.shape, jnp.float32)

  s = jax.lax.dot_general(q_ref[...], k_ref[...], NT, preferred_element_type=jnp.float32)
  s = s * (scale * LOG2_E)                                      # [bq, bk], base 2
  if kv_len != kv_len_padded:  # the last block holds padding keys
    keys = j * block_k + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
    s = jnp.where(keys < kv_len, s, -jnp.inf)
  if has_segments:
    s = jnp.where(q_segments_ref[...] == kv_segments_ref[...], s, -jnp.inf)  # [bq,1]==[1,bk]
  lse2 = lse_ref[...] * LOG2_E                                  # [bq, 1]; +inf on padding
  lse2 = jnp.where(lse2 == -jnp.inf, jnp.inf, lse2)             # a row that saw nothing: 0
  weights = jnp.exp2(s - lse2)
  mass = weights.sum(axis=0, keepdims=True).sum(axis=1, keepdims=True)  # [1, 1]
  columns = jax.lax.broadcasted_iota(jnp.int32, out_ref.shape, 1)       # [1, nK]
  out_ref[...] = jnp.where(columns == j, mass, out_ref[...])


def block_mass(q, k, lse, segment_ids, kv_segment_ids, *, block_q: int, block_k: int,
               kv_len: int, scale: float, interpret):
  """Padded q [B, nQ*bq, H, D], k [B, nK*bk, H, D], lse float32 [B, H, nQ*bq] (natural log),
  segment ids [B, L] or None -> float32 [B, H, nQ, nK]."""
  q, k = q.swapaxes(1, 2), k.swapaxes(1, 2)  # [B, H, L, D]
  batch, heads, q_len, dim = q.shape
  kv_len_padded = k.shape[2]
  nq, nk = q_len // block_q, kv_len_padded // block_k
  in_specs = [pl.BlockSpec((None, None, block_q, dim), lambda b, h, i, j: (b, h, i, 0)),
              pl.BlockSpec((None, None, block_k, dim), lambda b, h, i, j: (b, h, j, 0)),
              pl.BlockSpec((None, None, block_q, 1), lambda b, h, i, j: (b, h, i, 0))]
  args = [q, k, lse[..., None]]
  if segment_ids is not None:  # a column [B, Lq, 1] and a row [B, 1, Lk]: the tiles' shapes
    args += [segment_ids[:, :, None], kv_segment_ids[:, None, :]]
    in_specs += [pl.BlockSpec((None, block_q, 1), lambda b, h, i, j: (b, i, 0)),
                 pl.BlockSpec((None, 1, block_k), lambda b, h, i, j: (b, 0, j))]
  out = pl.pallas_call(
      functools.partial(_mass_kernel, block_k=block_k, kv_len=kv_len,
                        kv_len_padded=kv_len_padded, scale=scale,
                        has_segments=segment_ids is not None),
      grid=(batch, heads, nq, nk),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, None, None, 1, nk), lambda b, h, i, j: (b, h, i, 0, 0)),
      out_shape=jax.ShapeDtypeStruct((batch, heads, nq, 1, nk), jnp.float32),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret, name="block_mass_tpu",
  )(*args)
  return out[..., 0, :]
