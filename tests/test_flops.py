"""training/flops.py: the analytic FLOP count agrees with XLA's count of the compiled model."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs.common import model_config as model_section
from dit.config import DiTConfig
from dit.model import DiT
from training.flops import attention_density, forward_flops, peak_flops, train_step_flops


def model_config(size, **overrides):
  return DiTConfig.from_dict(model_section(size, **overrides))


def xla_flops(config, batch, video_shape, text_length):
  graphdef, state = nnx.split(DiT(config, rngs=nnx.Rngs(0)))
  forward = jax.jit(lambda s, v, t, x: nnx.merge(graphdef, s)(v, t, text=x))
  args = (state, jnp.ones((batch, *video_shape, config.in_channels)), jnp.ones((batch,)),
          jnp.ones((batch, text_length, config.text_dim)))
  analysis = forward.lower(*args).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_the_count_matches_xla_on_the_unrolled_model_within_five_percent():
  # Unrolled: XLA counts a scanned loop body once, not once per layer.
  config = model_config("tiny", hidden_size=128, depth=3, num_heads=4, in_channels=3,
                        dtype="float32", scan_layers=False)
  counted = forward_flops(config, (4, 16, 16), 2, text_length=8)
  assert counted == pytest.approx(xla_flops(config, 2, (4, 16, 16), 8), rel=0.05)
  assert train_step_flops(config, (4, 16, 16), 2, 8) == 3 * counted


def test_a_sparse_pattern_removes_exactly_the_attention_pairs_it_skips():
  dense = model_config("tiny", in_channels=3, sparse_block=16)
  sparse = model_config("tiny", in_channels=3, sparse_block=16, sparse_pattern="window",
                        sparse_window=(0, 1, 1))
  grid, text = (4, 16, 16), 16  # patch (1, 2, 2): 256 video + 16 text tokens
  density = attention_density(sparse, (4, 8, 8), text)
  assert 0 < density < 0.6
  tokens = 256 + text
  skipped = 4 * (1 - density) * tokens**2 * dense.hidden_size * dense.depth
  assert forward_flops(dense, grid, 1, text) - forward_flops(sparse, grid, 1, text) == (
      pytest.approx(skipped))


def test_peak_flops_by_device_kind():
  assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert peak_flops("NVIDIA H100 PCIe") == 756e12
  assert peak_flops("TPU v5 lite") == 197e12
  assert peak_flops("cpu") is None
