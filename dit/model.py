"""The video DiT: 3D patches -> dual-stream blocks -> single-stream blocks -> velocity.

Video [B, T, H, W, C] (an image is T=1) and timestep t [B] in [0, 1] in, velocity of the same
shape as the video out (float32). Conditioning is text tokens (hybrid stream) or class labels.
Blocks of each kind are stored stacked along a leading layer axis (created with nnx.vmap), so
scanning over layers and unrolling them share one parameter layout and one checkpoint format.

`DiT(config)(video, t, ...)` returns the velocity, always. `DiT.with_attention(attention, ...)`
runs every block's attention through an object built outside the network (AdaSpa's per-layer
patterns, diffusion/sparse_attention.py) and returns (velocity, per-layer outputs).
`DiT.packed(patches, t, segment_ids, positions, ...)` runs rows that pack several examples of
any shapes (data/packing.py): each attends within itself, with its own timestep and condition.
"""
import dataclasses
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


# The module paths of the linear layers in the blocks of DiT.unstacked(), as per-layer tools
# (qwix's quantization and LoRA rules) match them: "single_blocks/0/stream/qkv", ...
BLOCK_LINEARS = (r"(dual|single)_blocks/\d+/(video|text|stream)/"
                 r"(qkv|out|modulation|mlp/gate_up|mlp/down)")


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


def scan_stacked(layers: nnx.Module | nnx.List, carry, xs, apply: Callable, *, scan: bool,
                 remat: str):
  """run_stacked with per-layer inputs and outputs, as lax.scan: (carry, y) = apply(layer,
  carry, x) for x in xs (a pytree with a leading layer axis, or None); returns (carry, ys).

  layers may also be an nnx.List of separate modules (DiT.unstacked): they are unrolled.
  """
  if isinstance(layers, nnx.List):
    return _unrolled(layers, carry, xs, apply, remat)
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


def _unrolled(layers: nnx.List, carry, xs, apply: Callable, remat: str):
  """scan_stacked over separate layer modules, one after another. With a remat policy each
  layer is rematerialised as the stacked path does it: jax.checkpoint over its split state,
  merged inside (the layer's variables are read, never written, in there)."""
  policy = remat_policy(remat)

  def body(layer, carry, x):
    carry = jax.tree.map(lambda a: checkpoint_name(a, BLOCK_INPUT), carry)
    return apply(layer, carry, x)

  ys = []
  for i, layer in enumerate(layers):
    x = jax.tree.map(lambda a, i=i: a[i], xs)
    if policy is None:
      carry, y = body(layer, carry, x)
    else:
      graphdef, state = nnx.split(layer)
      checkpointed = jax.checkpoint(
          lambda state, carry, x, graphdef=graphdef: body(nnx.merge(graphdef, state), carry, x),
          policy=policy)
      carry, y = checkpointed(state, carry, x)
    ys.append(y)
  return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def unstack(layers: nnx.Module, make: Callable[[nnx.Rngs], nnx.Module]) -> nnx.List:
  """The layers of a stacked module as an nnx.List of separate modules made by `make` (the
  function that made one layer), each holding its slice of the stacked parameters."""
  values = nnx.to_pure_dict(nnx.state(layers))
  count = jax.tree.leaves(values)[0].shape[0]
  separate = []
  for i in range(count):
    layer = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    nnx.update(layer, jax.tree.map(lambda a, i=i: a[i], values))
    separate.append(layer)
  return nnx.List(separate)


def restack(layers: nnx.List, *filters) -> dict:
  """The variables (of `filters`, default all) of separate layers stacked on a leading axis,
  as a pure dict: what nnx.update takes for the stacked module they came from (unstack's
  inverse)."""
  return jax.tree.map(lambda *a: jnp.stack(a), *(nnx.to_pure_dict(nnx.state(layer, *filters))
                                                 for layer in layers))


