"""Block-sparse flash attention: each query block visits only its listed key blocks.

    out = block_sparse_attention(q, k, v, kv_indices, kv_counts, block_q=128, block_k=128)
    out = sparse_attention(q, k, v, pattern)    # pattern: kernels.block_tables.PatternTables

q [B, Lq, H, D], k and v [B, Lk, H, D] in bfloat16, float16 or float32. The pattern lists, for
each (batch, head, query block), the key blocks it attends to (see kernels/block_tables.py);
a row with no block gives zeros. Optional per-token segment ids keep packed sequences apart.
Differentiable (jax.custom_vjp): the backward computes dq from the forward tables and dk, dv from
their transpose, so no two programs write the same block and no atomics are needed.

Backends: "gpu" (Pallas lowered through Triton; on CPU the same kernels run interpreted, which is
what the tests do) and "tpu" (Pallas TPU with the tables as scalar prefetch; on CPU, Pallas's
TPU interpret mode). The default follows jax.default_backend().
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from kernels import block_sparse_gpu, block_sparse_tpu
from kernels.block_tables import PatternTables
from kernels.kernel_config import (MIN_BLOCK, KernelConfig, check_block_sizes, padded_head_dim,
                                   resolve_backend)

KERNELS = {"gpu": block_sparse_gpu, "tpu": block_sparse_tpu}
DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def block_sparse_attention(q, k, v, kv_indices, kv_counts, *, block_q: int = 128,
                           block_k: int = 128, **kwargs):
  """Attention over the key blocks listed in kv_indices int32 [B|1, H|1, nQ, Kmax] (the first
  kv_counts int32 [B|1, H|1, nQ] entries of each row). Keyword arguments as in sparse_attention.

  The backward's transposed tables are built here, inside the trace; to build them once for
  many calls, make a PatternTables and call sparse_attention.
  """
  num_kv_blocks = -(-k.shape[1] // block_k)
  pattern = PatternTables.from_tables(kv_indices, kv_counts, num_kv_blocks=num_kv_blocks,
                                      block_q=block_q, block_k=block_k)
  return sparse_attention(q, k, v, pattern, **kwargs)


def full_pattern(q_len: int, kv_len: int, *, block: int = 128,
                 backend: str | None = None) -> PatternTables:
  """Every block listed (dense attention through the kernels), at blocks of `block` or, for a
  shorter sequence, the smallest the backend's kernels take (GPU 16, TPU 128)."""
  backend, _ = resolve_backend(backend, False)
  return PatternTables.full(q_len, kv_len, block=block, min_block=MIN_BLOCK[backend])


def sparse_attention(q, k, v, pattern: PatternTables, *, scale: float | None = None,
                     segment_ids=None, kv_segment_ids=None, return_lse: bool = False,
                     backend: str | None = None, interpret=None,
                     forward_blocks: tuple[int, int] | None = None,
                     backward_blocks: tuple[int, int] | None = None,
                     num_warps: int | None = None, num_stages: int | None = None):
  """out [B, Lq, H, D] in q's dtype; with return_lse also lse float32 [B, H, Lq] (natural log,
  -inf on rows that see no key).

  scale defaults to D**-0.5. segment_ids int [B, Lq] (and kv_segment_ids [B, Lk], default the
  same) restrict attention to equal ids. backend "gpu" or "tpu" (default: this machine's);
  interpret defaults to True off that backend (kernels.kernel_config.resolve_backend).
  Tuning: forward_blocks and backward_blocks (block_q, block_k) run the kernels on tiles smaller
  than the pattern's blocks (dividing them; the same token pattern), and num_warps, num_stages
  set the GPU kernels' warps and pipelining stages. On GPUs a head dim padded past 128 runs on
  tiles of at most 64 by default (as FlashAttention-2 does at 256), to fit shared memory.
  """
  backend, interpret = resolve_backend(backend, interpret)
  _check_inputs(q, k, v, pattern, segment_ids, kv_segment_ids, backend)
  if backend == "gpu" and padded_head_dim(q.shape[-1]) > 128:
    small = (min(64, pattern.block_q), min(64, pattern.block_k))
    forward_blocks, backward_blocks = forward_blocks or small, backward_blocks or small
  batch, q_len, heads, dim = q.shape
  kv_len = k.shape[1]
  has_segments = segment_ids is not None
  if has_segments:
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
    kv_segment_ids = segment_ids if kv_segment_ids is None else jnp.asarray(kv_segment_ids,
                                                                              jnp.int32)
  forward_pattern, backward_pattern = (
      pattern if blocks is None else pattern.refine(*blocks)
      for blocks in (forward_blocks, backward_blocks))
  for tiles in (forward_pattern, backward_pattern):
    check_block_sizes(tiles.block_q, tiles.block_k, backend)
  cfg = KernelConfig(block_q=forward_pattern.block_q, block_k=forward_pattern.block_k,
                     scale=float(dim ** -0.5 if scale is None else scale), kv_len=kv_len,
                     kv_len_padded=pattern.num_kv_blocks * pattern.block_k,
                     has_segments=has_segments, interpret=interpret, num_warps=num_warps,
                     num_stages=num_stages)
  # Pad the lengths to whole blocks, and (GPU) the head dim to a power of two: zero features
  # change no logit, and the zero outputs they give are sliced off.
  q_pad = pattern.num_q_blocks * pattern.block_q - q_len
  kv_pad = pattern.num_kv_blocks * pattern.block_k - kv_len
  dim_pad = padded_head_dim(dim) - dim if backend == "gpu" else 0
  q = jnp.pad(q, ((0, 0), (0, q_pad), (0, 0), (0, dim_pad)))
  k, v = (jnp.pad(x, ((0, 0), (0, kv_pad), (0, 0), (0, dim_pad))) for x in (k, v))
  if has_segments:
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, q_pad)))
    kv_segment_ids = jnp.pad(kv_segment_ids, ((0, 0), (0, kv_pad)))
  out, lse2 = _attention(q, k, v, segment_ids, kv_segment_ids, forward_pattern,
                         backward_pattern, cfg, backend)
  out = out[:, :q_len, :, :dim]
  if return_lse:
    return out, lse2[:, :, :q_len] * math.log(2.0)
  return out


