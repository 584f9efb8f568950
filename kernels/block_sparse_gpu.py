"""Block-sparse flash attention for NVIDIA GPUs: Pallas kernels lowered through Triton.

Three kernels, each over a grid (blocks, B, H) so that neighbouring programs share one head's
K and V in L2:
  forward  one query block: walks its listed key blocks with an online softmax -> out, lse
  dq       one query block: walks the same key blocks again -> dq
  dkv      one key block: walks the transposed tables (the query blocks that see it) -> dk, dv
Splitting dq from dk/dv is what lets the backward run without atomics: every output block has
exactly one writer. Everything runs in base 2 (exp2 of logits scaled by log2(e)), with -inf for
masked logits and guards so that a row that sees nothing gives zeros, not NaN.

The same kernels run on CPU with interpret=True (the tests). Layout: q, k, v [B, L, H, D] with L
a multiple of the block sizes and D a power of two of at least 16 (the wrapper in
`block_sparse_attention` pads to these).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from kernels.kernel_config import KernelConfig

LOG2_E = math.log2(math.e)


def _table_index(size: int):
  """Index map for a [B|1] or [H|1] table dimension: 0 when the table is shared."""
  return (lambda x: x) if size > 1 else (lambda x: 0)


def _table_specs(indices, counts):
  """Block specs giving each program its row of indices [Kmax] and the counts [nQ] of its head."""
  bi, hi = _table_index(indices.shape[0]), _table_index(indices.shape[1])
  width, rows = indices.shape[-1], counts.shape[-1]
  return [pl.BlockSpec((None, None, None, width), lambda n, b, h: (bi(b), hi(h), n, 0)),
          pl.BlockSpec((None, None, rows), lambda n, b, h: (bi(b), hi(h), 0))]


def _logit_mask(cfg: KernelConfig, q_segments, kv_segments, kv_start):
  """bool [bq, bk] of the pairs that may attend, or None when every pair may."""
  mask = None
  if q_segments is not None:
    mask = q_segments[:, None] == kv_segments[None, :]
  if cfg.kv_len != cfg.kv_len_padded:  # the last key blocks run past the keys
    in_range = (kv_start + jnp.arange(cfg.block_k) < cfg.kv_len)[None, :]
    mask = in_range if mask is None else mask & in_range
  return mask


def _scaled_logits(cfg: KernelConfig, q, k, mask):
  """q [bq, D], k [bk, D] -> logits in base 2, float32 [bq, bk]; -inf where masked."""
  s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * (cfg.scale * LOG2_E)
  return s if mask is None else jnp.where(mask, s, -jnp.inf)


def _compiler_params(cfg: KernelConfig, head_dim: int):
  num_warps = cfg.num_warps or (4 if head_dim <= 64 else 8)
  return pl_triton.CompilerParams(num_warps=num_warps, num_stages=cfg.num_stages or 2)


# ----------------------------------------------------------------------------------- forward


def _forward_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, *refs, cfg: KernelConfig):
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, out_ref, lse_ref = refs
  else:
    (out_ref, lse_ref), q_seg_ref, kv_seg_ref = refs, None, None
  block_q, block_k = cfg.block_q, cfg.block_k
  q = q_ref[...]  # [bq, D]
  q_segments = None if q_seg_ref is None else q_seg_ref[...]

  def visit(j, carry):
    acc, m, l = carry
    start = pl.multiple_of(indices_ref[j] * block_k, block_k)
    span = pl.ds(start, block_k)
    kv_segments = None if kv_seg_ref is None else kv_seg_ref[span]
    s = _scaled_logits(cfg, q, k_ref[span, :], _logit_mask(cfg, q_segments, kv_segments, start))
    m_next = jnp.maximum(m, s.max(axis=1))
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # a row with nothing yet stays at 0
    p = jnp.exp2(s - m_safe[:, None])
    rescale = jnp.exp2(m - m_safe)
    v = v_ref[span, :]
    acc = acc * rescale[:, None] + jnp.dot(p.astype(v.dtype), v,
                                           preferred_element_type=jnp.float32)
    return acc, m_next, l * rescale + p.sum(axis=1)

  carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
           jnp.zeros((block_q,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(0, counts_ref[pl.program_id(0)], visit, carry)
  empty = l == 0.0
  out_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(out_ref.dtype)
  lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log2(jnp.where(empty, 1.0, l)))


def forward(q, k, v, q_segments, kv_segments, tables, cfg: KernelConfig):
  """-> out [B, Lq, H, D] in q's dtype, lse2 float32 [B, H, Lq] (base 2; -inf on empty rows)."""
  batch, q_len, heads, dim = q.shape
  kv_len_padded = k.shape[1]
  grid = (q_len // cfg.block_q, batch, heads)
  q_block = pl.BlockSpec((None, cfg.block_q, None, dim), lambda n, b, h: (b, n, h, 0))
  whole_kv = pl.BlockSpec((None, kv_len_padded, None, dim), lambda n, b, h: (b, 0, h, 0))
  in_specs = _table_specs(tables.kv_indices, tables.kv_counts) + [q_block, whole_kv, whole_kv]
  args = [tables.kv_indices, tables.kv_counts, q, k, v]
  if cfg.has_segments:
    in_specs += [pl.BlockSpec((None, cfg.block_q), lambda n, b, h: (b, n)),
                 pl.BlockSpec((None, kv_len_padded), lambda n, b, h: (b, 0))]
    args += [q_segments, kv_segments]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32)]
  out_specs = [q_block, pl.BlockSpec((None, None, cfg.block_q), lambda n, b, h: (b, h, n))]
  return pl.pallas_call(
      functools.partial(_forward_kernel, cfg=cfg), grid=grid, in_specs=in_specs,
      out_specs=out_specs, out_shape=out_shape, interpret=cfg.interpret,
      compiler_params=_compiler_params(cfg, dim), name="block_sparse_attention_fwd")(*args)


