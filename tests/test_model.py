import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit import attention
from dit.blocks import DualStreamBlock, SingleStreamBlock
from dit.config import DiTConfig
from dit.model import DiT
from configs.common import model_config
from dit.rope import rope_angles


def tiny(**overrides):
  return DiTConfig.from_dict(model_config("tiny", in_channels=3, **overrides))


def inputs(key, shape=(2, 4, 8, 8, 3), text_length=6, text_dim=384):
  kv, kt, kx = jax.random.split(key, 3)
  video = jax.random.normal(kv, shape)
  t = jax.random.uniform(kt, shape[:1])
  text = jax.random.normal(kx, (shape[0], text_length, text_dim))
  mask = jnp.arange(text_length)[None, :] < jnp.array([[text_length - 2], [text_length]])
  return video, t, text, mask[: shape[0]]


@pytest.mark.parametrize("shape", [(2, 4, 8, 8, 3), (2, 1, 16, 8, 3)], ids=["video", "image"])
@pytest.mark.parametrize("conditioning", ["text", "label"])
def test_output_is_float32_velocity_of_the_input_shape(key, randomize, shape, conditioning):
  model = DiT(tiny(conditioning=conditioning), rngs=nnx.Rngs(0))
  randomize(model, key)
  video, t, text, mask = inputs(key, shape)
  cond = (dict(text=text, text_mask=mask) if conditioning == "text"
          else dict(labels=jnp.array([1, 7])))
  out = model(video, t, **cond)
  assert out.shape == shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


def test_parameters_are_float32_and_compute_is_bfloat16(key, monkeypatch):
  monkeypatch.setattr(attention, "_IMPLEMENTATIONS", dict(attention._IMPLEMENTATIONS))
  seen = []

  @attention.register_attention("probe")
  def probe(q, k, v, **kwargs):
    seen.append((q.shape, q.dtype))
    return attention.xla_attention(q, k, v, **kwargs)

  model = DiT(tiny(attention="probe"), rngs=nnx.Rngs(0))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
  video, t, text, _ = inputs(key)
  model(video, t, text=text)
  # joint sequence: 4 * 8 * 8 / (1 * 2 * 2) = 64 video tokens + 6 text tokens, 4 heads of 16
  assert set(seen) == {((2, 70, 4, 16), jnp.dtype(jnp.bfloat16))}


def test_at_init_the_model_outputs_zero(key):
  model = DiT(tiny(), rngs=nnx.Rngs(0))
  video, t, text, mask = inputs(key)
  np.testing.assert_array_equal(model(video, t, text=text, text_mask=mask), 0.0)


def test_a_data_predicting_model_returns_the_velocity_its_prediction_implies(key, randomize):
  """prediction="data": the same network's output read as x0, turned into (x_t - x0) / t, with
  t floored at 0.05 (the last entry) so nearly clean inputs do not divide by ~0."""
  velocity_model = DiT(tiny(), rngs=nnx.Rngs(0))
  randomize(velocity_model, key)
  data_model = DiT(tiny(prediction="data"), rngs=nnx.Rngs(0))
  nnx.update(data_model, nnx.state(velocity_model))
  video, _, text, mask = inputs(key)
  t = jnp.array([0.7, 0.01])
  x0 = velocity_model(video, t, text=text, text_mask=mask)  # the shared network's output
  expected = (video - x0) / jnp.array([0.7, 0.05]).reshape(2, 1, 1, 1, 1)
  np.testing.assert_allclose(data_model(video, t, text=text, text_mask=mask), expected,
                             rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(expected).max()) > 0


def block_inputs(key):
  """Random video tokens [2, 12, 64], text tokens [2, 5, 64] and conditioning c [2, 64]."""
  kv, kt, kc = jax.random.split(key, 3)
  return (jax.random.normal(kv, (2, 12, 64)), jax.random.normal(kt, (2, 5, 64)),
          jax.random.normal(kc, (2, 64)))


def test_at_init_every_block_is_the_identity(key):
  config = tiny(dtype="float32")
  video, text, c = block_inputs(key)
  angles = rope_angles(jax.random.randint(key, (1, 17, 3), 0, 9), (8, 4, 4))
  single = SingleStreamBlock(config, rngs=nnx.Rngs(0))
  joint = jnp.concatenate([video, text], axis=1)
  np.testing.assert_array_equal(single(joint, c, angles), joint)
  dual = DualStreamBlock(config, rngs=nnx.Rngs(0))
  out_video, out_text = dual(video, text, c, angles)
  np.testing.assert_array_equal(out_video, video)
  np.testing.assert_array_equal(out_text, text)


