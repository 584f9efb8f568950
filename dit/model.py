"""The video DiT: 3D patches -> dual-stream blocks -> single-stream blocks -> velocity.

Video [B, T, H, W, C] (an image is T=1) and timestep t [B] in [0, 1] in, velocity of the same
shape as the video out (float32). Conditioning is text tokens (hybrid stream) or class labels.
Blocks of each kind are stored stacked along a leading layer axis (created with nnx.vmap), so
scanning over layers and unrolling them share one parameter layout and one checkpoint format.

`DiT(config)(video, t, ...)` returns the velocity, always. `DiT.with_attention(attention, ...)`
runs every block's attention through an object built outside the network (AdaSpa's per-layer
patterns, diffusion/sparse_attention.py) and returns (velocity, per-layer outputs).
"""
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from dit import blocks as blocks_lib
from dit import conditioning, sparsity
from dit.attention import AttentionContext, LayerAttention
from dit.config import DiTConfig
from dit.patchify import patch_grid, patch_positions, patchify, unpatchify
from dit.remat import BLOCK_INPUT, remat_policy
from dit.rope import rope_angles, rope_axes_dims
from sharding.logical import constrain


def stacked(make: Callable[[nnx.Rngs], nnx.Module], count: int, rngs: nnx.Rngs) -> nnx.Module:
  """`count` independently initialised modules, their parameters stacked on a leading axis."""

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make_all(rngs):
    return make(rngs)

  return make_all(rngs)


def run_stacked(layers: nnx.Module, carry, apply: Callable, *, scan: bool, remat: str):
  """Threads `carry` through each layer of a stacked module: carry = apply(layer, carry).

  With scan, one lax.scan compiles the layer once; otherwise the layers are unrolled. The
  layer's input is named BLOCK_INPUT for the remat policies that save or offload it.
  """
  return scan_stacked(layers, carry, None, lambda layer, carry, _: (apply(layer, carry), None),
                      scan=scan, remat=remat)[0]


def scan_stacked(layers: nnx.Module, carry, xs, apply: Callable, *, scan: bool, remat: str):
  """run_stacked with per-layer inputs and outputs, as lax.scan: (carry, y) = apply(layer,
  carry, x) for x in xs (a pytree with a leading layer axis, or None); returns (carry, ys)."""
  graphdef, state = nnx.split(layers)
  count = jax.tree.leaves(state)[0].shape[0]

  def body(carry, layer_and_x):
    layer_state, x = layer_and_x
    carry = jax.tree.map(lambda a: checkpoint_name(a, BLOCK_INPUT), carry)
    return apply(nnx.merge(graphdef, layer_state), carry, x)

  policy = remat_policy(remat)
  if policy is not None:
    body = jax.checkpoint(body, policy=policy, prevent_cse=not scan)
  if scan:
    return jax.lax.scan(body, carry, (state, xs))
  ys = []
  for i in range(count):
    carry, y = body(carry, jax.tree.map(lambda a, i=i: a[i], (state, xs)))
    ys.append(y)
  return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


# Below this noise level a data prediction's velocity (x_t - x0) / t divides by this instead,
# so the velocity loss does not weight the nearly clean timesteps without bound (JiT's 0.05).
MIN_DATA_PREDICTION_T = 0.05


