"""AdaSpa's online search passes: where each query block's attention mass lies.

  fused_search   dense attention (our kernel over every block, with its float32 lse), then the
                 block-mass pass with that exact lse: the attention output of this step, its
                 lse (to cache) and the masses.
  cached_search  the block-mass pass alone, with the lse cached at the last fused search: one
                 QK^T, no dense pass. On the inputs of that search it gives the same masses.

Each has its XLA reference beside it (`*_reference`), built on kernels/reference.py.
Layout: q, k, v [B, L, H, D]; lse float32 [B, H, Lq]; masses float32 [B, H, nQ, nK];
segment_ids int32 [B, L] as in dit.attention (the DiT's padded text tokens).
"""
from kernels.block_mass import block_mass, block_mass_reference
from kernels.block_sparse_attention import full_pattern, sparse_attention
from kernels.block_tables import PatternTables
from kernels.reference import block_sparse_attention_reference


def fused_search(q, k, v, *, block_q: int, block_k: int, scale: float | None = None,
                 segment_ids=None, backend: str | None = None, interpret=None):
  """-> (out [B, Lq, H, D], lse float32 [B, H, Lq], masses float32 [B, H, nQ, nK])."""
  full = full_pattern(q.shape[1], k.shape[1], block=min(block_q, block_k), backend=backend)
  out, lse = sparse_attention(q, k, v, full, scale=scale, segment_ids=segment_ids,
                              return_lse=True, backend=backend, interpret=interpret)
  masses = block_mass(q, k, lse, block_q=block_q, block_k=block_k, scale=scale,
                      segment_ids=segment_ids, backend=backend, interpret=interpret)
  return out, lse, masses


def cached_search(q, k, lse, *, block_q: int, block_k: int, scale: float | None = None,
                  segment_ids=None, backend: str | None = None, interpret=None):
  """masses float32 [B, H, nQ, nK] with a cached lse (no dense pass)."""
  return block_mass(q, k, lse, block_q=block_q, block_k=block_k, scale=scale,
                    segment_ids=segment_ids, backend=backend, interpret=interpret)


def fused_search_reference(q, k, v, *, block_q: int, block_k: int, scale: float | None = None,
                           segment_ids=None):
  full = PatternTables.full(q.shape[1], k.shape[1], block=min(block_q, block_k))
  out, lse = block_sparse_attention_reference(q, k, v, full.kv_indices, full.kv_counts,
                                              block_q=full.block_q, block_k=full.block_k,
                                              scale=scale, segment_ids=segment_ids)
  masses = block_mass_reference(q, k, lse, block_q=block_q, block_k=block_k, scale=scale,
                                segment_ids=segment_ids)
  return out, lse, masses


def cached_search_reference(q, k, lse, *, block_q: int, block_k: int,
                            scale: float | None = None, segment_ids=None):
  return block_mass_reference(q, k, lse, block_q=block_q, block_k=block_k, scale=scale,
                              segment_ids=segment_ids)