def swap_first_video_and_text_token(video, text):
  return (video.at[:, 0].set(text[:, 0]), text.at[:, 0].set(video[:, 0]))


def test_single_stream_blocks_treat_text_tokens_with_the_shared_weights(key, randomize):
  """Swapping a video and a text token swaps their outputs: one set of weights for both."""
  block = SingleStreamBlock(tiny(dtype="float32"), rngs=nnx.Rngs(0))
  randomize(block, key)
  video, text, c = block_inputs(jax.random.fold_in(key, 1))
  no_rotation = jnp.zeros((1, 17, 8))  # positions out of the way: only weights differ
  out = block(jnp.concatenate([video, text], 1), c, no_rotation)
  swapped = block(jnp.concatenate(swap_first_video_and_text_token(video, text), 1), c,
                  no_rotation)
  # Swapping changes the float32 summation order, so the tolerance scales with the outputs.
  atol = 1e-5 * float(jnp.abs(out).max())
  np.testing.assert_allclose(swapped[:, 0], out[:, 12], rtol=1e-5, atol=atol)
  np.testing.assert_allclose(swapped[:, 12], out[:, 0], rtol=1e-5, atol=atol)
  assert not any("text" in str(path) for path, _ in nnx.to_flat_state(nnx.state(block)))


def test_dual_stream_blocks_have_separate_text_weights(key, randomize):
  block = DualStreamBlock(tiny(dtype="float32"), rngs=nnx.Rngs(0))
  randomize(block, key)
  video, text, c = block_inputs(jax.random.fold_in(key, 1))
  no_rotation = jnp.zeros((1, 17, 8))
  out_video, _ = block(video, text, c, no_rotation)
  _, swapped_text = block(*swap_first_video_and_text_token(video, text), c, no_rotation)
  assert not np.allclose(swapped_text[:, 0], out_video[:, 0], atol=1e-3)


def test_blocks_are_dual_stream_first_then_single_stream():
  model = DiT(tiny(depth=5, dual_stream_depth=2), rngs=nnx.Rngs(0))
  dual_kernel = model.dual_blocks.video.qkv.kernel
  assert dual_kernel.shape[0] == 2 and model.single_blocks.stream.qkv.kernel.shape[0] == 3
  label_model = DiT(tiny(depth=5, dual_stream_depth=2, conditioning="label"),
                    rngs=nnx.Rngs(0))
  assert label_model.dual_blocks is None
  assert label_model.single_blocks.stream.qkv.kernel.shape[0] == 5


def test_padded_text_tokens_do_not_change_the_video(key, randomize):
  model = DiT(tiny(), rngs=nnx.Rngs(0))
  randomize(model, key)
  video, t, text, mask = inputs(key)
  expected = model(video, t, text=text, text_mask=mask)
  for padding in (100.0 * jax.random.normal(key, text.shape), jnp.nan):
    garbage = jnp.where(mask[..., None], text, padding)
    np.testing.assert_allclose(model(video, t, text=garbage, text_mask=mask), expected,
                               atol=1e-5)


def test_dropped_condition_ignores_the_text(key, randomize):
  model = DiT(tiny(), rngs=nnx.Rngs(0))
  randomize(model, key)
  video, t, text, _ = inputs(key)
  drop = jnp.array([True, False])
  a = model(video, t, text=text, drop_cond=drop)
  b = model(video, t, text=-text, drop_cond=drop)
  np.testing.assert_allclose(a[0], b[0], atol=1e-5)
  assert not np.allclose(a[1], b[1], atol=1e-3)


def test_class_labels_condition_the_output(key, randomize):
  model = DiT(tiny(conditioning="label"), rngs=nnx.Rngs(0))
  randomize(model, key)
  video, t, _, _ = inputs(key)
  a = model(video, t, labels=jnp.array([1, 2]))
  null = model(video, t, labels=jnp.array([1, 2]), drop_cond=jnp.array([True, True]))
  assert not np.allclose(a, null, atol=1e-3)
  np.testing.assert_allclose(null, model(video, t, labels=jnp.array([5, 9]),
                                         drop_cond=jnp.array([True, True])), atol=1e-6)


