"""Block-sparse flash attention for TPUs: Pallas TPU kernels with the tables as scalar prefetch.

The tables go to SMEM before the grid starts (PrefetchScalarGridSpec), and the block specs' index
maps read them, so the pipeline DMAs exactly the listed key blocks into VMEM. The grid is
(B, H, row blocks, table width); the last axis walks a row's table. Steps past a row's count
compute nothing, and since padding entries repeat the last listed block, their index maps ask for
the block already in VMEM and no copy is issued. Accumulators live in VMEM scratch across that
axis, as in splash attention:
  forward  (B, H, nQ, Kmax): m, l, acc -> out, lse
  dq       (B, H, nQ, Kmax): dq
  dkv      (B, H, nK, Qmax) over the transposed tables: dk, dv

Runs on CPU through Pallas's TPU interpret mode (interpret=pltpu.InterpretParams()), which is
how the tests check it. Layout here is [B, H, L, D]; the entry points take and give [B, L, H, D].
Per-row statistics are [rows, 1] columns, which broadcast against [rows, cols] tiles.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.kernel_config import KernelConfig

LOG2_E = math.log2(math.e)
NT = (((1,), (1,)), ((), ()))  # a [m, d] x b [n, d] -> [m, n]
TN = (((0,), (0,)), ((), ()))  # a [d, m] x b [d, n] -> [m, n]


def _dot(a, b, dims=(((1,), (0,)), ((), ()))):
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _table_lookup(indices_shape):
  """(b, h) -> the table's (b, h): 0 along a dimension the table shares."""
  shared_b, shared_h = indices_shape[0] == 1, indices_shape[1] == 1
  return lambda b, h: (0 if shared_b else b, 0 if shared_h else h)


def _listed_block(indices_shape):
  """Index-map helper: (b, h, row, j, indices, counts) -> the j-th block listed for the row."""
  lookup = _table_lookup(indices_shape)
  return lambda b, h, row, j, indices, counts: indices[(*lookup(b, h), row, j)]


def _own_block(b, h, row, j, *_):
  """Index-map helper: the grid row's own block."""
  return row


def _walk_tables(kernel, indices, counts, operands, *, grid, in_specs, out_specs, scratch,
                 out_shape, cfg: KernelConfig, name: str):
  """pallas_call over grid (B, H, rows, table width) with the tables as scalar prefetch."""
  grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2, grid=grid, in_specs=in_specs,
                                           out_specs=out_specs, scratch_shapes=scratch)
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg, lookup=_table_lookup(indices.shape)),
      grid_spec=grid_spec, out_shape=out_shape, compiler_params=_semantics(),
      interpret=cfg.interpret, name=name)(indices, counts, *operands)


def _logit_mask(cfg: KernelConfig, q_segments, kv_segments, kv_start):
  """bool [bq, bk] (or broadcastable) of the pairs that may attend, or None for all."""
  mask = None
  if q_segments is not None:
    mask = q_segments == kv_segments  # [bq, 1] == [1, bk]
  if cfg.kv_len != cfg.kv_len_padded:
    positions = kv_start + jax.lax.broadcasted_iota(jnp.int32, (1, cfg.block_k), 1)
    in_range = positions < cfg.kv_len
    mask = in_range if mask is None else mask & in_range
  return mask


def _logits(cfg: KernelConfig, q, k, mask):
  s = _dot(q, k, NT) * (cfg.scale * LOG2_E)  # base 2, float32 [bq, bk]
  return s if mask is None else jnp.where(mask, s, -jnp.inf)


def _semantics():
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _segment_arrays(cfg, q_segments, kv_segments):
  """Segment ids as a column [B, Lq, 1] and a row [B, 1, Lk], the shapes their tiles need."""
  if not cfg.has_segments:
    return []
  return [q_segments[:, :, None], kv_segments[:, None, :]]


def _segment_specs(cfg, q_block_of, kv_block_of):
  """Block specs for _segment_arrays, given index maps to the query and key block numbers."""
  if not cfg.has_segments:
    return []
  return [pl.BlockSpec((None, cfg.block_q, 1), lambda *a: (a[0], q_block_of(*a), 0)),
          pl.BlockSpec((None, 1, cfg.block_k), lambda *a: (a[0], 0, kv_block_of(*a)))]


