"""kernels/block_tables.py and kernels/reference.py: pattern tables, and the dense reference
the kernels are checked against."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.block_tables import PatternTables, mask_to_tables, tables_to_mask, transpose_tables
from kernels.reference import block_sparse_attention_reference


def random_block_mask(key, shape=(2, 3, 4, 6), density=0.4):
  return np.asarray(jax.random.uniform(key, shape) < density)


def test_tables_list_each_rows_blocks_in_ascending_order_and_round_trip(key):
  mask = random_block_mask(key)
  indices, counts = mask_to_tables(mask)
  np.testing.assert_array_equal(counts, mask.sum(-1))
  rows = zip(mask.reshape(-1, 6), np.asarray(indices).reshape(-1, indices.shape[-1]),
             np.asarray(counts).reshape(-1))
  for row, idx, count in rows:
    np.testing.assert_array_equal(idx[:count], np.flatnonzero(row))
    assert (idx[count:] == (idx[count - 1] if count else 0)).all()  # padding repeats the last
  np.testing.assert_array_equal(tables_to_mask(indices, counts, 6), mask)


def test_transposed_tables_list_the_query_blocks_of_each_key_block(key):
  mask = random_block_mask(key)
  q_indices, q_counts = transpose_tables(*mask_to_tables(mask), num_kv_blocks=6)
  assert q_indices.shape[-2] == 6
  np.testing.assert_array_equal(tables_to_mask(q_indices, q_counts, 4), mask.swapaxes(-1, -2))


def test_tables_build_inside_jit_given_their_width_and_too_narrow_a_width_is_an_error(key):
  mask = random_block_mask(key)
  indices, counts = jax.jit(lambda m: mask_to_tables(m, max_blocks=6))(mask)
  np.testing.assert_array_equal(tables_to_mask(indices, counts, 6), mask)
  with pytest.raises(ValueError, match="raise max_blocks"):
    mask_to_tables(np.ones((1, 1, 2, 6), bool), max_blocks=3)
  with pytest.raises(ValueError, match="pass max_blocks"):
    jax.jit(mask_to_tables)(mask)
  # Inside jit the width is checked when the call runs: an error, not a truncated row.
  narrow = jax.jit(lambda m: mask_to_tables(m, max_blocks=3))
  with pytest.raises(Exception, match="attends to 6 key blocks, more than max_blocks=3"):
    jax.block_until_ready(narrow(jnp.ones((1, 1, 2, 6), bool)))
  indices, counts = narrow(jnp.ones((1, 1, 2, 6), bool).at[..., 3:].set(False))  # 3 fit
  assert (np.asarray(counts) == 3).all()


def qkv(key, b=2, l=24, h=3, d=16, dtype=jnp.float32):
  return [jax.random.normal(k, (b, l, h, d), dtype) for k in jax.random.split(key, 3)]


def test_the_reference_with_every_block_is_ordinary_attention(key):
  q, k, v = qkv(key)
  indices, counts = mask_to_tables(np.ones((2, 3, 3, 3), bool))
  out, lse = block_sparse_attention_reference(q, k, v, indices, counts, block_q=8, block_k=8)
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v), atol=1e-5)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
  np.testing.assert_allclose(lse, jax.nn.logsumexp(logits, -1), atol=1e-5)


def test_the_reference_skips_unlisted_blocks_and_gives_zeros_to_rows_with_none(key):
  q, k, v = qkv(key)
  mask = np.zeros((2, 3, 3, 3), bool)
  mask[:, :, 0, 1] = True  # query block 0 sees key block 1 only; the others see nothing
  out, lse = block_sparse_attention_reference(q, k, v, *mask_to_tables(mask), block_q=8,
                                              block_k=8)
  expected = jax.nn.dot_product_attention(q[:, :8], k[:, 8:16], v[:, 8:16])
  np.testing.assert_allclose(out[:, :8], expected, atol=1e-5)
  assert (out[:, 8:] == 0).all() and jnp.isneginf(lse[..., 8:]).all()


def test_the_reference_keeps_packed_sequences_apart(key):
  q, k, v = qkv(key)
  segments = jnp.array([[1] * 10 + [2] * 14, [1] * 24])
  out, _ = block_sparse_attention_reference(
      q, k, v, *mask_to_tables(np.ones((2, 3, 3, 3), bool)), block_q=8, block_k=8,
      segment_ids=segments)
  mask = (segments[:, :, None] == segments[:, None, :])[:, None]
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v, mask=mask), atol=1e-5)


def test_pattern_tables_hold_both_directions_and_broadcast_a_shared_mask(key):
  mask = random_block_mask(key, shape=(4, 6))  # one [nQ, nK] pattern for every batch and head
  pattern = PatternTables.from_mask(mask, block_q=16, block_k=32)
  assert pattern.kv_indices.shape[:2] == (1, 1)
  assert (pattern.num_q_blocks, pattern.num_kv_blocks) == (4, 6)
  np.testing.assert_array_equal(pattern.to_mask()[0, 0], mask)
  np.testing.assert_array_equal(tables_to_mask(pattern.q_indices, pattern.q_counts, 4)[0, 0],
                                mask.T)
  np.testing.assert_allclose(pattern.density(), mask.mean())
  # A pytree whose block sizes are static: it passes through jit unchanged.
  same = jax.jit(lambda p: p)(pattern)
  assert (same.block_q, same.block_k) == (16, 32)


def test_pattern_tables_from_forward_tables_build_the_transpose_inside_jit(key):
  mask = random_block_mask(key)
  indices, counts = mask_to_tables(mask)
  pattern = jax.jit(lambda i, c: PatternTables.from_tables(
      i, c, num_kv_blocks=6, block_q=8, block_k=8))(indices, counts)
  assert pattern.q_indices.shape[-1] == 4  # as wide as nQ: enough for any pattern
  np.testing.assert_array_equal(tables_to_mask(pattern.q_indices, pattern.q_counts, 4),
                                mask.swapaxes(-1, -2))
  with pytest.raises(ValueError, match=r"\[nQ, nK\], \[H, nQ, nK\] or \[B, H, nQ, nK\]"):
    PatternTables.from_mask(np.ones(6, bool), block_q=8, block_k=8)


def test_refined_tables_are_the_same_token_pattern_on_smaller_blocks(key):
  mask = np.array(random_block_mask(key))  # [2, 3, 4, 6] at blocks of 32 x 64
  mask[0, 0, 1] = False
  pattern = PatternTables.from_mask(mask, block_q=32, block_k=64)
  fine = pattern.refine(16, 16)
  expected = np.repeat(np.repeat(mask, 2, axis=-2), 4, axis=-1)
  np.testing.assert_array_equal(fine.to_mask(), expected)
  np.testing.assert_array_equal(tables_to_mask(fine.q_indices, fine.q_counts, 8),
                                expected.swapaxes(-1, -2))
  indices, counts = np.asarray(fine.kv_indices), np.asarray(fine.kv_counts)
  for row, count in zip(indices.reshape(-1, indices.shape[-1]), counts.reshape(-1)):
    assert (np.diff(row[:count]) > 0).all() and (row[count:] == (row[count - 1] if count else 0)).all()
  with pytest.raises(ValueError, match="must divide"):
    pattern.refine(24, 16)


def test_the_full_pattern_lists_every_block_at_blocks_that_fit_the_lengths():
  pattern = PatternTables.full(300, 20)
  assert (pattern.block_q, pattern.block_k) == (128, 32)
  assert isinstance(pattern.kv_indices, np.ndarray)  # concrete, whatever trace builds it
  np.testing.assert_array_equal(pattern.to_mask(), np.ones((1, 1, 3, 1), bool))