# ---------------------------------------------------------------------------------- backward


def _dq_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
               cfg: KernelConfig):
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, dq_ref = refs
  else:
    (dq_ref,), q_seg_ref, kv_seg_ref = refs, None, None
  block_k = cfg.block_k
  q, do = q_ref[...], do_ref[...]  # [bq, D]
  lse, delta = lse_ref[...], delta_ref[...]  # [bq]; lse is +inf on empty rows, so p = 0 there
  q_segments = None if q_seg_ref is None else q_seg_ref[...]

  def visit(j, dq):
    start = pl.multiple_of(indices_ref[j] * block_k, block_k)
    span = pl.ds(start, block_k)
    kv_segments = None if kv_seg_ref is None else kv_seg_ref[span]
    k = k_ref[span, :]
    s = _scaled_logits(cfg, q, k, _logit_mask(cfg, q_segments, kv_segments, start))
    p = jnp.exp2(s - lse[:, None])
    dp = jnp.dot(do, v_ref[span, :].T, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None])
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  dq = jax.lax.fori_loop(0, counts_ref[pl.program_id(0)], visit,
                         jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
                cfg: KernelConfig):
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, dk_ref, dv_ref = refs
  else:
    (dk_ref, dv_ref), q_seg_ref, kv_seg_ref = refs, None, None
  block_q = cfg.block_q
  k, v = k_ref[...], v_ref[...]  # [bk, D]
  kv_start = pl.program_id(0) * cfg.block_k
  kv_segments = None if kv_seg_ref is None else kv_seg_ref[...]

  def visit(j, carry):
    dk, dv = carry
    start = pl.multiple_of(indices_ref[j] * block_q, block_q)
    span = pl.ds(start, block_q)
    q_segments = None if q_seg_ref is None else q_seg_ref[span]
    q, do = q_ref[span, :], do_ref[span, :]
    s = _scaled_logits(cfg, q, k, _logit_mask(cfg, q_segments, kv_segments, kv_start))
    p = jnp.exp2(s - lse_ref[span][:, None])  # [bq, bk]
    dv = dv + jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
    dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_ref[span][:, None])
    dk = dk + jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, counts_ref[pl.program_id(0)], visit, (zeros, zeros))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(q, k, v, q_segments, kv_segments, tables, do, lse2, delta, cfg: KernelConfig):
  """-> dq, dk, dv. lse2 [B, H, Lq] is base 2 with +inf on empty rows; delta [B, H, Lq]."""
  batch, q_len, heads, dim = q.shape
  kv_len_padded = k.shape[1]
  params = _compiler_params(cfg, dim)
  q_block = pl.BlockSpec((None, cfg.block_q, None, dim), lambda n, b, h: (b, n, h, 0))
  k_block = pl.BlockSpec((None, cfg.block_k, None, dim), lambda n, b, h: (b, n, h, 0))
  whole_q = pl.BlockSpec((None, q_len, None, dim), lambda n, b, h: (b, 0, h, 0))
  whole_kv = pl.BlockSpec((None, kv_len_padded, None, dim), lambda n, b, h: (b, 0, h, 0))
  row_block = pl.BlockSpec((None, None, cfg.block_q), lambda n, b, h: (b, h, n))
  whole_row = pl.BlockSpec((None, None, q_len), lambda n, b, h: (b, h, 0))
  segments = [q_segments, kv_segments] if cfg.has_segments else []

  dq_specs = (_table_specs(tables.kv_indices, tables.kv_counts)
              + [q_block, whole_kv, whole_kv, q_block, row_block, row_block])
  if cfg.has_segments:
    dq_specs += [pl.BlockSpec((None, cfg.block_q), lambda n, b, h: (b, n)),
                 pl.BlockSpec((None, kv_len_padded), lambda n, b, h: (b, 0))]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg), grid=(q_len // cfg.block_q, batch, heads),
      in_specs=dq_specs, out_specs=q_block, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=cfg.interpret, compiler_params=params, name="block_sparse_attention_dq",
  )(tables.kv_indices, tables.kv_counts, q, k, v, do, lse2, delta, *segments)

  dkv_specs = (_table_specs(tables.q_indices, tables.q_counts)
               + [whole_q, k_block, k_block, whole_q, whole_row, whole_row])
  if cfg.has_segments:
    dkv_specs += [pl.BlockSpec((None, q_len), lambda n, b, h: (b, 0)),
                  pl.BlockSpec((None, cfg.block_k), lambda n, b, h: (b, n))]
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg), grid=(kv_len_padded // cfg.block_k, batch, heads),
      in_specs=dkv_specs, out_specs=[k_block, k_block],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=cfg.interpret, compiler_params=params, name="block_sparse_attention_dkv",
  )(tables.q_indices, tables.q_counts, q, k, v, do, lse2, delta, *segments)
  return dq, dk, dv