def velocity_from_data(x0: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
  """The velocity noise - x0 implied by a prediction of the data x0 [B, T, H, W, C] at x_t and
  t [B]: x_t = (1 - t) x0 + t noise gives noise - x0 = (x_t - x0) / t; float32."""
  t = jnp.maximum(t.astype(jnp.float32), MIN_DATA_PREDICTION_T).reshape(-1, 1, 1, 1, 1)
  return (x_t.astype(jnp.float32) - x0) / t


class FinalLayer(nnx.Module):
  """adaLN (shift, scale) then a zero-initialised projection to patch values."""

  def __init__(self, config: DiTConfig, patch_dim: int, *, rngs: nnx.Rngs):
    # float32: the velocity is not rounded to the compute dtype on its way out.
    kwargs = blocks_lib.linear_kwargs(config, rngs) | dict(dtype=jnp.float32)
    dim = config.hidden_size
    zeros = blocks_lib.ZEROS
    self.modulation = blocks_lib.dense(dim, 2 * dim, ("embed", "mlp"), kernel_init=zeros,
                                       **kwargs)
    self.proj = blocks_lib.dense(dim, patch_dim, ("embed", "patch"), kernel_init=zeros, **kwargs)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    shift, scale = jnp.split(self.modulation(jax.nn.silu(c)), 2, axis=-1)
    return self.proj(blocks_lib.modulate(blocks_lib.layer_norm(x), shift, scale))


class DiT(nnx.Module):
  """Seaweed-style hybrid-stream video DiT, built from a DiTConfig (dit/config.py).

  With conditioning="label" there are no text tokens, and every block is single-stream.
  """

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.config = config
    dim, num_dual = config.hidden_size, config.num_dual
    param_dtype = jnp.dtype(config.param_dtype)
    self.patch_dim = int(np.prod(config.patch_size)) * config.in_channels
    self.rope_dims = rope_axes_dims(config.head_dim)

    kwargs = blocks_lib.linear_kwargs(config, rngs)
    self.patch_embed = blocks_lib.dense(self.patch_dim, dim, ("patch", "embed"), **kwargs)
    self.time_embed = conditioning.TimestepEmbedder(dim, param_dtype=param_dtype, rngs=rngs)
    if config.uses_text:
      self.text_embed = conditioning.TextEmbedder(config.text_dim, dim,
                                                  dtype=jnp.dtype(config.dtype),
                                                  param_dtype=param_dtype, rngs=rngs,
                                                  vocab_size=config.text_vocab_size)
    else:
      self.label_embed = conditioning.LabelEmbedder(config.num_classes, dim,
                                                    param_dtype=param_dtype, rngs=rngs)
    self.dual_blocks = (stacked(lambda r: blocks_lib.DualStreamBlock(config, rngs=r),
                                num_dual, rngs) if num_dual else None)
    num_single = config.depth - num_dual
    self.single_blocks = (stacked(lambda r: blocks_lib.SingleStreamBlock(config, rngs=r),
                                  num_single, rngs) if num_single else None)
    self.final = FinalLayer(config, self.patch_dim, rngs=rngs)

  def __call__(self, video: jax.Array, t: jax.Array, *, text: jax.Array | None = None,
               text_mask: jax.Array | None = None, labels: jax.Array | None = None,
               drop_cond: jax.Array | None = None) -> jax.Array:
    """Velocity float32 [B, T, H, W, C].

    video [B, T, H, W, C]; t [B] noise level in [0, 1]; text [B, N, text_dim] encoder states
    with text_mask bool [B, N] (True for real tokens), or labels int [B]; drop_cond bool [B]
    replaces a sample's condition by the null condition.
    """
    return self._forward(video, t, text, text_mask, labels, drop_cond, None)[0]

  def with_attention(self, attention: LayerAttention, video: jax.Array, t: jax.Array, *,
                     text: jax.Array | None = None, text_mask: jax.Array | None = None,
                     labels: jax.Array | None = None, drop_cond: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, Any]]:
    """As __call__, every block attending through `attention` (dit.attention.LayerAttention)
    instead of model.attention; -> (velocity, {"dual": outputs, "single": outputs}): each kind
    of block's per-layer outputs of `attention`, stacked over its layers."""
    return self._forward(video, t, text, text_mask, labels, drop_cond, attention)

  def _forward(self, video, t, text, text_mask, labels, drop_cond, attention):
    cfg = self.config
    self._check_inputs(video, t, text, labels)
    grid = patch_grid(video.shape, cfg.patch_size)
    x = self.patch_embed(patchify(video, cfg.patch_size).astype(jnp.dtype(cfg.dtype)))
    x = constrain(x, blocks_lib.TOKENS)  # [B, Lv, D]
    c = self.time_embed(t)  # [B, D] float32
    video_angles = rope_angles(patch_positions(grid), self.rope_dims, cfg.rope_theta)[None]
    outputs = {}

    if not cfg.uses_text:
      c = c + self.label_embed(labels, drop_cond)
      context = AttentionContext(cfg, grid, x.shape[1], 0)
      pattern = sparsity.attention_pattern(cfg, grid, 0)
      x = self._blocks("single", x, attention, context, outputs,
                       lambda block, x, attend: block(x, c, video_angles, None, pattern, attend))
      return self._velocity(x, c, grid, video, t), outputs

    tokens, mask, pooled = self.text_embed(text, text_mask, drop_cond)  # [B, Lt, D]
    c = c + pooled
    # Text tokens have no 3D position: angle 0 leaves them unrotated.
    angles = jnp.concatenate(
        [video_angles, jnp.zeros((1, tokens.shape[1], video_angles.shape[-1]))], axis=1)
    segment_ids = None
    if text_mask is not None or drop_cond is not None:
      # Real tokens share segment 1; padded text tokens (segment 0) only see each other.
      segment_ids = jnp.concatenate(
          [jnp.ones(x.shape[:2], jnp.int32), mask.astype(jnp.int32)], axis=1)
    context = AttentionContext(cfg, grid, x.shape[1], tokens.shape[1])
    pattern = sparsity.attention_pattern(cfg, grid, tokens.shape[1])
    x, tokens = self._blocks(
        "dual", (x, tokens), attention, context, outputs,
        lambda block, xs, attend: block(xs[0], xs[1], c, angles, segment_ids, pattern, attend))
    joint = constrain(jnp.concatenate([x, tokens], axis=1), blocks_lib.TOKENS)
    joint = self._blocks("single", joint, attention, context, outputs,
                         lambda block, x, attend: block(x, c, angles, segment_ids, pattern,
                                                        attend))
    return self._velocity(joint[:, :x.shape[1]], c, grid, video, t), outputs

  def _blocks(self, kind: str, carry, attention: LayerAttention | None,
              context: AttentionContext, outputs: dict, call: Callable):
    """carry through the `kind` ("dual" or "single") blocks: call(block, carry, attend), attend
    None (the configured attention) or this layer's slice of `attention`; the layers' outputs
    of `attention` go to outputs[kind]."""
    blocks = self.dual_blocks if kind == "dual" else self.single_blocks
    if blocks is None:
      return carry
    options = dict(scan=self.config.scan_layers, remat=self.config.remat)
    if attention is None:
      return run_stacked(blocks, carry, lambda block, carry: call(block, carry, None), **options)

    def apply(block, carry, layer_input):
      found = []

      def attend(q, k, v, segment_ids):
        out, layer_output = attention(q, k, v, segment_ids=segment_ids, context=context,
                                      layer_input=layer_input)
        found.append(layer_output)
        return out

      return call(block, carry, attend), found[0]

    carry, outputs[kind] = scan_stacked(blocks, carry, attention.layer_inputs(kind), apply,
                                        **options)
    return carry

  def _velocity(self, x, c, grid, video, t):
    patches = self.final(x, c).astype(jnp.float32)  # [B, Lv, pt*ph*pw*C]
    output = unpatchify(patches, grid, self.config.patch_size)  # [B, T, H, W, C]
    if self.config.prediction == "velocity":
      return output
    return velocity_from_data(output, video, t)

  def _check_inputs(self, video, t, text, labels):
    """The inputs' shapes against the config: errors at trace time, before any compute."""
    cfg = self.config
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
      raise ValueError(f"expected video [B, T, H, W, {cfg.in_channels}] (model.in_channels), "
                       f"got shape {video.shape}")
    if t.shape != video.shape[:1]:
      raise ValueError(f"expected t of shape [B]={video.shape[:1]}, got {t.shape}")
    if cfg.uses_text and cfg.text_vocab_size:
      if text is None or text.ndim != 2 or not jnp.issubdtype(text.dtype, jnp.integer):
        got = None if text is None else (text.shape, text.dtype)
        raise ValueError(f"model.text_vocab_size={cfg.text_vocab_size} needs text as token "
                         f"ids int [B, N], got {got}")
    elif cfg.uses_text and (text is None or text.ndim != 3 or text.shape[-1] != cfg.text_dim):
      raise ValueError("model.conditioning='text' needs text [B, N, model.text_dim="
                       f"{cfg.text_dim}] encoder states, got "
                       f"{None if text is None else text.shape}")
    if not cfg.uses_text and labels is None:
      raise ValueError("model.conditioning='label' needs labels int [B]")
