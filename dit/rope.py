"""3D rotary position embedding: the head dimension is split across the t, h and w axes.

Each axis rotates its own slice of feature pairs by angle position * frequency, so the score
q·k of a rotated query and key depends only on the difference of their (t, h, w) positions.
Positions are explicit per token, so any resolution, duration or token order works; a token
with no position (a text token) gets angle 0, which leaves it unrotated.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
  """Default split of head_dim into (t, h, w) parts, each even; h and w equal, t takes the rest.

  For example 64 -> (24, 20, 20) and 128 -> (44, 42, 42).
  """
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
  spatial = (head_dim // 3) // 2 * 2
  return head_dim - 2 * spatial, spatial, spatial


def rope_angles(positions: np.ndarray | jax.Array, axes_dims: Sequence[int],
                theta: float = 10_000.0) -> jax.Array:
  """float32 [..., L, head_dim // 2] rotation angles from positions [..., L, 3]."""
  positions = jnp.asarray(positions, jnp.float32)
  angles = []
  for axis, dim in enumerate(axes_dims):
    inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [dim // 2]
    angles.append(positions[..., axis, None] * inv_freq)
  return jnp.concatenate(angles, axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates x [B, L, H, D] by angles [B or 1, L, D // 2] (pairs are (i, i + D/2)); keeps dtype."""
  half = x.shape[-1] // 2
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1 = x[..., :half].astype(jnp.float32)
  x2 = x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return rotated.astype(x.dtype)