# Below this noise level a data prediction's velocity (x_t - x0) / t divides by this instead,
# so the velocity loss does not weight the nearly clean timesteps without bound (JiT's 0.05).
MIN_DATA_PREDICTION_T = 0.05


def velocity_from_data(x0: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
  """The velocity noise - x0 implied by a prediction of the data x0 [B, T, H, W, C] at x_t and
  t [B] (or packed patches x0 [B, L, P] at t [B, L] per token): x_t = (1 - t) x0 + t noise
  gives noise - x0 = (x_t - x0) / t; float32."""
  t = jnp.maximum(t.astype(jnp.float32), MIN_DATA_PREDICTION_T)
  t = t.reshape(t.shape + (1,) * (x0.ndim - t.ndim))
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

  def __call__(self, x: jax.Array, c: jax.Array, slots: jax.Array | None = None) -> jax.Array:
    """x [B, L, D], c [B, D] (or per slot [B, S, D] with slots [B, L]) -> [B, L, patch_dim]."""
    shift, scale = blocks_lib.modulations(self.modulation, c, 2, slots)
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

  def unstacked(self, remat: str | None = None) -> "DiT":
    """A copy whose blocks are separate modules (an nnx.List per kind), unrolled when run: the
    layout in which per-layer tools see one module per block (qwix's quantization and LoRA
    name layers by module path, e.g. "single_blocks/0/stream/qkv"). Same outputs; the stacked
    parameters of `self` are restack(copy.single_blocks) etc. A model unstacked already gives
    a copy of itself. remat: another model.remat for the copy (e.g. "none" for inference)."""
    config = self.config
    if remat is not None:
      config = dataclasses.replace(config, remat=remat)
    copy = nnx.clone(self)
    copy.config = config
    if isinstance(self.single_blocks, nnx.List) or isinstance(self.dual_blocks, nnx.List):
      return copy
    if self.dual_blocks is not None:
      copy.dual_blocks = unstack(self.dual_blocks,
                                 lambda r: blocks_lib.DualStreamBlock(config, rngs=r))
    if self.single_blocks is not None:
      copy.single_blocks = unstack(self.single_blocks,
                                   lambda r: blocks_lib.SingleStreamBlock(config, rngs=r))
    return copy

  def __call__(self, video: jax.Array, t: jax.Array, *, text: jax.Array | None = None,
               text_mask: jax.Array | None = None, labels: jax.Array | None = None,
               drop_cond: jax.Array | None = None,
               skip_blocks: jax.Array | None = None) -> jax.Array:
    """Velocity float32 [B, T, H, W, C].

    video [B, T, H, W, C]; t [B] noise level in [0, 1], or [B, T / patch_t] one per latent
    frame (Pusa's vectorized timesteps: each frame's tokens are modulated by their own; the
    text stream by the frames' mean condition); text [B, N, text_dim] encoder states
    with text_mask bool [B, N] (True for real tokens), or labels int [B]; drop_cond bool [B]
    replaces a sample's condition by the null condition. skip_blocks bool [depth] (dual blocks
    first, then single; may be traced): a True block is left out, its input passed on as its
    output, and its compute is not spent (lax.cond): the cheaper steps of a searched sampling
    schedule (diffusion/schedules.py).
    """
    return self._forward(video, t, text, text_mask, labels, drop_cond, None, skip_blocks)[0]

  def with_attention(self, attention: LayerAttention, video: jax.Array, t: jax.Array, *,
                     text: jax.Array | None = None, text_mask: jax.Array | None = None,
                     labels: jax.Array | None = None, drop_cond: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, Any]]:
    """As __call__, every block attending through `attention` (dit.attention.LayerAttention)
    instead of model.attention; -> (velocity, {"dual": outputs, "single": outputs}): each kind
    of block's per-layer outputs of `attention`, stacked over its layers."""
    return self._forward(video, t, text, text_mask, labels, drop_cond, attention)

  def packed(self, patches: jax.Array, t: jax.Array, segment_ids: jax.Array,
             positions: jax.Array, *, text: jax.Array | None = None,
             text_mask: jax.Array | None = None, labels: jax.Array | None = None,
             drop_cond: jax.Array | None = None) -> jax.Array:
    """Velocity float32 [B, L, P] of packed rows: each row holds up to S examples of any
    shapes, one after another, as their patch tokens (data/packing.py builds them).

    patches [B, L, P = pt*ph*pw*C]: each example's `patchify` tokens; segment_ids int [B, L]:
    the slot s + 1 (1..S) of the example a token belongs to, 0 for padding; positions int
    [B, L, 3]: each token's (t, h, w) patch coordinate in its own example; t [B, S]: each
    slot's noise level; text [B, S, N, text_dim] (or ids [B, S, N]) with text_mask [B, S, N],
    or labels int [B, S]; drop_cond bool [B, S].

    Attention stays within each example (its video and text tokens share a segment id), each
    token is modulated by its own example's timestep and condition, and RoPE rotates by its
    own example's positions: an example's output is what __call__ gives it alone. Padding
    tokens (segment 0) only see each other; their output is meaningless.
    """
    cfg = self.config
    b, s = t.shape
    self._check_packed(patches, t, segment_ids, positions, text, labels)
    x = self.patch_embed(patches.astype(jnp.dtype(cfg.dtype)))
    x = constrain(x, blocks_lib.TOKENS)  # [B, L, D]
    c = self.time_embed(t.reshape(-1)).reshape(b, s, -1)  # [B, S, D] float32
    video_slots = jnp.maximum(segment_ids - 1, 0)  # [B, L]; padding takes slot 0's condition
    video_angles = rope_angles(positions, self.rope_dims, cfg.rope_theta)  # [B, L, Dh/2]
    if not cfg.uses_text:
      c = c + self.label_embed(labels, drop_cond)
      x = self._stack(x, None, c, video_angles, segment_ids, None, None, None, {}, video_slots)
    else:
      n = text.shape[2]
      flat = lambda a: None if a is None else a.reshape(b * s, *a.shape[2:])
      tokens, mask, pooled = self.text_embed(flat(text), flat(text_mask), flat(drop_cond))
      c = c + pooled.reshape(b, s, -1)
      tokens, mask = tokens.reshape(b, s * n, -1), mask.reshape(b, s * n)  # [B, S*N, ...]
      text_slots = jnp.broadcast_to(jnp.repeat(jnp.arange(s, dtype=jnp.int32), n), (b, s * n))
      joint_segments = jnp.concatenate(
          [segment_ids.astype(jnp.int32), jnp.where(mask, text_slots + 1, 0)], axis=1)
      x = self._stack(x, tokens, c, video_angles, joint_segments, None, None, None, {},
                      jnp.concatenate([video_slots, text_slots], axis=1))
    output = self.final(x, c, video_slots).astype(jnp.float32)  # [B, L, P]
    if cfg.prediction == "velocity":
      return output
    return velocity_from_data(output, patches, jnp.take_along_axis(t, video_slots, axis=1))

  def _forward(self, video, t, text, text_mask, labels, drop_cond, attention, skip=None):
    cfg = self.config
    self._check_inputs(video, t, text, labels)
    if skip is not None and (attention is not None or jnp.shape(skip) != (cfg.depth,)):
      raise ValueError(f"skip_blocks must be bool [depth={cfg.depth}] and cannot be combined "
                       f"with per-layer attention; got shape {jnp.shape(skip)}")
    grid = patch_grid(video.shape, cfg.patch_size)
    x = self.patch_embed(patchify(video, cfg.patch_size).astype(jnp.dtype(cfg.dtype)))
    x = constrain(x, blocks_lib.TOKENS)  # [B, Lv, D]
    c = self.time_embed(t.reshape(-1)).reshape(*t.shape, -1)  # [B, D] or [B, nT, D] float32
    video_angles = rope_angles(patch_positions(grid), self.rope_dims, cfg.rope_theta)[None]
    outputs = {}
    tokens, segment_ids = None, None
    if not cfg.uses_text:
      condition = self.label_embed(labels, drop_cond)
    else:
      tokens, mask, condition = self.text_embed(text, text_mask, drop_cond)  # [B, Lt, D]
      if text_mask is not None or drop_cond is not None:
        # Real tokens share segment 1; padded text tokens (segment 0) only see each other.
        segment_ids = jnp.concatenate(
            [jnp.ones(x.shape[:2], jnp.int32), mask.astype(jnp.int32)], axis=1)
    c, slots = self.frame_conditions(c, condition, grid, 0 if tokens is None else tokens.shape[1])
    num_text = 0 if tokens is None else tokens.shape[1]
    context = AttentionContext(cfg, grid, x.shape[1], num_text)
    pattern = sparsity.attention_pattern(cfg, grid, num_text)
    x = self._stack(x, tokens, c, video_angles, segment_ids, pattern, attention, context,
                    outputs, slots, skip)
    video_slots = None if slots is None else slots[:, :x.shape[1]]
    return self._velocity(x, c, grid, video, t, video_slots), outputs

  @staticmethod
  def frame_conditions(time: jax.Array, condition: jax.Array, grid,
                       num_text: int) -> tuple[jax.Array, jax.Array | None]:
    """(c, slots): the adaLN condition of every token. time [B, D], the embedding of one
    timestep per video, gives c = time + condition [B, D] and no slots. time [B, nT, D], one
    per temporal patch (Pusa's vectorized timesteps), gives c [B, nT + 1, D]: each frame's
    time + condition, then the text stream's, the frames' mean (with equal timesteps all are
    the scalar path's c); slots int [B, Lv + Lt] says which each token takes (its frame; the
    text tokens the last)."""
    if time.ndim == 2:
      return time + condition, None
    b, nt = time.shape[:2]
    frames = time + condition[:, None]  # [B, nT, D]
    c = jnp.concatenate([frames, frames.mean(axis=1, keepdims=True)], axis=1)
    video_slots = jnp.asarray(patch_positions(grid)[:, 0], jnp.int32)  # each token's frame
    slots = jnp.concatenate([video_slots, jnp.full((num_text,), nt, jnp.int32)])
    return c, jnp.broadcast_to(slots, (b, slots.shape[0]))

  def _stack(self, x, tokens, c, video_angles, segment_ids, pattern, attention, context,
             outputs, slots, skip=None):
    """The video tokens x [B, Lv, D] (and text tokens [B, Lt, D], or None for a label model)
    through every block -> the video tokens [B, Lv, D]. Text tokens have no 3D position:
    angle 0 leaves them unrotated. skip: bool [depth] or None, the blocks left out."""
    num_dual = 0 if self.dual_blocks is None else self.config.num_dual
    skip_dual, skip_single = (None, None) if skip is None else (skip[:num_dual], skip[num_dual:])
    if tokens is None:
      return self._blocks(
          "single", x, attention, context, outputs,
          lambda block, x, attend: block(x, c, video_angles, segment_ids, pattern, attend, slots),
          skip_single)
    text_angles = jnp.zeros((video_angles.shape[0], tokens.shape[1], video_angles.shape[-1]))
    angles = jnp.concatenate([video_angles, text_angles], axis=1)
    x, tokens = self._blocks(
        "dual", (x, tokens), attention, context, outputs,
        lambda block, xs, attend: block(xs[0], xs[1], c, angles, segment_ids, pattern, attend,
                                        slots), skip_dual)
    joint = constrain(jnp.concatenate([x, tokens], axis=1), blocks_lib.TOKENS)
    joint = self._blocks(
        "single", joint, attention, context, outputs,
        lambda block, x, attend: block(x, c, angles, segment_ids, pattern, attend, slots),
        skip_single)
    return joint[:, :x.shape[1]]

  def _blocks(self, kind: str, carry, attention: LayerAttention | None,
              context: AttentionContext, outputs: dict, call: Callable, skip=None):
    """carry through the `kind` ("dual" or "single") blocks: call(block, carry, attend), attend
    None (the configured attention) or this layer's slice of `attention`; the layers' outputs
    of `attention` go to outputs[kind]. skip: bool [layers of this kind], True passes a
    layer's input through unchanged without computing the layer."""
    blocks = self.dual_blocks if kind == "dual" else self.single_blocks
    if blocks is None:
      return carry
    options = dict(scan=self.config.scan_layers, remat=self.config.remat)
    if skip is not None:
      def skippable(block, carry, skipped):
        return jax.lax.cond(skipped, lambda c: c, lambda c: call(block, c, None), carry), None

      return scan_stacked(blocks, carry, jnp.asarray(skip, bool), skippable, **options)[0]
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

  def _velocity(self, x, c, grid, video, t, slots=None):
    patches = self.final(x, c, slots).astype(jnp.float32)  # [B, Lv, pt*ph*pw*C]
    output = unpatchify(patches, grid, self.config.patch_size)  # [B, T, H, W, C]
    if self.config.prediction == "velocity":
      return output
    if t.ndim == 2:  # one timestep per temporal patch: per frame [B, T]
      t = jnp.repeat(t, self.config.patch_size[0], axis=1)
    return velocity_from_data(output, video, t)

  def _check_packed(self, patches, t, segment_ids, positions, text, labels):
    """Packed inputs' shapes against each other and the config, at trace time."""
    cfg = self.config
    b, length = segment_ids.shape[:2] if segment_ids.ndim == 2 else (None, None)
    problems = []
    if cfg.sparse_pattern != "full":
      problems.append(f"model.sparse_pattern={cfg.sparse_pattern!r} is drawn on one video's "
                      "patch grid; packed rows need 'full'")
    if segment_ids.ndim != 2 or patches.shape != (b, length, self.patch_dim):
      problems.append(f"patches {patches.shape} must be [B, L, {self.patch_dim}] (pt*ph*pw*C) "
                      f"with segment_ids [B, L], got segment_ids {segment_ids.shape}")
    if positions.shape != (b, length, 3):
      problems.append(f"positions {positions.shape} must be [B, L, 3] = [{b}, {length}, 3]")
    if t.ndim != 2 or t.shape[0] != b:
      problems.append(f"t {t.shape} must be [B, S] = [{b}, slots]")
    slots = t.shape[1] if t.ndim == 2 else None
    if cfg.uses_text and (text is None or text.shape[:2] != (b, slots)):
      problems.append(f"text must be [B, S, N, ...] = [{b}, {slots}, ...], got "
                      f"{None if text is None else text.shape}")
    if not cfg.uses_text and (labels is None or labels.shape != (b, slots)):
      problems.append(f"labels must be [B, S] = [{b}, {slots}], got "
                      f"{None if labels is None else labels.shape}")
    if problems:
      raise ValueError("DiT.packed: " + "; ".join(problems))

  def _check_inputs(self, video, t, text, labels):
    """The inputs' shapes against the config: errors at trace time, before any compute."""
    cfg = self.config
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
      raise ValueError(f"expected video [B, T, H, W, {cfg.in_channels}] (model.in_channels), "
                       f"got shape {video.shape}")
    frames = video.shape[1] // cfg.patch_size[0]
    if t.shape not in (video.shape[:1], (video.shape[0], frames)):
      raise ValueError(f"expected t of shape [B]={video.shape[:1]}, or [B, T / patch_t]="
                       f"{(video.shape[0], frames)} (one timestep per latent frame), got "
                       f"{t.shape}")
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
