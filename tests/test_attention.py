import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit import attention


def softmax_attention_reference(q, k, v, mask=None):
  """Dense attention in float64 numpy; q [B, Lq, H, D], mask [B, Lq, Lk]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask[:, None], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


def random_qkv(key, b=2, length=24, heads=3, dim=16, dtype=jnp.float32):
  return [jax.random.normal(k, (b, length, heads, dim), dtype) for k in jax.random.split(key, 3)]


def test_xla_matches_the_float64_reference(key):
  q, k, v = random_qkv(key)
  out = attention.dot_product_attention(q, k, v, implementation="xla")
  np.testing.assert_allclose(out, softmax_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)


def test_segment_ids_keep_tokens_within_their_segment(key):
  q, k, v = random_qkv(key)
  segment_ids = jax.random.randint(jax.random.fold_in(key, 1), (2, 24), 0, 3)
  out = attention.dot_product_attention(q, k, v, implementation="xla", segment_ids=segment_ids)
  mask = np.asarray(segment_ids[:, :, None] == segment_ids[:, None, :])
  np.testing.assert_allclose(out, softmax_attention_reference(q, k, v, mask),
                             rtol=1e-5, atol=1e-5)


def test_bfloat16_is_close_to_the_reference(key):
  q, k, v = random_qkv(key, dtype=jnp.bfloat16)
  out = attention.dot_product_attention(q, k, v, implementation="xla")
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), softmax_attention_reference(q, k, v),
                             atol=2e-2, rtol=2e-2)


def test_unknown_implementation_names_the_known_ones(key):
  q, k, v = random_qkv(key)
  with pytest.raises(ValueError, match=r"unknown attention implementation 'flash'.*'xla'"):
    attention.dot_product_attention(q, k, v, implementation="flash")


def test_registered_implementations_are_found_by_name(key, monkeypatch):
  monkeypatch.setattr(attention, "_IMPLEMENTATIONS", dict(attention._IMPLEMENTATIONS))
  calls = []

  @attention.register_attention("test_recording")
  def recording(q, k, v, **kwargs):
    calls.append(q.shape)
    return attention.xla_attention(q, k, v, **kwargs)

  q, k, v = random_qkv(key)
  out = attention.dot_product_attention(q, k, v, implementation="test_recording")
  assert calls == [q.shape]
  np.testing.assert_array_equal(out, attention.xla_attention(q, k, v))
  assert "test_recording" in attention.attention_implementations()


def test_auto_picks_per_backend():
  resolve = lambda platform, dtype=jnp.bfloat16, head_dim=64, **call: (
      attention.resolve_implementation("auto", platform=platform, dtype=dtype,
                                       head_dim=head_dim, **call))
  # CPU: the XLA reference, patterns included (a dense mask is fastest there).
  assert {resolve("cpu"), resolve("cpu", pattern=True), resolve("cpu", jnp.float32)} == {"xla"}
  # NVIDIA GPUs: cuDNN for dense attention it runs, our kernel for the rest.
  assert resolve("gpu") == resolve("gpu", jnp.float16, 72) == "cudnn"
  for call in (dict(pattern=True), dict(segments=True), dict(needs_lse=True),
               dict(dtype=jnp.float32), dict(head_dim=160), dict(head_dim=36)):
    assert resolve("gpu", **call) == "block_sparse", call
  # TPUs: our Pallas TPU kernel, dense or not.
  assert {resolve("tpu"), resolve("tpu", pattern=True), resolve("tpu", segments=True)} == {
      "block_sparse"}
  # An explicit name is never second-guessed.
  for name in ("xla", "cudnn", "block_sparse"):
    assert attention.resolve_implementation(name, platform="tpu", dtype=jnp.float32,
                                            head_dim=64, pattern=True) == name
  assert [attention.pattern_implementation(name, "gpu") for name in ("auto", "xla", "cudnn")] == [
      "block_sparse", "xla", "block_sparse"]


def test_a_model_config_says_what_each_kind_of_call_runs():
  from configs.common import model_config  # pylint: disable=g-import-not-at-top
  from dit.config import DiTConfig  # pylint: disable=g-import-not-at-top
  xl = DiTConfig.from_dict(model_config("XL"))  # bfloat16, head dim 64
  assert attention.implementations_run(xl, "gpu") == dict(dense="cudnn", segments="block_sparse",
                                                          pattern="block_sparse")
  ring = xl.replace(sequence_parallel="ring")  # merges by log-sum-exp: never cuDNN
  assert set(attention.implementations_run(ring, "gpu").values()) == {"block_sparse"}
  assert set(attention.implementations_run(xl, "cpu").values()) == {"xla"}


def test_auto_runs_what_it_resolves_to_on_this_machine(key):
  q, k, v = random_qkv(key)
  segment_ids = jax.random.randint(jax.random.fold_in(key, 1), (2, 24), 0, 2)
  chosen = attention.resolve_implementation("auto", platform=jax.default_backend(),
                                            dtype=q.dtype, head_dim=16, segments=True)
  for call in (attention.dot_product_attention, attention.get_attention("auto")):
    kwargs = dict(implementation="auto") if call is attention.dot_product_attention else {}
    np.testing.assert_array_equal(
        call(q, k, v, segment_ids=segment_ids, **kwargs),
        attention.get_attention(chosen)(q, k, v, segment_ids=segment_ids))


def test_cudnn_off_a_gpu_is_a_clear_error(key):
  if jax.default_backend() == "gpu":
    pytest.skip("this machine has a GPU")
  q, k, v = random_qkv(key, dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="runs on NVIDIA GPUs only.*model.attention='auto'"):
    attention.dot_product_attention(q, k, v, implementation="cudnn")
