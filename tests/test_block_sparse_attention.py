"""kernels/block_sparse_attention.py: the Pallas kernels (interpreted on CPU; compiled on a GPU
when there is one) against the dense float32 reference, on fresh random inputs and patterns."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.block_sparse_attention import block_sparse_attention, full_pattern, sparse_attention
from kernels.block_tables import PatternTables, mask_to_tables
from kernels.reference import block_sparse_attention_reference

# The GPU kernels run on GPUs and interpreted on CPU; the TPU kernels in TPU interpret mode.
BACKENDS = ["gpu"] if jax.default_backend() == "gpu" else ["gpu", "tpu"]
# Block sizes per backend (TPU tiles are multiples of 128), and lengths that are not multiples.
SHAPES = {"gpu": dict(block=32, q_len=200, kv_len=168), "tpu": dict(block=128, q_len=300,
                                                                   kv_len=260)}
TOLERANCE = {jnp.float32: dict(out=1e-5, grad=1e-5), jnp.bfloat16: dict(out=1e-2, grad=2e-2)}


def random_case(key, backend, dtype, head_dim, batch=2, heads=3, density=0.45):
  """q, k, v, a random block mask with an empty row and different counts per head, segments."""
  shape = SHAPES[backend]
  block, q_len, kv_len = shape["block"], shape["q_len"], shape["kv_len"]
  keys = jax.random.split(key, 5)
  q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), jnp.float32).astype(dtype)
  k, v = (jax.random.normal(kk, (batch, kv_len, heads, head_dim), jnp.float32).astype(dtype)
          for kk in keys[1:3])
  num_q, num_kv = -(-q_len // block), -(-kv_len // block)
  mask = np.array(jax.random.uniform(keys[3], (batch, heads, num_q, num_kv)) < density)
  mask[0, 0, 1] = False  # a query block that sees nothing
  mask[1, 2, 0] = True   # a query block that sees everything,
  mask[1, 1, 0] = np.arange(num_kv) == 0  # and one that sees a single block in another head
  # Two packed sequences in example 0 (the boundary inside a block), one in example 1.
  cut = int(jax.random.randint(keys[4], (), 1, min(q_len, kv_len) - 1))
  segments = jnp.stack([jnp.where(jnp.arange(q_len) < cut, 1, 2), jnp.ones(q_len, jnp.int32)])
  kv_segments = jnp.stack([jnp.where(jnp.arange(kv_len) < cut, 1, 2),
                           jnp.ones(kv_len, jnp.int32)])
  return dict(q=q, k=k, v=v, mask=mask, block=block, segment_ids=segments,
              kv_segment_ids=kv_segments)


def kernel_and_reference(case, backend, use_segments=True):
  indices, counts = mask_to_tables(case["mask"])
  segments = dict(segment_ids=case["segment_ids"], kv_segment_ids=case["kv_segment_ids"])
  segments = segments if use_segments else {}
  blocks = dict(block_q=case["block"], block_k=case["block"])
  kernel = functools.partial(block_sparse_attention, kv_indices=indices, kv_counts=counts,
                             return_lse=True, backend=backend, **blocks, **segments)
  reference = functools.partial(block_sparse_attention_reference, kv_indices=indices,
                                kv_counts=counts, **blocks, **segments)
  return kernel, reference


def every_variant(test):
  """Each backend, head dims 64 and 128, float32 and bfloat16."""
  test = pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])(test)
  test = pytest.mark.parametrize("head_dim", [64, 128])(test)
  return pytest.mark.parametrize("backend", BACKENDS)(test)


def assert_close(actual, expected, tolerance):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  scale = max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(actual, expected, atol=tolerance * scale, rtol=tolerance)


@every_variant
def test_forward_and_lse_match_the_reference(key, backend, head_dim, dtype):
  case = random_case(key, backend, dtype, head_dim)
  kernel, reference = kernel_and_reference(case, backend)
  out, lse = kernel(case["q"], case["k"], case["v"])
  expected_out, expected_lse = reference(case["q"], case["k"], case["v"])
  assert out.dtype == dtype and out.shape == case["q"].shape and lse.dtype == jnp.float32
  assert_close(out, expected_out, TOLERANCE[dtype]["out"])
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected_lse))
  finite = np.isfinite(expected_lse)
  assert_close(np.asarray(lse)[finite], np.asarray(expected_lse)[finite], TOLERANCE[dtype]["out"])
  block = case["block"]
  assert (np.asarray(out[0, block:2 * block, 0], np.float32) == 0).all()  # the empty row


@every_variant
def test_gradients_match_the_reference(key, backend, head_dim, dtype):
  case = random_case(key, backend, dtype, head_dim)
  kernel, reference = kernel_and_reference(case, backend)
  key_out, key_lse = jax.random.split(jax.random.fold_in(key, 1))
  out_weights = jax.random.normal(key_out, case["q"].shape, jnp.float32)
  lse_weights = jax.random.normal(key_lse, case["q"].shape[:1] + case["q"].shape[2:3]
                                  + case["q"].shape[1:2], jnp.float32)

  def loss(attention):
    def value(q, k, v):
      out, lse = attention(q, k, v)
      lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # empty rows: -inf, no gradient
      return (out.astype(jnp.float32) * out_weights).sum() + (lse * lse_weights).sum()
    return jax.grad(value, argnums=(0, 1, 2))

  grads = loss(kernel)(case["q"], case["k"], case["v"])
  expected = loss(reference)(case["q"], case["k"], case["v"])
  for name, grad, want in zip(("dq", "dk", "dv"), grads, expected):
    assert grad.dtype == dtype, name
    assert np.isfinite(np.asarray(grad, np.float32)).all(), name
    assert_close(grad, want, TOLERANCE[dtype]["grad"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_block_listed_is_ordinary_attention(key, backend):
  case = random_case(key, backend, jnp.float32, 64)
  q, k, v, block = case["q"], case["k"], case["v"], case["block"]
  mask = np.ones((1, 1, -(-q.shape[1] // block), -(-k.shape[1] // block)), bool)  # shared
  pattern = PatternTables.from_mask(mask, block_q=block, block_k=block)
  out = sparse_attention(q, k, v, pattern, scale=0.1, backend=backend)
  with jax.default_matmul_precision("highest"):
    expected = jax.nn.dot_product_attention(q, k, v, scale=0.1)
  assert_close(out, expected, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_shared_across_batch_and_heads_equals_the_broadcast_table(key, backend):
  case = random_case(key, backend, jnp.float32, 64)
  shared = case["mask"][:1, :1]
  block = dict(block_q=case["block"], block_k=case["block"])
  one = sparse_attention(case["q"], case["k"], case["v"],
                         PatternTables.from_mask(shared, **block), backend=backend)
  every = sparse_attention(case["q"], case["k"], case["v"],
                           PatternTables.from_mask(np.broadcast_to(shared, case["mask"].shape),
                                                   **block), backend=backend)
  np.testing.assert_array_equal(one, every)


def test_without_segments_and_inside_jit_with_traced_tables(key):
  case = random_case(key, "gpu", jnp.float32, 64)
  kernel, reference = kernel_and_reference(case, "gpu", use_segments=False)
  width = case["mask"].shape[-1]

  @jax.jit
  def run(q, k, v, mask):
    indices, counts = mask_to_tables(mask, max_blocks=width)
    return block_sparse_attention(q, k, v, indices, counts, block_q=case["block"],
                                  block_k=case["block"], backend="gpu")

  out = run(case["q"], case["k"], case["v"], case["mask"])
  assert_close(out, reference(case["q"], case["k"], case["v"])[0], 1e-5)


def test_bad_inputs_are_errors_that_say_what_to_fix(key):
  case = random_case(key, "gpu", jnp.float32, 64)
  q, k, v, block = case["q"], case["k"], case["v"], case["block"]
  pattern = PatternTables.from_mask(case["mask"], block_q=block, block_k=block)
  with pytest.raises(ValueError, match="build the pattern for these lengths"):
    sparse_attention(q[:, :block], k, v, pattern)
  with pytest.raises(ValueError, match="share one dtype"):
    sparse_attention(q.astype(jnp.bfloat16), k, v, pattern)
  with pytest.raises(ValueError, match="segment_ids must be"):
    sparse_attention(q, k, v, pattern, segment_ids=case["segment_ids"][:, :5])
  with pytest.raises(ValueError, match="kv_segment_ids needs segment_ids"):
    sparse_attention(q, k, v, pattern, kv_segment_ids=case["kv_segment_ids"])
  with pytest.raises(ValueError, match="power of two"):
    sparse_attention(q, k, v, PatternTables.from_mask(case["mask"], block_q=24, block_k=block))
  with pytest.raises(ValueError, match="multiple of 128"):
    sparse_attention(q, k, v, pattern, backend="tpu")
  with pytest.raises(ValueError, match="leading dims"):
    sparse_attention(q, k, v, PatternTables.from_mask(
        np.concatenate([case["mask"]] * 2, axis=1), block_q=block, block_k=block))
  with pytest.raises(ValueError, match="unknown kernel backend"):
    sparse_attention(q, k, v, pattern, backend="cuda")


def test_smaller_kernel_tiles_than_pattern_blocks_compute_the_same(key):
  case = random_case(key, "gpu", jnp.float32, 64)
  q = case["q"]
  k, v = (jax.random.normal(x, (2, 176, 3, 64)) for x in jax.random.split(key))  # 5.5 blocks
  mask = case["mask"][..., :6]
  pattern = PatternTables.from_mask(mask, block_q=32, block_k=32)
  def grads(**tiles):
    def loss(q, k, v):
      out, lse = sparse_attention(q, k, v, pattern, return_lse=True, backend="gpu", **tiles)
      return (out ** 2).sum() + jnp.where(jnp.isfinite(lse), lse, 0).sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  (value, expected) = grads()
  (tiled_value, tiled) = grads(forward_blocks=(16, 16), backward_blocks=(32, 16))
  assert_close(tiled_value, value, 1e-5)
  for got, want in zip(tiled, expected):
    assert_close(got, want, 1e-5)
  with pytest.raises(ValueError, match="must divide"):
    sparse_attention(q, k, v, pattern, backward_blocks=(48, 16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlisted_key_blocks_are_never_read(key, backend):
  # NaN in every K/V block that no query block of its head lists: a kernel that computed every
  # block and masked afterwards would give NaN (0 * NaN); the kernels skip them.
  case = random_case(key, backend, jnp.float32, 64)
  mask = case["mask"].copy()
  mask[:, :, :, 1] = False
  mask[1, 2, 0] = True  # this head lists every block: its block 1 stays a number
  case["mask"] = mask
  kernel, reference = kernel_and_reference(case, backend)
  q, k, v, block = case["q"], case["k"], case["v"], case["block"]
  unlisted = ~mask.any(axis=2)  # [B, H, nK]
  assert unlisted[..., 1].sum() == unlisted.shape[0] * unlisted.shape[1] - 1
  tokens = np.repeat(unlisted, block, axis=-1)[..., :k.shape[1]].transpose(0, 2, 1)  # [B, Lk, H]
  poisoned = [jnp.where(tokens[..., None], jnp.nan, x) for x in (k, v)]

  def grads(attention, k, v):
    loss = lambda q, k, v: (attention(q, k, v)[0] * q).sum()
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  out, lse = kernel(q, *poisoned)
  expected_out, expected_lse = reference(q, k, v)
  assert np.isfinite(np.asarray(out)).all()
  assert_close(out, expected_out, 1e-5)
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected_lse))
  for grad, want in zip(grads(kernel, *poisoned), grads(reference, k, v)):
    assert np.isfinite(np.asarray(grad)).all()
    assert_close(grad, want, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_attention_of_a_short_sequence_runs_at_tiles_the_backend_takes(key, backend):
  q, k, v = (jax.random.normal(kk, (1, 40, 2, 64)) for kk in jax.random.split(key, 3))
  pattern = full_pattern(40, 40, backend=backend)
  assert pattern.block_q == {"gpu": 64, "tpu": 128}[backend]
  with jax.default_matmul_precision("highest"):
    assert_close(sparse_attention(q, k, v, pattern, backend=backend),
                 jax.nn.dot_product_attention(q, k, v), 1e-5)


def test_a_head_dim_past_128_runs_on_smaller_tiles_and_matches_the_reference(key):
  case = random_case(key, "gpu", jnp.float32, 160)
  kernel, reference = kernel_and_reference(case, "gpu")
  out, lse = kernel(case["q"], case["k"], case["v"])
  expected_out, expected_lse = reference(case["q"], case["k"], case["v"])
  assert_close(out, expected_out, 1e-5)
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected_lse))