def _check_inputs(q, k, v, pattern, segment_ids, kv_segment_ids, backend):
  if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError(f"expected q [B, Lq, H, D] and k, v [B, Lk, H, D]; got q {q.shape}, "
                     f"k {k.shape}, v {v.shape}")
  if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
    raise ValueError(f"q {q.shape} and k {k.shape} must agree in batch, heads and head dim")
  if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
    raise ValueError(f"q, k, v must share one dtype of bfloat16, float16, float32; got "
                     f"{q.dtype}, {k.dtype}, {v.dtype}")
  check_block_sizes(pattern.block_q, pattern.block_k, backend)
  batch, q_len, heads, _ = q.shape
  expected = (-(-q_len // pattern.block_q), -(-k.shape[1] // pattern.block_k))
  if (pattern.num_q_blocks, pattern.num_kv_blocks) != expected:
    raise ValueError(
        f"the pattern has {pattern.num_q_blocks} query x {pattern.num_kv_blocks} key blocks but "
        f"Lq={q_len}, Lk={k.shape[1]} at blocks of {pattern.block_q} x {pattern.block_k} make "
        f"{expected[0]} x {expected[1]}: build the pattern for these lengths")
  for name, table in (("kv_indices", pattern.kv_indices), ("q_indices", pattern.q_indices)):
    if table.shape[0] not in (1, batch) or table.shape[1] not in (1, heads):
      raise ValueError(f"{name} has shape {table.shape}; its leading dims must be [B or 1, "
                       f"H or 1] with B={batch}, H={heads}")
  if kv_segment_ids is not None and segment_ids is None:
    raise ValueError("kv_segment_ids needs segment_ids (the queries' ids) as well")
  for name, ids, length in (("segment_ids", segment_ids, q_len),
                            ("kv_segment_ids", kv_segment_ids, k.shape[1])):
    if ids is not None and ids.shape != (batch, length):
      raise ValueError(f"{name} must be [B, L] = {(batch, length)}; got {ids.shape}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _attention(q, k, v, segment_ids, kv_segment_ids, pattern, backward_pattern, cfg, backend):
  """(out, lse2) on padded inputs; lse2 float32 [B, H, Lq] in base 2."""
  return KERNELS[backend].forward(q, k, v, segment_ids, kv_segment_ids, pattern, cfg)


def _attention_fwd(q, k, v, segment_ids, kv_segment_ids, pattern, backward_pattern, cfg,
                   backend):
  out, lse2 = KERNELS[backend].forward(q, k, v, segment_ids, kv_segment_ids, pattern, cfg)
  return (out, lse2), (q, k, v, segment_ids, kv_segment_ids, backward_pattern, out, lse2)


def _attention_bwd(cfg, backend, residuals, cotangents):
  q, k, v, segment_ids, kv_segment_ids, pattern, out, lse2 = residuals
  cfg = dataclasses.replace(cfg, block_q=pattern.block_q, block_k=pattern.block_k)
  d_out, d_lse2 = cotangents
  # delta_i = sum_d dO_id O_id; a cotangent on lse adds p * d_lse to the logits' gradient, which
  # is the same as lowering delta by d_lse (times log2(e): lse2 is in base 2).
  delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
  delta = delta - d_lse2 * math.log2(math.e)
  lse2 = jnp.where(lse2 == -jnp.inf, jnp.inf, lse2)  # rows that saw nothing: p = 0, not NaN
  dq, dk, dv = KERNELS[backend].backward(q, k, v, segment_ids, kv_segment_ids, pattern,
                                          d_out.astype(q.dtype), lse2, delta, cfg)
  return dq, dk, dv, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)
