"""The kernels lower for the real hardware, checked without it: jax.export lowers a jitted
function for another platform, which runs Pallas's Triton lowering (CUDA) and Mosaic lowering
(TPU, to the Mosaic dialect) on this CPU. It catches what interpret mode cannot: ops with no
lowering rule, block shapes the lowering rejects, Triton's power-of-two tensors. It does not run
the compilers behind them (Triton to PTX, Mosaic to TPU code: register and shared-memory limits,
TPU layouts), which need the device.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from kernels.attention_search import cached_search, fused_search
from kernels.block_sparse_attention import sparse_attention
from kernels.block_tables import PatternTables

TARGETS = {"gpu": ("cuda", "__gpu$xla.gpu.triton"), "tpu": ("tpu", "tpu_custom_call")}
HEAD_DIMS = [64, 72, 80, 96, 128]  # 72: DiT-XL's 1152 / 16; 80 and 96: other models' heads


def kernel_calls(backend, fn, *shapes):
  """How many kernels `fn` holds once lowered for the backend's platform."""
  platform, target = TARGETS[backend]
  exported = export.export(jax.jit(fn), platforms=[platform],
                           disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(
                               *shapes)
  return exported.mlir_module().count(f"@{target}")


def inputs(dtype, head_dim, length=1000, heads=3):  # 1000: padded to 8 blocks of 128
  return (jax.ShapeDtypeStruct((2, length, heads, head_dim), dtype),
          jax.ShapeDtypeStruct((2, length), jnp.int32),
          jax.ShapeDtypeStruct((2, heads, length), jnp.float32))


def sparse_calls(backend, dtype, head_dim, segments, **tuning):
  """-> kernels in the forward and in the gradient of the block-sparse attention."""
  mask = np.random.default_rng(0).random((1, 3, 8, 8)) < 0.3
  pattern = PatternTables.from_mask(mask, block_q=128, block_k=128)
  qkv, ids, _ = inputs(dtype, head_dim)

  def forward(q, k, v, segment_ids):
    return sparse_attention(q, k, v, pattern, backend=backend, interpret=False,
                            segment_ids=segment_ids if segments else None, return_lse=True,
                            **tuning)

  def gradients(q, k, v, segment_ids):
    loss = lambda q, k, v: forward(q, k, v, segment_ids)[0].astype(jnp.float32).sum()
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  return [kernel_calls(backend, fn, qkv, qkv, qkv, ids) for fn in (forward, gradients)]


def search_calls(backend, dtype, head_dim, segments):
  """-> kernels in AdaSpa's fused search and in its cached search."""
  qkv, ids, lse = inputs(dtype, head_dim)
  search = dict(block_q=128, block_k=128, backend=backend, interpret=False)

  def fused(q, k, v, segment_ids):
    return fused_search(q, k, v, segment_ids=segment_ids if segments else None, **search)

  def cached(q, k, lse, segment_ids):
    return cached_search(q, k, lse, segment_ids=segment_ids if segments else None, **search)

  return [kernel_calls(backend, fused, qkv, qkv, qkv, ids),
          kernel_calls(backend, cached, qkv, qkv, lse, ids)]


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_every_kernel_lowers_at_every_head_dim(backend, head_dim, dtype):
  segments = dtype == jnp.bfloat16  # the segment-id variants in bfloat16, the plain in float32
  # The forward is one kernel; the gradient runs the forward, then the dq and dk/dv kernels.
  assert sparse_calls(backend, dtype, head_dim, segments) == [1, 3]
  # The fused search: the dense pass, then the mass pass; the cached search: the mass pass.
  assert search_calls(backend, dtype, head_dim, segments) == [2, 1]


def test_gpu_kernels_lower_at_smaller_tiles_and_other_warps():
  assert sparse_calls("gpu", jnp.bfloat16, 128, True, forward_blocks=(128, 64),
                      backward_blocks=(64, 128), num_warps=4, num_stages=3) == [1, 3]


@pytest.mark.parametrize("head_dim", [160, 256])
def test_head_dims_past_128_lower_for_gpus(head_dim):
  # Padded to 256, on tiles of 64 (the kernels' default there).
  assert sparse_calls("gpu", jnp.bfloat16, head_dim, True) == [1, 3]
  assert search_calls("gpu", jnp.bfloat16, head_dim, True) == [2, 1]
