"""Conditioning inputs: timestep, class label (with a null label) and text tokens (with a null
text), each embedded to the model width. `drop` [B] bool swaps in the null condition, for
conditioning dropout in training and the unconditional branch of classifier-free guidance.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from dit.blocks import dense
from sharding.logical import annotate

EMBED_INIT = nnx.initializers.normal(stddev=0.02)


def timestep_features(t: jax.Array, dim: int = 256, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features float32 [B, dim] of t [B] in [0, 1] (scaled to [0, 1000] as in DiT)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedder(nnx.Module):
  """t [B] -> [B, D]: sinusoidal features then a two-layer SiLU MLP, in float32."""

  def __init__(self, hidden_size: int, *, param_dtype, rngs: nnx.Rngs, feature_dim: int = 256):
    self.feature_dim = feature_dim
    init = dict(kernel_init=EMBED_INIT, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = dense(feature_dim, hidden_size, ("freq", "embed"), **init)
    self.fc2 = dense(hidden_size, hidden_size, ("embed", "mlp"), **init)

  def __call__(self, t: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.silu(self.fc1(timestep_features(t, self.feature_dim))))


class LabelEmbedder(nnx.Module):
  """labels int [B] -> [B, D]; row num_classes of the table is the null label."""

  def __init__(self, num_classes: int, hidden_size: int, *, param_dtype, rngs: nnx.Rngs):
    self.null_label = num_classes
    self.table = nnx.Embed(num_classes + 1, hidden_size,
                           embedding_init=annotate(EMBED_INIT, "classes", "embed"),
                           param_dtype=param_dtype, rngs=rngs)

  def __call__(self, labels: jax.Array, drop: jax.Array | None = None) -> jax.Array:
    if drop is not None:
      labels = jnp.where(drop, self.null_label, labels)
    return self.table(labels)


class TextEmbedder(nnx.Module):
  """Text encoder states [B, N, text_dim] -> text tokens [B, N, D] and a pooled vector [B, D].

  The null text is one learned vector in the encoder's space, standing as the only valid token.
  With vocab_size > 0 the text comes as token ids int [B, N], turned into states by a learned
  table first: the small offline fallback for a pretrained encoder.
  """

  def __init__(self, text_dim: int, hidden_size: int, *, dtype, param_dtype, rngs: nnx.Rngs,
               vocab_size: int = 0):
    init = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.token_table = (nnx.Embed(vocab_size, text_dim,
                                  embedding_init=annotate(EMBED_INIT, "vocab", "text_embed"),
                                  param_dtype=param_dtype, rngs=rngs)
                        if vocab_size else None)
    self.null_text = nnx.Param(EMBED_INIT(rngs.params(), (text_dim,), param_dtype),
                               out_sharding=("text_embed",), eager_sharding=False)
    self.proj_in = dense(text_dim, hidden_size, ("text_embed", "embed"), **init)
    self.proj_out = dense(hidden_size, hidden_size, ("embed", "mlp"), **init)
    self.pool = dense(hidden_size, hidden_size, ("embed", "mlp"), kernel_init=EMBED_INIT,
                       param_dtype=param_dtype, rngs=rngs)

  def __call__(self, text: jax.Array, mask: jax.Array | None = None,
               drop: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns tokens [B, N, D] (compute dtype), mask bool [B, N] and pooled float32 [B, D]."""
    if self.token_table is not None:
      text = self.token_table(text)  # ids [B, N] -> [B, N, text_dim]
    b, n, _ = text.shape
    mask = jnp.ones((b, n), bool) if mask is None else mask.astype(bool)
    if drop is not None:
      null = jnp.broadcast_to(self.null_text[...].astype(text.dtype), text.shape)
      text = jnp.where(drop[:, None, None], null, text)
      mask = jnp.where(drop[:, None], jnp.arange(n)[None, :] == 0, mask)
    # Zero the padding: weights of 0 alone would still let a NaN there poison everything.
    text = jnp.where(mask[..., None], text, 0)
    tokens = self.proj_out(jax.nn.gelu(self.proj_in(text), approximate=True))
    kept = jnp.where(mask[..., None], tokens.astype(jnp.float32), 0.0)
    pooled = kept.sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1).astype(jnp.float32)
    return tokens, mask, self.pool(pooled)
