"""Transformer blocks: adaLN-Zero, QK RMSNorm, 3D RoPE, SwiGLU, joint attention.

A dual-stream block keeps separate weights for video and text tokens and runs one attention
over both; a single-stream block runs the joint sequence [video | text] through shared weights.
Modulation weights are zero at init, so every block is the identity until trained.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from dit import attention as attention_lib
from dit.config import DiTConfig
from dit.rope import apply_rope
from sharding.logical import annotate, constrain

ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()
LECUN = nnx.initializers.lecun_normal()
TOKENS = ("activation_batch", "activation_length", "activation_embed")  # [B, L, D]


def dense(in_features: int, out_features: int, axes: tuple[str, str], *, kernel_init=LECUN,
          bias_init=ZEROS, **kwargs) -> nnx.Linear:
  """nnx.Linear whose kernel has the logical axes `axes` (sharding/logical.py) and whose bias
  has the output's."""
  return nnx.Linear(in_features, out_features, kernel_init=annotate(kernel_init, *axes),
                    bias_init=annotate(bias_init, axes[1]), **kwargs)


def attention_options(config: DiTConfig) -> dict:
  """The keywords of dit.attention.dot_product_attention that the model config sets."""
  return dict(implementation=config.attention, sequence_parallel=config.sequence_parallel,
              ulysses_degree=config.ulysses_degree)


def linear_kwargs(config: DiTConfig, rngs: nnx.Rngs) -> dict:
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
              rngs=rngs)


