"""The DiT with block-sparse attention: model.attention="block_sparse" (the Pallas kernel,
interpreted on CPU) computes what "xla" computes with the same pattern as a dense mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit import attention, sparsity
from configs.checks import validate_model_config
from dit.config import DiTConfig
from dit.model import DiT
from configs.common import model_config


def tiny(**overrides):
  return model_config("tiny", **{**dict(in_channels=3, dtype="float32", sparse_block=32),
                                 **overrides})


def inputs(key, batch=2, text_length=6):
  kv, kt, kx = jax.random.split(key, 3)
  video = jax.random.normal(kv, (batch, 4, 16, 16, 3))  # 4 x 8 x 8 = 256 video tokens
  t = jax.random.uniform(kt, (batch,))
  text = jax.random.normal(kx, (batch, text_length, 384))
  mask = jnp.arange(text_length)[None, :] < jnp.array([[text_length - 2], [text_length]])
  return video, t, dict(text=text, text_mask=mask)


def velocity(config, key, randomize):
  model = DiT(DiTConfig.from_dict(config), rngs=nnx.Rngs(0))
  randomize(model, jax.random.fold_in(key, 1))
  video, t, cond = inputs(key)
  return model(video, t, **cond)


@pytest.mark.parametrize("pattern", ["full", "window", "spatial_temporal"])
def test_block_sparse_model_equals_the_xla_model_with_the_same_pattern(key, randomize, pattern):
  kernel = velocity(tiny(attention="block_sparse", sparse_pattern=pattern, sparse_window=(1, 2, 2)),
                    key, randomize)
  dense = velocity(tiny(attention="xla", sparse_pattern=pattern, sparse_window=(1, 2, 2)), key,
                   randomize)
  np.testing.assert_allclose(kernel, dense, atol=2e-5 * float(jnp.abs(dense).max()), rtol=1e-5)


def test_a_sparse_pattern_changes_what_the_model_computes(key, randomize):
  full = velocity(tiny(sparse_pattern="full"), key, randomize)
  window = velocity(tiny(sparse_pattern="window", sparse_window=(0, 1, 1)), key, randomize)
  assert float(jnp.abs(full - window).max()) > 1e-3 * float(jnp.abs(full).max())


def test_gradients_through_the_kernel_match_the_dense_model(key, randomize):
  def grads(config):
    model = DiT(DiTConfig.from_dict(config), rngs=nnx.Rngs(0))
    randomize(model, jax.random.fold_in(key, 1))
    video, t, cond = inputs(key)
    loss = lambda m: (m(video, t, **cond) ** 2).mean()
    return jax.tree.leaves(nnx.state(nnx.grad(loss)(model), nnx.Param))

  for got, want in zip(grads(tiny(attention="block_sparse", sparse_pattern="window")),
                       grads(tiny(attention="xla", sparse_pattern="window"))):
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(jnp.abs(want).max())),
                               rtol=1e-4)


def test_the_pattern_covers_video_and_text_and_is_built_once_per_shape():
  config = tiny(sparse_pattern="temporal")
  pattern = sparsity.attention_pattern(config, (4, 8, 8), num_text=6)
  assert (pattern.num_q_blocks, pattern.num_kv_blocks) == (9, 9)  # 262 tokens in blocks of 32
  assert pattern.to_mask()[0, 0, -1].all() and pattern.to_mask()[0, 0, :, -1].all()  # text
  assert sparsity.attention_pattern(config, (4, 8, 8), num_text=6) is pattern
  assert sparsity.attention_pattern(tiny(), (4, 8, 8), num_text=6) is None  # "full"


def test_bad_sparsity_settings_are_config_errors():
  with pytest.raises(ValueError, match="sparse_pattern='diagonal'"):
    validate_model_config(tiny(sparse_pattern="diagonal"))
  with pytest.raises(ValueError, match="needs model.attention 'auto', 'block_sparse'"):
    validate_model_config(tiny(sparse_pattern="window", attention="cudnn"))
  with pytest.raises(ValueError, match="sparse_block=48 must be a power of two"):
    validate_model_config(tiny(sparse_block=48))
  with pytest.raises(ValueError, match="sparse_window"):
    validate_model_config(tiny(sparse_window=(1, 2)))
  assert {"auto", "block_sparse", "cudnn", "xla"} <= set(attention.attention_implementations())


def test_attention_that_cannot_run_is_a_config_error():
  with pytest.raises(ValueError, match="'cudnn' runs bfloat16 or float16"):
    validate_model_config(tiny(attention="cudnn"))  # float32
  with pytest.raises(ValueError, match="head dim 36"):
    validate_model_config(tiny(attention="cudnn", dtype="bfloat16", hidden_size=144))
  with pytest.raises(ValueError, match="runs on NVIDIA GPUs only and this machine's JAX backend "
                     "is 'tpu'"):
    validate_model_config(tiny(attention="cudnn", dtype="bfloat16"), platform="tpu")
  assert validate_model_config(tiny(attention="cudnn", dtype="bfloat16"), platform="gpu")
  with pytest.raises(ValueError, match="sparse_block=32: the TPU kernels take blocks of a "
                     "multiple of 128"):
    validate_model_config(tiny(sparse_pattern="window"), platform="tpu")
  assert validate_model_config(tiny(sparse_pattern="window", sparse_block=128), platform="tpu")
  assert validate_model_config(tiny(sparse_pattern="window"), platform="cpu")  # XLA: any block
