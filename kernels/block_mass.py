"""Block attention mass: how much softmax weight each (query block, key block) pair carries.

    mass[b, h, i, j] = sum over queries q in block i, keys k in block j of exp(q.k * scale - lse_q)

with lse_q the float32 log-sum-exp of query q's logits (from the dense pass, or cached from an
earlier search). With the exact lse every query's masses sum to 1 over the key blocks, so a row
of blocks sums to block_q. The kernel computes QK^T once per block pair and never touches V
(AdaSpa's search pass); `block_mass_reference` beside it is the plain XLA version, which
materialises the [B, H, Lq, Lk] logits.

Layout as everywhere: q [B, Lq, H, D], k [B, Lk, H, D]; lse float32 [B, H, Lq] (natural log);
segment_ids int32 [B, Lq] (and kv_segment_ids [B, Lk]) restrict each query to keys of its
segment, as in the attention whose lse it is (e.g. padded text tokens).
The kernels: kernels/block_mass_gpu.py (Triton) and kernels/block_mass_tpu.py (Mosaic, one
block pair in VMEM at a time); both run interpreted on CPU. Any head dim: the GPU kernel pads it
to a power of two.
"""
import jax
import jax.numpy as jnp

from kernels import block_mass_gpu, block_mass_tpu
from kernels.kernel_config import check_block_sizes, padded_head_dim, resolve_backend


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


def block_mass(q, k, lse, *, block_q: int, block_k: int, scale: float | None = None,
               segment_ids=None, kv_segment_ids=None, backend: str | None = None,
               interpret=None):
  """float32 [B, H, nQ, nK]: the mass of each block pair (the Pallas kernel; see module doc).

  backend "gpu" (Triton) or "tpu" (Mosaic), by default this machine's; interpret defaults to
  True on CPU (the GPU kernel interpreted, or Pallas's TPU interpret mode).
  """
  backend, interpret = resolve_backend(backend, interpret)
  if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"q {q.shape} and k {k.shape} must share batch, heads and head dim")
  if lse.shape != (q.shape[0], q.shape[2], q.shape[1]):
    raise ValueError(f"lse must be [B, H, Lq] = {(q.shape[0], q.shape[2], q.shape[1])}, got "
                     f"{lse.shape}: pass the log-sum-exp of these queries")
  check_block_sizes(block_q, block_k, backend)
  if kv_segment_ids is not None and segment_ids is None:
    raise ValueError("kv_segment_ids needs segment_ids (the queries' segments)")
  if segment_ids is not None:
    kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    if segment_ids.shape != q.shape[:2] or kv_segment_ids.shape != k.shape[:2]:
      raise ValueError(f"segment ids must be [B, Lq] {q.shape[:2]} and [B, Lk] {k.shape[:2]}; "
                       f"got {segment_ids.shape} and {kv_segment_ids.shape}")
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  q_len, kv_len = q.shape[1], k.shape[1]
  q_pad, kv_pad = -q_len % block_q, -kv_len % block_k
  # Pad the lengths to whole blocks and (GPU) the head dim to a power of two, Triton's tensors'
  # sides: zero features change no logit. Padded queries get lse +inf and segment -1: no mass.
  dim_pad = padded_head_dim(q.shape[-1]) - q.shape[-1] if backend == "gpu" else 0
  q = jnp.pad(q, ((0, 0), (0, q_pad), (0, 0), (0, dim_pad)))
  k = jnp.pad(k, ((0, 0), (0, kv_pad), (0, 0), (0, dim_pad)))
  lse = jnp.pad(lse.astype(jnp.float32), ((0, 0), (0, 0), (0, q_pad)), constant_values=jnp.inf)
  if segment_ids is not None:
    segment_ids = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, q_pad)),
                          constant_values=-1)
    kv_segment_ids = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, kv_pad)),
                             constant_values=-1)
  kernel = block_mass_tpu.block_mass if backend == "tpu" else block_mass_gpu.block_mass
  return kernel(q, k, lse, segment_ids, kv_segment_ids, block_q=block_q, block_k=block_k,
                kv_len=kv_len, scale=scale, interpret=interpret)