@pytest.mark.parametrize("remat", ["full", "dots_saveable", "offload_block_inputs"])
def test_remat_and_unrolled_layers_compute_the_same_function(key, randomize, remat):
  """Same parameters, same loss and gradients, whatever the remat policy or layer loop."""
  model = DiT(tiny(dtype="float32"), rngs=nnx.Rngs(0))
  randomize(model, key)
  params = nnx.state(model)
  video, t, text, mask = inputs(key)

  def loss_with(overrides):
    graphdef = nnx.graphdef(DiT(tiny(dtype="float32", **overrides), rngs=nnx.Rngs(0)))
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(video, t, text=text, text_mask=mask) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  base_loss, base_grads = loss_with({})
  for overrides in ({"remat": remat}, {"remat": remat, "scan_layers": False}):
    value, grads = loss_with(overrides)
    np.testing.assert_allclose(value, base_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max())), grads, base_grads)


@pytest.mark.parametrize("overrides,message", [
    (dict(hidden_size=66), "hidden_size=66 is not divisible by model.num_heads=4"),
    (dict(attention="flash"), "model.attention='flash' is not an attention implementation"),
    (dict(remat="everything"), "model.remat='everything' is not a remat policy"),
    (dict(dual_stream_depth=9), "dual_stream_depth=9 must be between 0 and model.depth=4"),
    (dict(conditioning="audio"), "model.conditioning='audio'"),
    (dict(num_heads=0), "model.num_heads=0 must be positive"),
    (dict(mlp_ratio=-1.0), "model.mlp_ratio=-1.0 must be positive"),
    (dict(prediction="noise"), "model.prediction='noise'; choose one of"),
])
def test_invalid_model_config_is_a_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    DiT(tiny(**overrides), rngs=nnx.Rngs(0))


def test_misspelt_model_config_field_is_an_error():
  with pytest.raises(AttributeError, match="hidden_size"):
    tiny(hiden_size=32)


def test_missing_text_is_a_clear_error(key):
  model = DiT(tiny(), rngs=nnx.Rngs(0))
  video, t, _, _ = inputs(key)
  with pytest.raises(ValueError, match="needs text"):
    model(video, t)
  with pytest.raises(ValueError, match=r"in_channels"):
    model(video[..., :2], t, text=jnp.zeros((2, 3, 384)))


def saved_activation_sizes(capsys, remat):
  """Elements of the activations the backward pass keeps on the device, and on the host."""
  model = DiT(tiny(dtype="float32", remat=remat), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  video, t, text = jnp.ones((2, 2, 8, 8, 3)), jnp.full((2,), 0.5), jnp.ones((2, 4, 384))
  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(
      lambda p: nnx.merge(graphdef, p)(video, t, text=text).sum(), params)
  lines = [line for line in capsys.readouterr().out.splitlines()
           if line and "from the argument" not in line]
  def elements(line):
    dims = re.search(r"\[([\d,]*)\]", line).group(1)
    return int(np.prod([int(d) for d in dims.split(",") if d]))

  on_host = [line for line in lines if "<host>" in line]
  return (sum(elements(line) for line in lines if line not in on_host),
          sum(elements(line) for line in on_host))


def test_remat_policies_trade_saved_activations_for_recomputation(capsys):
  none, _ = saved_activation_sizes(capsys, "none")
  dots, _ = saved_activation_sizes(capsys, "dots_saveable")
  full, _ = saved_activation_sizes(capsys, "full")
  offloaded, on_host = saved_activation_sizes(capsys, "offload_block_inputs")
  assert full < dots < none
  assert offloaded < full and on_host > 0


def test_a_model_with_a_text_vocabulary_takes_token_ids_and_rejects_states():
  config = DiTConfig.from_dict(model_config("tiny", in_channels=1, text_vocab_size=50,
                                            text_dim=16))
  model = DiT(config, rngs=nnx.Rngs(0))
  video, t = jnp.zeros((2, 2, 8, 8, 1)), jnp.full((2,), 0.5)
  ids = jnp.array([[3, 7, 0], [5, 0, 0]], jnp.int32)
  out = model(video, t, text=ids, text_mask=ids > 0)
  assert out.shape == video.shape
  with pytest.raises(ValueError, match="needs text as token ids"):
    model(video, t, text=jnp.zeros((2, 3, 16)))
