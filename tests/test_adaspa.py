"""AdaSpa's search (kernels/block_mass.py, kernels/attention_search.py) and head-adaptive
selection (kernels/adaspa.py), on fresh random inputs against the XLA references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.adaspa import keep_counts, pattern_recall, select_pattern
from kernels.attention_search import (cached_search, cached_search_reference, fused_search,
                                      fused_search_reference)
from kernels.block_mass import block_mass, block_mass_reference


def qkv(key, batch=2, length=200, heads=3, dim=32, spread=1.5):
  keys = jax.random.split(key, 3)
  return tuple(spread * jax.random.normal(k, (batch, length, heads, dim)) for k in keys)


def test_block_masses_match_the_reference_and_each_query_row_sums_to_one(key):
  q, k, v = qkv(key)  # 200 tokens: the last query and key blocks are partly padding
  _, lse, _ = fused_search_reference(q, k, v, block_q=64, block_k=64)
  masses = block_mass(q, k, lse, block_q=32, block_k=64)
  np.testing.assert_allclose(masses, block_mass_reference(q, k, lse, block_q=32, block_k=64),
                             atol=1e-5, rtol=1e-5)
  rows = np.asarray(masses.sum(-1))  # a block row of 32 queries sums to 32; the last holds 8
  np.testing.assert_allclose(rows, np.broadcast_to([32] * 6 + [8], rows.shape), rtol=1e-5)
  with pytest.raises(ValueError, match="lse must be \\[B, H, Lq\\]"):
    block_mass(q, k, lse[:, :, :10], block_q=32, block_k=64)


@pytest.mark.parametrize("padded_text", [False, True])
def test_the_tpu_mass_kernel_matches_the_reference(key, padded_text):
  # Pallas's TPU interpret mode; tiles of 128, a head dim of 72 and lengths that are not
  # multiples of the blocks.
  q, k, v = qkv(key, length=300, heads=2, dim=72)
  segments = jnp.ones((2, 300), jnp.int32).at[0, 270:].set(0) if padded_text else None
  search = dict(block_q=128, block_k=128, segment_ids=segments)
  _, lse, want = fused_search_reference(q, k, v, **search)
  masses = block_mass(q, k, lse, backend="tpu", interpret=True, **search)
  np.testing.assert_allclose(masses, want, atol=1e-5, rtol=1e-5)
  rows = np.asarray(masses.sum(-1))  # every query's mass is 1; 300 = 2 * 128 + 44
  np.testing.assert_allclose(rows, np.broadcast_to([128, 128, 44], rows.shape), rtol=1e-5)
  with pytest.raises(ValueError, match="multiple of 128"):
    block_mass(q, k, lse, block_q=64, block_k=128, backend="tpu")


def test_the_tpu_search_holds_blocks_not_the_logits():
  # The kernel bodies as plain XLA ops (interpret="hlo"), so XLA allocates what the kernels
  # hold: the compiled temp memory of both searches at 16K tokens is a small fraction of the
  # [L, L] float32 logits (1 GiB) that the XLA reference needs, and grows linearly with L.
  def temp_bytes(search, length):
    x = jax.ShapeDtypeStruct((1, length, 1, 64), jnp.bfloat16)
    lse = jax.ShapeDtypeStruct((1, 1, length), jnp.float32)
    options = dict(block_q=128, block_k=128, backend="tpu", interpret="hlo")
    fns = {"fused": lambda q, k, v: fused_search(q, k, v, **options),
           "cached": lambda q, k, lse: cached_search(q, k, lse, **options),
           "reference": lambda q, k, lse: cached_search_reference(q, k, lse, block_q=128,
                                                                  block_k=128)}
    args = (x, x, x) if search == "fused" else (x, x, lse)
    return jax.jit(fns[search]).lower(*args).compile().memory_analysis().temp_size_in_bytes

  length = 16384
  logits = length * length * 4
  if jax.default_backend() == "cpu":  # what the kernels avoid (XLA on CPU stores the logits)
    assert temp_bytes("reference", length) >= logits
  for search in ("fused", "cached"):
    assert temp_bytes(search, length) < logits / 32, search
    assert temp_bytes(search, length) < 6 * temp_bytes(search, length // 4), search


@pytest.mark.parametrize("padded_text", [False, True])
def test_the_fused_search_matches_its_reference_and_the_cached_search_equals_it(key,
                                                                               padded_text):
  q, k, v = qkv(key, length=256)
  segments = None
  if padded_text:  # as the DiT's joint sequence: the last 40 tokens of sample 0 are padding
    segments = jnp.ones((2, 256), jnp.int32).at[0, 216:].set(0)
  search = dict(block_q=32, block_k=32, segment_ids=segments)
  out, lse, masses = fused_search(q, k, v, **search)
  want_out, want_lse, want_masses = fused_search_reference(q, k, v, **search)
  np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(lse, want_lse, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(masses, want_masses, atol=1e-5, rtol=1e-5)
  # On the inputs of the search, the lse-cached pass (no dense pass) gives the same masses.
  cached = cached_search(q, k, lse, **search)
  np.testing.assert_allclose(cached, masses, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(cached_search_reference(q, k, lse, **search), masses, atol=1e-5,
                             rtol=1e-5)
  np.testing.assert_allclose(masses.sum(-1), 32, rtol=1e-5)  # every query's mass is 1
  if padded_text:  # no mass crosses between real and padding tokens
    np.testing.assert_allclose(masses[0, :, :6, 7], 0, atol=1e-6)


def test_the_chosen_pattern_keeps_at_least_the_mass_of_a_random_one_of_equal_density(key):
  q, k, v = qkv(key, length=512, heads=4)
  _, _, masses = fused_search(q, k, v, block_q=64, block_k=64)
  chosen = select_pattern(masses, 0.75, block_q=64, block_k=64)
  chosen_mask = chosen.tables.to_mask()
  np.testing.assert_allclose(chosen.recall, pattern_recall(masses, chosen_mask), rtol=1e-5)
  # A random pattern with the same number of key blocks in every row of every head.
  counts = chosen_mask.sum(-1, keepdims=True)
  scores = jax.random.uniform(jax.random.fold_in(key, 1), masses.shape)
  ranks = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)
  random_recall = pattern_recall(masses, ranks < counts)
  assert np.all(np.asarray(chosen.recall) >= np.asarray(random_recall) - 1e-6)
  assert float(chosen.recall.mean()) > float(random_recall.mean())


def test_heads_move_along_the_hierarchy_and_the_average_sparsity_stays_s(key):
  heads, blocks = 6, 17  # 16 free blocks and a forced one
  masses = jax.random.uniform(key, (2, heads, blocks, blocks))  # diffuse: recall ~ kept share
  # Heads 0 and 3 put almost all their mass on one block per row: recall > 0.8 at any s.
  peaked = jnp.eye(blocks)[None] * 1000.0
  masses = masses.at[:, 0].add(peaked[0]).at[:, 3].add(peaked[0])
  forced = np.zeros(blocks, bool)
  forced[-1] = True  # a text block: kept by every row of every head
  pattern = select_pattern(masses, 0.5, block_q=16, block_k=16, forced_blocks=forced,
                           dense_rows=forced)  # the text query block reads everything
  assert keep_counts(0.5, blocks, 1) == (5, 9, 13)  # 4, 8, 12 of the free blocks, + 1
  sparsity = np.asarray(pattern.sparsity)
  for b in range(2):
    assert sparsity[b, 0] == sparsity[b, 3] == 0.75  # (1 + s) / 2
    assert sorted(sparsity[b]) == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75]  # two at (3s - 1) / 2
    assert sparsity[b].mean() == pytest.approx(0.5)
  mask = np.asarray(pattern.tables.to_mask())
  assert mask[..., -1].all() and mask[..., -1, :].all()
  np.testing.assert_array_equal(mask[..., :-1, :].sum(-1), 1 + np.round((1 - sparsity) * 16)
                                [..., None].repeat(blocks - 1, -1))
  # The recall counts the selected (video) rows only.
  np.testing.assert_allclose(pattern.recall, pattern_recall(masses[..., :-1, :],
                                                            mask[..., :-1, :]), rtol=1e-5)
  # Nothing above the threshold: every head stays at s.
  flat = select_pattern(jax.random.uniform(key, (1, heads, 16, 16)), 0.5, block_q=16,
                        block_k=16)
  np.testing.assert_array_equal(flat.sparsity, 0.5)
  with pytest.raises(ValueError, match="must be in \\[0, 1\\)"):
    keep_counts(1.0, blocks)


def test_at_sparsity_zero_every_head_keeps_every_block_and_levels_always_average_s():
  assert keep_counts(0.0, 17, 1) == (17, 17, 17)  # no head can move denser, so none moves
  assert keep_counts(0.9, 9, 1) == (2, 2, 2)  # at least one free block besides the text
  for s in (0.1, 0.3, 0.5, 0.8):
    for blocks in (5, 9, 17, 40):
      sparser, base, denser = keep_counts(s, blocks, 1)
      assert sparser <= base <= denser <= blocks and sparser + denser == 2 * base