def per_token(a: jax.Array) -> jax.Array:
  """A modulation [B, D] (one per sequence) as [B, 1, D]; one per token [B, L, D] as is."""
  return a[:, None, :] if a.ndim == 2 else a


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x [B, L, D] shifted and scaled per sequence by [B, D], or per token by [B, L, D]."""
  return x * (1 + per_token(scale)) + per_token(shift)


def modulations(layer: nnx.Linear, c: jax.Array, count: int,
                slots: jax.Array | None = None) -> list[jax.Array]:
  """`count` modulations [B, D] of the condition c [B, D], from layer(silu(c)).

  Packed sequences (several examples in one row) give c [B, S, D], one per example slot, and
  slots int [B, L], the slot of each token: the modulations are then per token [B, L, D],
  computed once per slot and gathered (not once per token).
  """
  params = layer(jax.nn.silu(c))  # [B, D'] or [B, S, D']
  if slots is not None:
    params = jnp.take_along_axis(params, slots[..., None], axis=1)  # [B, L, D']
  return jnp.split(params, count, axis=-1)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine parameters (adaLN supplies them), in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class SwiGLU(nnx.Module):
  """[..., D] -> [..., D] through silu(x W_gate) * (x W_up), then W_down."""

  def __init__(self, dim: int, hidden: int, **kwargs):
    self.gate_up = dense(dim, 2 * hidden, ("embed", "mlp"), **kwargs)
    self.down = dense(hidden, dim, ("mlp", "embed"), **kwargs)

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = constrain(self.gate_up(x), ("activation_batch", "activation_length",
                                         "activation_mlp"))
    gate, up = jnp.split(hidden, 2, axis=-1)
    return self.down(jax.nn.silu(gate) * up)


class Stream(nnx.Module):
  """One stream's weights for one block: modulation, qkv, QK norms, output projection, MLP."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    dim, heads = config.hidden_size, config.num_heads
    kwargs = linear_kwargs(config, rngs)
    self.num_heads = heads
    # c -> (shift, scale, gate) for attention and for the MLP; zero init: identity block.
    self.modulation = dense(dim, 6 * dim, ("embed", "mlp"), kernel_init=ZEROS, **kwargs)
    self.qkv = dense(dim, 3 * dim, ("embed", "heads"), **kwargs)
    norm_scale = annotate(ONES, "head_dim")
    self.q_norm = nnx.RMSNorm(dim // heads, epsilon=1e-6, scale_init=norm_scale, **kwargs)
    self.k_norm = nnx.RMSNorm(dim // heads, epsilon=1e-6, scale_init=norm_scale, **kwargs)
    self.out = dense(dim, dim, ("heads", "embed"), **kwargs)
    self.mlp = SwiGLU(dim, config.mlp_hidden_size, **kwargs)

  def modulation_params(self, c: jax.Array, slots: jax.Array | None = None) -> list[jax.Array]:
    """c [B, D] -> six [B, D]: attention shift, scale, gate; MLP shift, scale, gate. Packed:
    c [B, S, D] and slots [B, L] -> six [B, L, D] (see `modulations`)."""
    return modulations(self.modulation, c, 6, slots)

  def attention_inputs(self, x, mod, angles):
    """x [B, L, D] -> q, k, v [B, L, H, D/H]; q and k RMS-normalised, then rotated."""
    shift, scale = mod[0], mod[1]
    b, length, dim = x.shape
    qkv = self.qkv(modulate(layer_norm(x), shift, scale))
    q, k, v = jnp.split(qkv.reshape(b, length, 3 * self.num_heads, dim // self.num_heads), 3,
                        axis=2)
    return apply_rope(self.q_norm(q), angles), apply_rope(self.k_norm(k), angles), v

  def finish(self, x, attended, mod):
    """Gated residual of the attention output [B, L, H, Dh], then of the MLP."""
    gate_attn, shift_mlp, scale_mlp, gate_mlp = mod[2:]
    b, length, _ = x.shape
    x = constrain(x + per_token(gate_attn) * self.out(attended.reshape(b, length, -1)), TOKENS)
    x = x + per_token(gate_mlp) * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))
    return constrain(x, TOKENS)


def joint_attention(q, k, v, options: dict, segment_ids, pattern, attend):
  """q, k, v [B, L, H, Dh] -> [B, L, H, Dh]: attend(q, k, v, segment_ids) if given, else the
  configured attention (options from attention_options) with the segment ids and pattern."""
  if attend is not None:
    return attend(q, k, v, segment_ids)
  return attention_lib.dot_product_attention(q, k, v, segment_ids=segment_ids, pattern=pattern,
                                             **options)


class SingleStreamBlock(nnx.Module):
  """The joint sequence [video | text] through one set of weights."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.attention_options = attention_options(config)
    self.stream = Stream(config, rngs=rngs)

  def __call__(self, x, c, angles, segment_ids=None, pattern=None, attend=None, slots=None):
    """x [B, L, D], c [B, D], angles [B or 1, L, Dh/2], segment_ids [B, L] -> [B, L, D].

    pattern: the block-sparsity pattern of the attention (dit.sparsity), or None for dense.
    attend: (q, k, v, segment_ids) -> out [B, L, H, Dh], replacing the configured attention
    (a layer's slice of a dit.attention.LayerAttention, e.g. AdaSpa's per-layer patterns).
    slots: packed sequences: c is [B, S, D], one per example, and slots [B, L] each token's.
    """
    mod = self.stream.modulation_params(c, slots)
    q, k, v = self.stream.attention_inputs(x, mod, angles)
    attended = joint_attention(q, k, v, self.attention_options, segment_ids, pattern, attend)
    return self.stream.finish(x, attended, mod)


class DualStreamBlock(nnx.Module):
  """Separate weights for video and text tokens, one attention over both."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.attention_options = attention_options(config)
    self.video = Stream(config, rngs=rngs)
    self.text = Stream(config, rngs=rngs)

  def __call__(self, video, text, c, angles, segment_ids=None, pattern=None, attend=None,
               slots=None):
    """video [B, Lv, D], text [B, Lt, D]; angles, segment_ids, pattern and attend cover the
    joint sequence [video | text]; slots (packed sequences) too: [B, Lv + Lt]."""
    lv = video.shape[1]
    video_slots, text_slots = (None, None) if slots is None else (slots[:, :lv], slots[:, lv:])
    video_mod = self.video.modulation_params(c, video_slots)
    text_mod = self.text.modulation_params(c, text_slots)
    qkv_video = self.video.attention_inputs(video, video_mod, angles[:, :lv])
    qkv_text = self.text.attention_inputs(text, text_mod, angles[:, lv:])
    q, k, v = (jnp.concatenate(pair, axis=1) for pair in zip(qkv_video, qkv_text))
    attended = joint_attention(q, k, v, self.attention_options, segment_ids, pattern, attend)
    return (self.video.finish(video, attended[:, :lv], video_mod),
            self.text.finish(text, attended[:, lv:], text_mod))
