"""The one attention entry point: implementations registered by name, chosen by the config.

Every implementation takes q [B, Lq, H, D], k and v [B, Lk, H, D] and returns [B, Lq, H, D].
`segment_ids` int32 [B, L] restricts each token to the tokens with the same id (padding, packed
sequences). Other implementations (cudnn, block_sparse, splash, sequence-parallel wrappers)
register themselves with `register_attention` from their own modules.
"""
from collections.abc import Callable
from typing import Protocol

import jax


class AttentionFn(Protocol):

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *,
               segment_ids: jax.Array | None = None,
               kv_segment_ids: jax.Array | None = None,
               scale: float | None = None) -> jax.Array:
    ...


_IMPLEMENTATIONS: dict[str, AttentionFn] = {}


def register_attention(name: str) -> Callable[[AttentionFn], AttentionFn]:
  """Decorator adding an implementation under `name` (the value of model.attention)."""

  def add(fn: AttentionFn) -> AttentionFn:
    if name in _IMPLEMENTATIONS and _IMPLEMENTATIONS[name] is not fn:
      raise ValueError(f"attention implementation {name!r} is already registered")
    _IMPLEMENTATIONS[name] = fn
    return fn

  return add


def attention_implementations() -> list[str]:
  return sorted(_IMPLEMENTATIONS)


def get_attention(name: str) -> AttentionFn:
  if name not in _IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {name!r}; set model.attention to one "
                     f"of {attention_implementations()}")
  return _IMPLEMENTATIONS[name]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          implementation: str = "xla",
                          segment_ids: jax.Array | None = None,
                          kv_segment_ids: jax.Array | None = None,
                          scale: float | None = None) -> jax.Array:
  """Attention through the implementation named `implementation`; layout [B, L, H, D]."""
  return get_attention(implementation)(
      q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, scale=scale)


def segment_mask(segment_ids: jax.Array, kv_segment_ids: jax.Array | None = None) -> jax.Array:
  """bool [B, 1, Lq, Lk]: True where query and key share a segment id."""
  if kv_segment_ids is None:
    kv_segment_ids = segment_ids
  return segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


@register_attention("xla")
def xla_attention(q, k, v, *, segment_ids=None, kv_segment_ids=None, scale=None):
  """The reference: jax.nn.dot_product_attention lowered by XLA (logits in float32)."""
  mask = None if segment_ids is None else segment_mask(segment_ids, kv_segment_ids)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
