"""Block attention mass: how much softmax weight each (query block, key block) pair carries.

    mass[b, h, i, j] = sum over queries q in block i, keys k in block j of exp(q.k * scale - lse_q)

with lse_q the float32 log-sum-exp of query q's logits (from the dense pass, or cached from an
earlier search). With the exact lse every query's masses sum to 1 over the key blocks, so a row
of blocks sums to block_q. The kernel computes QK^T once per block pair and never touches V
(AdaSpa's search pass); `block_mass_reference` beside it is the plain XLA version.

Layout as everywhere: q [B, Lq, H, D], k [B, Lk, H, D]; lse float32 [B, H, Lq] (natural log);
segment_ids int32 [B, Lq] (and kv_segment_ids [B, Lk]) restrict each query to keys of its
segment, as in the attention whose lse it is (e.g. padded text tokens).
The Pallas kernel lowers through Triton on GPUs and runs interpreted on CPU; on TPU the XLA
reference is used (its [Lq, Lk] logits are made per block pair by XLA's fusion, not stored).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from kernels.kernel_config import check_block_sizes

LOG2_E = math.log2(math.e)


def block_mass_reference(q, k, lse, *, block_q: int, block_k: int, scale: float | None = None,
                         segment_ids=None, kv_segment_ids=None):
  """float32 [B, H, nQ, nK]: the mass of each block pair, in float32 XLA."""
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST) * scale
  finite = jnp.isfinite(lse)[..., None]
  weights = jnp.where(finite, jnp.exp(logits - jnp.where(finite, lse[..., None], 0)), 0)
  if segment_ids is not None:
    kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    same = segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]
    weights = jnp.where(same, weights, 0)
  lq, lk = q.shape[1], k.shape[1]
  nq, nk = -(-lq // block_q), -(-lk // block_k)
  weights = jnp.pad(weights, ((0, 0), (0, 0), (0, nq * block_q - lq), (0, nk * block_k - lk)))
  b, h = weights.shape[:2]
  return weights.reshape(b, h, nq, block_q, nk, block_k).sum(axis=(3, 5))


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


def block_mass(q, k, lse, *, block_q: int, block_k: int, scale: float | None = None,
               segment_ids=None, kv_segment_ids=None, backend: str | None = None,
               interpret: bool | None = None):
  """float32 [B, H, nQ, nK]: the mass of each block pair (the Pallas kernel; see module doc)."""
  backend = backend or jax.default_backend()
  if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"q {q.shape} and k {k.shape} must share batch, heads and head dim")
  if lse.shape != (q.shape[0], q.shape[2], q.shape[1]):
    raise ValueError(f"lse must be [B, H, Lq] = {(q.shape[0], q.shape[2], q.shape[1])}, got "
                     f"{lse.shape}: pass the log-sum-exp of these queries")
  check_block_sizes(block_q, block_k)
  if kv_segment_ids is not None and segment_ids is None:
    raise ValueError("kv_segment_ids needs segment_ids (the queries' segments)")
  if segment_ids is not None:
    kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    if segment_ids.shape != q.shape[:2] or kv_segment_ids.shape != k.shape[:2]:
      raise ValueError(f"segment ids must be [B, Lq] {q.shape[:2]} and [B, Lk] {k.shape[:2]}; "
                       f"got {segment_ids.shape} and {kv_segment_ids.shape}")
  if backend == "tpu":
    return block_mass_reference(q, k, lse, block_q=block_q, block_k=block_k, scale=scale,
                                segment_ids=segment_ids, kv_segment_ids=kv_segment_ids)
  interpret = (backend == "cpu") if interpret is None else interpret
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  batch, q_len, heads, dim = q.shape
  kv_len = k.shape[1]
  nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
  q = jnp.pad(q, ((0, 0), (0, nq * block_q - q_len), (0, 0), (0, 0)))
  k = jnp.pad(k, ((0, 0), (0, nk * block_k - kv_len), (0, 0), (0, 0)))
  lse = jnp.pad(lse.astype(jnp.float32), ((0, 0), (0, 0), (0, nq * block_q - q_len)),
                constant_values=jnp.inf)
  width = 1 << (nk - 1).bit_length()  # a power of two for Triton; sliced to nK below
  in_specs = [pl.BlockSpec((None, block_q, None, dim), lambda n, b, h: (b, n, h, 0)),
              pl.BlockSpec((None, nk * block_k, None, dim), lambda n, b, h: (b, 0, h, 0)),
              pl.BlockSpec((None, None, block_q), lambda n, b, h: (b, h, n))]
  args = [q, k, lse]
  if segment_ids is not None:  # padding queries and keys get segment -1: no mass
    args += [jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, nq * block_q - q_len)),
                     constant_values=-1),
             jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, nk * block_k - kv_len)),
                     constant_values=-1)]
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
