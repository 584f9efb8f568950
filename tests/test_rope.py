import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit.rope import apply_rope, rope_angles, rope_axes_dims


def scores(q, k, q_pos, k_pos, dims):
  """q·k after rotating q at q_pos and k at k_pos; q, k [H, D], positions [3] -> [H]."""
  rq = apply_rope(q[None, None], rope_angles(jnp.asarray(q_pos)[None, None], dims))
  rk = apply_rope(k[None, None], rope_angles(jnp.asarray(k_pos)[None, None], dims))
  return jnp.einsum("hd,hd->h", rq[0, 0], rk[0, 0])


@pytest.mark.parametrize("head_dim", [16, 64, 72, 128])
def test_axes_dims_are_even_and_cover_the_head(head_dim):
  dims = rope_axes_dims(head_dim)
  assert sum(dims) == head_dim and all(d % 2 == 0 and d > 0 for d in dims)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_score_depends_only_on_position_difference(key, head_dim):
  dims = rope_axes_dims(head_dim)
  kq, kk, kp, ks = jax.random.split(key, 4)
  q = jax.random.normal(kq, (4, head_dim))
  k = jax.random.normal(kk, (4, head_dim))
  q_pos, k_pos = np.asarray(jax.random.randint(kp, (2, 3), 0, 32))
  shift = np.asarray(jax.random.randint(ks, (3,), -20, 20))
  np.testing.assert_allclose(scores(q, k, q_pos, k_pos, dims),
                             scores(q, k, q_pos + shift, k_pos + shift, dims),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_every_axis_changes_the_score(key, axis):
  kq, kk = jax.random.split(key)
  q, k = jax.random.normal(kq, (4, 64)), jax.random.normal(kk, (4, 64))
  moved = np.zeros(3, np.int32)
  moved[axis] = 3
  dims = rope_axes_dims(64)
  assert not np.allclose(scores(q, k, np.zeros(3), np.zeros(3), dims),
                         scores(q, k, np.zeros(3), moved, dims), atol=1e-3)


def test_rotation_keeps_norms_and_dtype(key):
  x = jax.random.normal(key, (2, 10, 3, 64), jnp.bfloat16)
  positions = jax.random.randint(key, (1, 10, 3), 0, 100)
  rotated = apply_rope(x, rope_angles(positions, rope_axes_dims(64)))
  assert rotated.dtype == jnp.bfloat16
  np.testing.assert_allclose(jnp.linalg.norm(rotated.astype(jnp.float32), axis=-1),
                             jnp.linalg.norm(x.astype(jnp.float32), axis=-1), rtol=2e-2)


def test_zero_angle_leaves_tokens_unrotated(key):
  x = jax.random.normal(key, (1, 5, 2, 16))
  np.testing.assert_array_equal(apply_rope(x, jnp.zeros((1, 5, 8))), x)
