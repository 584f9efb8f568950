"""The kernels lower for the real hardware, checked without it: jax.export lowers a jitted
function for another platform, which runs Pallas's Triton lowering (CUDA) and Mosaic lowering
(TPU) on this CPU. It catches what interpret mode cannot: ops with no lowering rule, tile shapes
the hardware rejects, Triton's power-of-two tensors. (The final compile to PTX or TPU code still
needs the device.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from kernels.block_sparse_attention import sparse_attention
from kernels.block_tables import PatternTables

TARGETS = {"gpu": ("cuda", "__gpu$xla.gpu.triton"), "tpu": ("tpu", "tpu_custom_call")}


def exported_kernel_calls(backend, dtype, head_dim, segments, **tuning):
  """Lowers forward and backward for the backend's platform; -> how many kernels each holds."""
  platform, target = TARGETS[backend]
  mask = np.random.default_rng(0).random((1, 3, 8, 8)) < 0.3
  pattern = PatternTables.from_mask(mask, block_q=128, block_k=128)
  shape = jax.ShapeDtypeStruct((2, 1000, 3, head_dim), dtype)  # 1000: padded to 8 blocks
  ids = jax.ShapeDtypeStruct((2, 1000), jnp.int32)

  def forward(q, k, v, segment_ids):
    return sparse_attention(q, k, v, pattern, backend=backend, interpret=False,
                            segment_ids=segment_ids if segments else None, return_lse=True,
                            **tuning)

  def gradients(q, k, v, segment_ids):
    loss = lambda q, k, v: forward(q, k, v, segment_ids)[0].astype(jnp.float32).sum()
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  counts = []
  for fn in (forward, gradients):
    exported = export.export(jax.jit(fn), platforms=[platform],
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(
                                 shape, shape, shape, ids)
    counts.append(exported.mlir_module().count(f"@{target}"))
  return counts


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("dtype,head_dim,segments", [(jnp.bfloat16, 128, True),
                                                     (jnp.bfloat16, 64, False),
                                                     (jnp.float32, 128, False)])
def test_forward_and_backward_lower_for_the_device(backend, dtype, head_dim, segments):
  # The forward is one kernel; the gradient runs the forward, then the dq and dk/dv kernels.
  assert exported_kernel_calls(backend, dtype, head_dim, segments) == [1, 3]


def test_gpu_kernels_lower_at_smaller_tiles_and_other_warps():
  assert exported_kernel_calls("gpu", jnp.bfloat16, 128, True, forward_blocks=(128, 64),
                               backward_blocks=(64, 128), num_warps=4, num_stages=3) == [1, 3]


@pytest.mark.parametrize("segments", [False, True])
def test_the_block_mass_kernel_lowers_for_gpus(segments):
  from kernels.attention_search import fused_search  # pylint: disable=g-import-not-at-top
  platform, target = TARGETS["gpu"]
  shape = jax.ShapeDtypeStruct((1, 1000, 3, 128), jnp.bfloat16)  # 1000: padded to 8 blocks
  ids = jax.ShapeDtypeStruct((1, 1000), jnp.int32)

  def search(q, k, v, segment_ids):
    return fused_search(q, k, v, block_q=128, block_k=128, backend="gpu", interpret=False,
                        segment_ids=segment_ids if segments else None)

  exported = export.export(jax.jit(search), platforms=[platform],
                           disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(
                               shape, shape, shape, ids)
  assert exported.mlir_module().count(f"@{target}") == 2  # the dense pass, then the mass pass
