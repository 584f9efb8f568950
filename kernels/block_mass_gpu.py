"""The block-mass pass for NVIDIA GPUs: a Pallas kernel lowered through Triton.

Grid (nQ, B, H): one program per query block walks every key block of its head with a
fori_loop, one QK^T per block pair, and writes the row of masses. Runs interpreted on CPU (the
tests). Inputs are padded by kernels/block_mass.py: lengths to whole blocks, the head dim to a
power of two, lse to +inf on padded queries, segment ids to -1 on padded tokens.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

LOG2_E = math.log2(math.e)


def _mass_kernel(q_ref, k_ref, lse_ref, *refs, block_k: int, num_kv_blocks: int, kv_len: int,
                 scale: float, has_segments: bool):
  if has_segments:
    q_segments_ref, kv_segments_ref, out_ref = refs
  else:
    (out_ref,) = refs
  q = q_ref[...]                                   # [block_q, D]
  lse2 = lse_ref[...] * LOG2_E                     # [block_q]; +inf on padded queries
  empty = lse2 == -jnp.inf
  lse2 = jnp.where(empty, jnp.inf, lse2)           # a row that saw nothing has no mass
  width = out_ref.shape[-1]
  columns = jax.lax.broadcasted_iota(jnp.int32, (width,), 0)

  def visit(j, row):
    k = k_ref[pl.ds(j * block_k, block_k), :]      # [block_k, D]
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * (scale * LOG2_E)
    if kv_len % block_k:  # the last block holds padding keys
      keys = j * block_k + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
      s = jnp.where(keys < kv_len, s, -jnp.inf)
    if has_segments:
      kv_segments = kv_segments_ref[pl.ds(j * block_k, block_k)]
      s = jnp.where(q_segments_ref[...][:, None] == kv_segments[None, :], s, -jnp.inf)
    mass = jnp.sum(jnp.exp2(s - lse2[:, None]))
    return jnp.where(columns == j, mass, row)

  out_ref[...] = jax.lax.fori_loop(0, num_kv_blocks, visit, jnp.zeros((width,), jnp.float32))


def block_mass(q, k, lse, segment_ids, kv_segment_ids, *, block_q: int, block_k: int,
               kv_len: int, scale: float, interpret: bool):
  """Padded q [B, nQ*bq, H, D], k [B, nK*bk, H, D], lse float32 [B, H, nQ*bq] (natural log),
  segment ids [B, L] or None -> float32 [B, H, nQ, nK]."""
  batch, q_len, heads, dim = q.shape
  nq, nk = q_len // block_q, k.shape[1] // block_k
  width = 1 << (nk - 1).bit_length()  # a power of two for Triton; sliced to nK below
  in_specs = [pl.BlockSpec((None, block_q, None, dim), lambda n, b, h: (b, n, h, 0)),
              pl.BlockSpec((None, nk * block_k, None, dim), lambda n, b, h: (b, 0, h, 0)),
              pl.BlockSpec((None, None, block_q), lambda n, b, h: (b, h, n))]
  args = [q, k, lse]
  if segment_ids is not None:
    args += [segment_ids, kv_segment_ids]
    in_specs += [pl.BlockSpec((None, block_q), lambda n, b, h: (b, n)),
                 pl.BlockSpec((None, nk * block_k), lambda n, b, h: (b, 0))]
  out = pl.pallas_call(
      functools.partial(_mass_kernel, block_k=block_k, num_kv_blocks=nk, kv_len=kv_len,
                        scale=scale, has_segments=segment_ids is not None),
      grid=(nq, batch, heads),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, None, None, width), lambda n, b, h: (b, h, n, 0)),
      out_shape=jax.ShapeDtypeStruct((batch, heads, nq, width), jnp.float32),
      interpret=interpret, name="block_mass",
      compiler_params=pl_triton.CompilerParams(num_warps=4 if dim <= 64 else 8, num_stages=2),
  )(*args)
  return out[..., :nk]
