"""Model FLOPs of a DiT step, counted analytically (attention included), for MFU.

Counted: every matmul of the model (2 FLOPs per multiply-add) — patch and text embeddings, each
block's modulation, QKV, attention logits and values, output projection and SwiGLU MLP, and the
final layer. Attention counts the (query, key) pairs its pattern visits: 4 * pairs * hidden per
block (QK^T and PV). A training step is 3x the forward (the backward is two matmuls per forward
matmul); recomputation under remat is not model FLOPs and is not counted, as in the MFU of the
PaLM and MegaScale papers. Elementwise work (norms, RoPE, softmax) is left out.
"""
from dit import sparsity
from dit.config import DiTConfig
from dit.patchify import patch_grid


def attention_density(config: DiTConfig, grid, num_text: int) -> float:
  """The fraction of (query, key) block pairs the model's static pattern visits (1: full)."""
  pattern = sparsity.attention_pattern(config, tuple(grid), num_text)
  return 1.0 if pattern is None else float(pattern.density())


def forward_flops(config: DiTConfig, video_shape, batch_size: int,
                  text_length: int = 0) -> float:
  """FLOPs of one forward pass over `batch_size` videos of video_shape (T, H, W) with
  text_length text tokens each (ignored for label-conditioned models)."""
  dim, hidden = config.hidden_size, config.mlp_hidden_size
  grid = patch_grid((1, *video_shape, 1), config.patch_size)
  video_tokens = grid[0] * grid[1] * grid[2]
  text_tokens = text_length if config.conditioning == "text" else 0
  tokens = video_tokens + text_tokens
  pt, ph, pw = config.patch_size
  patch_dim = pt * ph * pw * config.in_channels

  per_token_block = 2 * (3 * dim * dim + dim * dim + 3 * dim * hidden)  # qkv, out, SwiGLU
  modulation = 2 * dim * 6 * dim  # per video, per stream
  streams = 2 if text_tokens else 1
  dual = config.dual_stream_depth if text_tokens else 0
  density = attention_density(config, grid, text_tokens)
  attention = 4 * density * tokens * tokens * dim
  blocks = config.depth * (tokens * per_token_block + attention) + (
      dual * streams + (config.depth - dual)) * modulation

  embed = 2 * video_tokens * patch_dim * dim + 2 * 256 * dim + 2 * dim * dim  # patch, time MLP
  final = 2 * dim * 2 * dim + 2 * video_tokens * dim * patch_dim
  text = 0
  if text_tokens:  # proj_in, proj_out per token; pool per video
    text = 2 * text_tokens * (config.text_dim * dim + dim * dim) + 2 * dim * dim
  return float(batch_size * (blocks + embed + final + text))


def train_step_flops(config: DiTConfig, video_shape, batch_size: int,
                     text_length: int = 0) -> float:
  """Model FLOPs of one training step: forward and backward, 3x the forward."""
  return 3.0 * forward_flops(config, video_shape, batch_size, text_length)


# Dense bfloat16 peak FLOP/s per device, by device_kind (first match wins).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),   # v5e ("TPU v5 lite")
    ("TPU v4", 275e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The dense bfloat16 peak of a device kind, or None where unknown (e.g. CPUs)."""
  for name, flops in PEAK_BF16_FLOPS:
    if name in device_kind:
      return flops
  return None


def sequence_workload(config: DiTConfig, *, zero_shards: int = 1, optimizer_bytes: int = 8):
  """The DiT's training step per token, for the sequence-parallel cost model
  (sharding.sp_cost.Workload): linear FLOPs per token and attention FLOPs per (query, key) pair
  of a forward and backward (3x the forward; 4x under remat, which runs it again), the bytes Ulysses' all-to-alls and USP's ring
  move per token, activation bytes per token under model.remat, and the parameters, gradients,
  EMA and optimizer state per device (divided over zero_shards devices when sharded).
  """
  from flax import nnx  # noqa: PLC0415  (only this function needs the model's shapes)
  import jax  # noqa: PLC0415
  from dit.model import DiT  # noqa: PLC0415
  from sharding.sp_cost import Workload  # noqa: PLC0415

  dim, hidden, depth = config.hidden_size, config.mlp_hidden_size, config.depth
  pt, ph, pw = config.patch_size
  patch_dim = pt * ph * pw * config.in_channels
  per_token_block = 2 * (3 * dim * dim + dim * dim + 3 * dim * hidden)
  forward = depth * per_token_block + 2 * 2 * patch_dim * dim  # blocks, patch embed, final
  recompute = config.remat != "none"  # the forward's all-to-alls run again in the backward
  width = 2 if config.dtype in ("bfloat16", "float16") else 4
  working = (10 * dim + 3 * hidden) * width * 2  # one block's activations and their gradients
  kept = depth * {"none": working / 2, "dots_saveable": (5 * dim + 2 * hidden) * width,
                  "offload_block_inputs": 0}.get(config.remat, dim * width)  # per layer
  abstract = nnx.eval_shape(lambda: DiT(config, rngs=nnx.Rngs(0)))
  params = sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  param_width = 2 if config.param_dtype in ("bfloat16", "float16") else 4
  passes = 4.0 if recompute else 3.0  # forward, backward (2x), and the recomputed forward
  return Workload(
      flops_per_token=passes * forward,
      flops_per_pair=passes * 4 * dim * depth,
      alltoall_bytes_per_token=(12 if recompute else 8) * depth * dim * width,
      ring_bytes_per_token=(8 if recompute else 6) * depth * dim * width,
      activation_bytes_per_token=kept + working,
      static_bytes=params * (3 * param_width + optimizer_bytes) / zero_shards,
      num_heads=config.num_heads,
      collectives=(12 if recompute else 8) * depth)