# ----------------------------------------------------------------------------------- forward


def _forward_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, *refs, cfg: KernelConfig,
                    lookup):
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  else:
    out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  b, h, i, j = (pl.program_id(a) for a in range(4))
  tb, th = lookup(b, h)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(j < counts_ref[tb, th, i])
  def _visit():
    kv_start = indices_ref[tb, th, i, j] * cfg.block_k
    segments = (q_seg_ref[...], kv_seg_ref[...]) if cfg.has_segments else (None, None)
    s = _logits(cfg, q_ref[...], k_ref[...], _logit_mask(cfg, *segments, kv_start))
    m_prev = m_ref[...]  # [bq, 1]
    m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)
    p = jnp.exp2(s - m_safe)
    rescale = jnp.exp2(m_prev - m_safe)
    l_ref[...] = l_ref[...] * rescale + p.sum(axis=1, keepdims=True)
    acc_ref[...] = acc_ref[...] * rescale + _dot(p.astype(v_ref.dtype), v_ref[...])
    m_ref[...] = m_next

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_ref[...]
    empty = l == 0.0
    out_ref[...] = (acc_ref[...] / jnp.where(empty, 1.0, l)).astype(out_ref.dtype)
    lse_ref[...] = jnp.where(empty, -jnp.inf, m_ref[...] + jnp.log2(jnp.where(empty, 1.0, l)))


def forward(q, k, v, q_segments, kv_segments, tables, cfg: KernelConfig):
  """-> out [B, Lq, H, D], lse2 float32 [B, H, Lq] (base 2; -inf on empty rows)."""
  q, k, v = (x.swapaxes(1, 2) for x in (q, k, v))  # [B, H, L, D]
  batch, heads, q_len, dim = q.shape
  kv_block = _listed_block(tables.kv_indices.shape)
  q_spec = pl.BlockSpec((None, None, cfg.block_q, dim), lambda b, h, i, j, *_: (b, h, i, 0))
  kv_spec = pl.BlockSpec((None, None, cfg.block_k, dim),
                         lambda b, h, i, j, *t: (b, h, kv_block(b, h, i, j, *t), 0))
  lse_spec = pl.BlockSpec((None, None, cfg.block_q, 1), lambda b, h, i, j, *_: (b, h, i, 0))
  out, lse2 = _walk_tables(
      _forward_kernel, tables.kv_indices, tables.kv_counts,
      [q, k, v, *_segment_arrays(cfg, q_segments, kv_segments)],
      grid=(batch, heads, q_len // cfg.block_q, tables.kv_indices.shape[-1]),
      in_specs=[q_spec, kv_spec, kv_spec] + _segment_specs(cfg, _own_block, kv_block),
      out_specs=[q_spec, lse_spec],
      scratch=[pltpu.VMEM((cfg.block_q, 1), jnp.float32),
               pltpu.VMEM((cfg.block_q, 1), jnp.float32),
               pltpu.VMEM((cfg.block_q, dim), jnp.float32)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, q_len, 1), jnp.float32)],
      cfg=cfg, name="block_sparse_attention_fwd_tpu")
  return out.swapaxes(1, 2), lse2[..., 0]


# ---------------------------------------------------------------------------------- backward


