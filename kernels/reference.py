"""The pure-XLA reference for block-sparse attention: dense masked softmax in float32.

Slow and memory-hungry (it builds the [B, H, Lq, Lk] logits), and obviously right: the kernels'
tests compare against it.
"""
import jax
import jax.numpy as jnp

from kernels.block_tables import tables_to_mask


def token_mask(kv_indices, kv_counts, *, block_q: int, block_k: int, q_len: int, kv_len: int,
               segment_ids=None, kv_segment_ids=None):
  """bool [B, H, Lq, Lk]: the block pattern at token resolution, and same-segment pairs only."""
  num_kv_blocks = -(-kv_len // block_k)
  blocks = tables_to_mask(kv_indices, kv_counts, num_kv_blocks)  # [B, H, nQ, nK]
  mask = jnp.repeat(jnp.repeat(blocks, block_q, axis=-2), block_k, axis=-1)
  mask = mask[..., :q_len, :kv_len]
  if segment_ids is not None:
    kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    same = segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # [B, Lq, Lk]
    mask = mask & same[:, None]
  return mask


def block_sparse_attention_reference(q, k, v, kv_indices, kv_counts, *, block_q: int,
                                     block_k: int, scale: float | None = None,
                                     segment_ids=None, kv_segment_ids=None):
  """Attention of q [B, Lq, H, D] over k, v [B, Lk, H, D] restricted to the listed key blocks.

  Returns (out [B, Lq, H, D] in q's dtype, lse float32 [B, H, Lq]). A query row that sees no
  key gives zeros and lse = -inf.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  mask = token_mask(kv_indices, kv_counts, block_q=block_q, block_k=block_k, q_len=q.shape[1],
                    kv_len=k.shape[1], segment_ids=segment_ids, kv_segment_ids=kv_segment_ids)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST) * scale
  logits = jnp.where(mask, logits, -jnp.inf)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, H, Lq]; -inf on empty rows
  weights = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(lse), lse, 0)[..., None]), 0)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(q.dtype), lse
