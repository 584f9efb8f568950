"""Sparse attention while sampling (diffusion/sparse_sampling.py,
diffusion/sparse_attention.py): the schedule of modes, AdaSpa's per-layer patterns threaded
through the DiT, and sampling with them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.quickstart import get_config
from diffusion.sparse_attention import SparseStep, forced_blocks
from configs.common import sparse_config
from dit.config import DiTConfig
from dit.model import DiT
from diffusion.samplers import sample
from kernels.block_tables import tables_to_mask
from diffusion.sparse_sampling import (Segment, check_schedule, sample_scheduled, schedule,
                                       search_report, search_steps)


def small_model(randomize, key, **overrides):
  """The quick-start model at half width with 2x4x4 patches: 2 dual and 2 single blocks, 144
  tokens."""
  config = get_config().model
  config.update(hidden_size=64, patch_size=(2, 4, 4), **overrides)
  model = DiT(DiTConfig.from_dict(config), rngs=nnx.Rngs(0))
  randomize(model, jax.random.fold_in(key, 7))
  return model


def inputs(key, batch=2):
  video = jax.random.normal(key, (batch, 4, 32, 32, 1))
  text = jax.random.normal(jax.random.fold_in(key, 1), (batch, 16, 384))
  text_mask = jnp.arange(16)[None] < jnp.array([[16], [9]])[:batch]
  return video, dict(text=text, text_mask=text_mask)


def layer_masks(patterns):
  """bool [layers, B, H, nQ, nK] of stacked LayerPatterns (144 tokens in blocks of 16)."""
  return tables_to_mask(patterns.tables.kv_indices, patterns.tables.kv_counts, 9)


def test_the_default_schedule_warms_up_then_searches_at_10_and_30_of_50():
  config = sparse_config(attention="adaspa")
  assert schedule(50, config) == [Segment(0, 10, "dense", "dense"),
                                  Segment(10, 30, "fused_search", "sparse"),
                                  Segment(30, 50, "cached_search", "sparse")]
  assert search_steps(25, config) == [5, 15]  # scaled to the step count
  # A warm-up past the first search step still ends in a (fused) search.
  assert search_steps(50, sparse_config(attention="adaspa", warmup=0.4)) == [20, 30]
  assert schedule(4, sparse_config(attention="window", warmup=0.5)) == [
      Segment(0, 2, "dense", "dense"), Segment(2, 4, "static", "static")]
  assert schedule(4, sparse_config()) == []  # "none": the model as configured
  # Halves round up; no later search on the last step (its pattern would serve no step).
  assert search_steps(25, sparse_config(attention="adaspa", searches=(25, 49))) == [5, 13]
  assert search_steps(3, sparse_config(attention="adaspa")) == [1]


def test_a_fused_search_gives_dense_attention_and_a_pattern_per_layer(key, randomize):
  model = small_model(randomize, key)
  video, cond = inputs(key)
  t = jnp.array([0.3, 0.8])
  dense = model(video, t, **cond)
  step = SparseStep(mode="fused_search", sparsity=0.5, block=16)
  velocity, found = model.with_attention(step, video, t, **cond)
  # f32 to 1e-5 of the velocity's scale: the search's dense pass sums in blocks of 16 keys.
  np.testing.assert_allclose(velocity, dense, atol=1e-5 * float(jnp.abs(dense).max()))
  assert set(found) == {"dual", "single"}
  dual = found["dual"]
  assert dual.tables.kv_indices.shape[:4] == (2, 2, 4, 9)  # [layers, B, H, nQ=144/16]
  assert dual.lse.shape == (2, 2, 4, 144) and dual.recall.shape == (2, 2, 4)
  np.testing.assert_allclose(dual.sparsity.mean(axis=-1), 0.5, atol=1e-6)  # the average is s
  assert bool(jnp.all(layer_masks(dual)[..., -1]))  # the text block: always kept
  # The first layer sees the same inputs, so its lse-cached search picks the same patterns (the
  # later layers see the sparse outputs of the earlier ones); the sparse mode with the patterns
  # of a search gives what the search step gave.
  cached_v, cached = model.with_attention(step.replace(mode="cached_search", patterns=found),
                                          video, t, **cond)
  np.testing.assert_array_equal(cached["dual"].tables.kv_indices[0],
                                found["dual"].tables.kv_indices[0])
  sparse_v, _ = model.with_attention(step.replace(mode="sparse", patterns=cached), video, t,
                                     **cond)
  np.testing.assert_allclose(sparse_v, cached_v, atol=1e-6, rtol=1e-6)
  assert float(jnp.abs(sparse_v - dense).max()) > 1e-4  # half the video blocks are dropped


def test_the_patterns_change_what_layers_attend_to_per_head(key, randomize):
  model = small_model(randomize, key)
  video, cond = inputs(key)
  _, found = model.with_attention(SparseStep(mode="fused_search", sparsity=0.75, block=16),
                                  video, jnp.array([0.5, 0.5]), **cond)
  masks = np.asarray(layer_masks(found["single"]))
  assert not (masks == masks[:, :, :1]).all()  # heads differ
  assert not (masks[0] == masks[1]).all()  # layers differ


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_at_sparsity_zero_adaspa_sampling_equals_dense_sampling(key, randomize, method):
  model = small_model(randomize, key)
  _, cond = inputs(key)
  options = dict(num_steps=5, method=method, guidance_scale=3.0)
  dense = sample(model, key, (2, 4, 32, 32, 1), cond, **options)
  config = sparse_config(attention="adaspa", sparsity=0.0, block=16, searches=(1, 3),
                         searches_of=5)
  videos, searches = sample_scheduled(model, key, (2, 4, 32, 32, 1), cond, config=config,
                                      **options)
  np.testing.assert_allclose(videos, dense, atol=1e-5 * float(jnp.abs(dense).max()))
  report = search_report(searches, search_steps(5, config))
  assert [s["step"] for s in report["searches"]] == [1, 3]
  assert report["sparsity"] == 0 and report["recall"] == pytest.approx(1, abs=1e-5)
  assert len(report["searches"][0]["recall_per_layer"]) == 4


def test_sparse_sampling_departs_from_dense_with_recall_below_one(key, randomize):
  model = small_model(randomize, key)
  _, cond = inputs(key)
  options = dict(num_steps=4, method="euler", guidance_scale=3.0)
  dense = sample(model, key, (2, 4, 32, 32, 1), cond, **options)
  for attention in ("adaspa", "window"):
    config = sparse_config(attention=attention, sparsity=0.75, block=16, searches=(1, 2),
                           searches_of=4, warmup=0.25)
    videos, searches = sample_scheduled(model, key, (2, 4, 32, 32, 1), cond, config=config,
                                        **options)
    assert float(jnp.abs(videos - dense).max()) > 1e-4
    if attention == "adaspa":
      report = search_report(searches, [1, 2])
      assert 0 < report["recall"] < 1 and report["sparsity"] == pytest.approx(0.75)


def test_with_the_block_sparse_kernels_adaspa_gives_what_the_xla_references_give(key, randomize):
  """model.attention "block_sparse": the Pallas search and sparse kernels (interpreted on CPU)."""
  video, cond = inputs(key)
  t = jnp.array([0.3, 0.8])
  step = SparseStep(mode="fused_search", sparsity=0.5, block=16)
  models = {attention: small_model(randomize, key, attention=attention, depth=2,
                                   dual_stream_depth=1, num_heads=2)
            for attention in ("xla", "block_sparse")}
  v, found = models["xla"].with_attention(step, video, t, **cond)
  kernel_v, kernel_found = models["block_sparse"].with_attention(step, video, t, **cond)
  scale = float(jnp.abs(v).max())
  np.testing.assert_allclose(kernel_v, v, atol=1e-5 * scale)  # the fused search's dense pass
  np.testing.assert_array_equal(kernel_found["single"].tables.kv_indices,
                                found["single"].tables.kv_indices)
  # The lse-cached search: the kernel's scores, summed in another order, may break a near tie
  # between two key blocks the other way, so its patterns are the reference's but for a few...
  cached = step.replace(mode="cached_search", patterns=found)
  _, searched = models["xla"].with_attention(cached, video, t, **cond)
  kernel_sparse_v, kernel_searched = models["block_sparse"].with_attention(cached, video, t,
                                                                           **cond)
  indices = lambda p: np.asarray(p["single"].tables.kv_indices)
  assert np.mean(indices(kernel_searched) == indices(searched)) > 0.9
  # ...and its sparse pass is the reference's sparse attention on the kernel's patterns.
  sparse_v, _ = models["xla"].with_attention(step.replace(mode="sparse",
                                                          patterns=kernel_searched),
                                             video, t, **cond)
  np.testing.assert_allclose(kernel_sparse_v, sparse_v, atol=1e-5 * scale)


def test_text_blocks_are_those_holding_a_text_token_and_bad_settings_fail_up_front():
  assert not forced_blocks(100, 100, 16).any()  # no text: a short last block is still video
  np.testing.assert_array_equal(np.flatnonzero(forced_blocks(140, 130, 16)), [8])
  model = get_config().model
  with pytest.raises(ValueError, match="nothing is left to select"):
    # The tiny run's 16 video and 16 text tokens in one block of model.sparse_block=128.
    check_schedule(sparse_config(attention="adaspa"), model, num_video=16, num_text=16)
  model.attention = "block_sparse"
  with pytest.raises(ValueError, match="Pallas kernels take blocks of 16"):
    check_schedule(sparse_config(attention="adaspa", block=8), model, 128, 16)
  model.sequence_parallel = "ring"
  with pytest.raises(ValueError, match="does not run under model.sequence_parallel='ring'"):
    check_schedule(sparse_config(attention="window", block=16), model, 128, 16)
  check_schedule(sparse_config(), model, 128, 16)  # "none": anything goes