def _dq_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
               cfg: KernelConfig, lookup):
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, dq_ref, dq_acc_ref = refs
  else:
    dq_ref, dq_acc_ref = refs
  b, h, i, j = (pl.program_id(a) for a in range(4))
  tb, th = lookup(b, h)

  @pl.when(j == 0)
  def _init():
    dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

  @pl.when(j < counts_ref[tb, th, i])
  def _visit():
    kv_start = indices_ref[tb, th, i, j] * cfg.block_k
    segments = (q_seg_ref[...], kv_seg_ref[...]) if cfg.has_segments else (None, None)
    k = k_ref[...]
    s = _logits(cfg, q_ref[...], k, _logit_mask(cfg, *segments, kv_start))
    p = jnp.exp2(s - lse_ref[...])  # lse is +inf on empty rows: p = 0 there
    ds = p * (_dot(do_ref[...], v_ref[...], NT) - delta_ref[...])
    dq_acc_ref[...] += _dot(ds.astype(k.dtype), k)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_acc_ref[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(indices_ref, counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
                cfg: KernelConfig, lookup):
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
  else:
    dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
  b, h, n, j = (pl.program_id(a) for a in range(4))
  tb, th = lookup(b, h)

  @pl.when(j == 0)
  def _init():
    dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  @pl.when(j < counts_ref[tb, th, n])
  def _visit():
    segments = (q_seg_ref[...], kv_seg_ref[...]) if cfg.has_segments else (None, None)
    q, do = q_ref[...], do_ref[...]
    s = _logits(cfg, q, k_ref[...], _logit_mask(cfg, *segments, n * cfg.block_k))
    p = jnp.exp2(s - lse_ref[...])  # [bq, bk]
    dv_acc_ref[...] += _dot(p.astype(do.dtype), do, TN)
    ds = p * (_dot(do, v_ref[...], NT) - delta_ref[...])
    dk_acc_ref[...] += _dot(ds.astype(q.dtype), q, TN)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = (dk_acc_ref[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


def backward(q, k, v, q_segments, kv_segments, tables, do, lse2, delta, cfg: KernelConfig):
  """-> dq, dk, dv [B, L, H, D]. lse2 [B, H, Lq] base 2 with +inf on empty rows; delta alike."""
  q, k, v, do = (x.swapaxes(1, 2) for x in (q, k, v, do))  # [B, H, L, D]
  lse2, delta = lse2[..., None], delta[..., None]  # [B, H, Lq, 1]
  batch, heads, q_len, dim = q.shape
  kv_len_padded = k.shape[2]
  segments = _segment_arrays(cfg, q_segments, kv_segments)

  def row_specs(q_block_of):
    """Specs for q, do (tiles) and lse, delta (columns) at query block q_block_of(grid...)."""
    tile = pl.BlockSpec((None, None, cfg.block_q, dim),
                        lambda b, h, n, j, *t: (b, h, q_block_of(b, h, n, j, *t), 0))
    column = pl.BlockSpec((None, None, cfg.block_q, 1),
                          lambda b, h, n, j, *t: (b, h, q_block_of(b, h, n, j, *t), 0))
    return tile, column

  def key_spec(kv_block_of):
    return pl.BlockSpec((None, None, cfg.block_k, dim),
                        lambda b, h, n, j, *t: (b, h, kv_block_of(b, h, n, j, *t), 0))

  operands = [q, k, v, do, lse2, delta, *segments]
  # dq: query block i walks its key blocks, as in the forward.
  listed_kv = _listed_block(tables.kv_indices.shape)
  q_tile, q_column = row_specs(_own_block)
  dq = _walk_tables(
      _dq_kernel, tables.kv_indices, tables.kv_counts, operands,
      grid=(batch, heads, q_len // cfg.block_q, tables.kv_indices.shape[-1]),
      in_specs=[q_tile, key_spec(listed_kv), key_spec(listed_kv), q_tile, q_column, q_column]
      + _segment_specs(cfg, _own_block, listed_kv),
      out_specs=q_tile, scratch=[pltpu.VMEM((cfg.block_q, dim), jnp.float32)],
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), cfg=cfg,
      name="block_sparse_attention_dq_tpu")

  # dk, dv: key block n walks the query blocks that see it (the transposed tables).
  listed_q = _listed_block(tables.q_indices.shape)
  q_tile, q_column = row_specs(listed_q)
  k_tile = key_spec(_own_block)
  dk, dv = _walk_tables(
      _dkv_kernel, tables.q_indices, tables.q_counts, operands,
      grid=(batch, heads, kv_len_padded // cfg.block_k, tables.q_indices.shape[-1]),
      in_specs=[q_tile, k_tile, k_tile, q_tile, q_column, q_column]
      + _segment_specs(cfg, listed_q, _own_block),
      out_specs=[k_tile, k_tile],
      scratch=[pltpu.VMEM((cfg.block_k, dim), jnp.float32),
               pltpu.VMEM((cfg.block_k, dim), jnp.float32)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      cfg=cfg, name="block_sparse_attention_dkv_tpu")
  return dq.swapaxes(1, 2), dk.swapaxes(1, 2), dv.swapaxes(1, 2)
