"""sharding/: meshes from config sizes, and Ulysses and ring attention on 8 simulated devices
equal to dense attention, in values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharding.mesh import MESH_AXES, make_mesh, mesh_shape
from sharding.ring import dense_with_lse
from sharding.sequence_parallel import sequence_parallel_attention, usp_ulysses_degree


def test_mesh_sizes_fill_the_rest_and_bad_sizes_say_what_to_change():
  assert mesh_shape({"data": -1, "seq": 2}, 8) == (4, 1, 2, 1)
  assert mesh_shape({"fsdp": 2, "seq": 4}, 8) == (1, 2, 4, 1)
  with pytest.raises(ValueError, match="needs 4 devices but there are 8"):
    mesh_shape({"data": 2, "seq": 2}, 8)
  with pytest.raises(ValueError, match="at most one may be -1"):
    mesh_shape({"data": -1, "seq": -1}, 8)
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    mesh_shape({"data": -1, "seq": 3}, 8)
  with pytest.raises(ValueError, match="unknown mesh axes \\['context'\\]"):
    mesh_shape({"context": 2}, 8)
  mesh = make_mesh({"data": -1, "fsdp": 2, "seq": 2})
  assert mesh.axis_names == MESH_AXES and tuple(mesh.shape.values()) == (2, 2, 2, 1)


def case(key, batch=4, length=64, heads=8, dim=16):
  keys = jax.random.split(key, 4)
  q, k, v = (jax.random.normal(x, (batch, length, heads, dim)) for x in keys[:3])
  cut = int(jax.random.randint(keys[3], (), 1, length - 1))
  # Example 0 packs two sequences (the boundary anywhere, often inside a device's shard).
  segments = jnp.stack([jnp.where(jnp.arange(length) < cut, 1, 2)]
                       + [jnp.ones(length, jnp.int32)] * (batch - 1))
  return q, k, v, segments


def dense(q, k, v, segments):
  return dense_with_lse(q, k, v, segment_ids=segments)[0]


MESHES = {"seq8": {"seq": 8}, "data2_seq4": {"data": 2, "seq": 4},
          "fsdp2_seq2_data2": {"data": 2, "fsdp": 2, "seq": 2}}


@pytest.mark.parametrize("kind,ulysses_degree", [("ulysses", 0), ("ring", 0), ("usp", 2)])
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_sequence_parallel_attention_equals_dense_in_values_and_gradients(key, kind,
                                                                          ulysses_degree,
                                                                          mesh_name):
  """USP with Ulysses groups of 2: rings of 4, 2 and 1 devices on the three meshes."""
  mesh = make_mesh(MESHES[mesh_name])
  q, k, v, segments = case(key)
  weights = jax.random.normal(jax.random.fold_in(key, 1), q.shape)

  def loss(attention):
    return lambda q, k, v: (attention(q, k, v, segments) * weights).sum()

  def parallel(q, k, v, segments):
    return sequence_parallel_attention(q, k, v, mesh=mesh, kind=kind, segment_ids=segments,
                                       ulysses_degree=ulysses_degree)

  out = jax.jit(parallel)(q, k, v, segments)
  np.testing.assert_allclose(out, dense(q, k, v, segments), atol=1e-5, rtol=1e-5)
  grads = jax.jit(jax.grad(loss(parallel), argnums=(0, 1, 2)))(q, k, v)
  expected = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["ulysses", "ring", "usp"])
def test_our_kernel_runs_inside_sequence_parallelism(key, kind):
  mesh = make_mesh({"seq": 4, "data": 2})
  q, k, v, segments = case(key, length=128, heads=4)
  out = sequence_parallel_attention(q, k, v, mesh=mesh, kind=kind, inner="block_sparse",
                                    segment_ids=segments)
  np.testing.assert_allclose(out, dense(q, k, v, segments), atol=1e-5, rtol=1e-5)


def test_ring_works_past_the_head_count_and_ulysses_says_why_it_cannot(key):
  mesh = make_mesh({"seq": 8})
  q, k, v, segments = case(key, heads=4)
  out = sequence_parallel_attention(q, k, v, mesh=mesh, kind="ring", segment_ids=segments)
  np.testing.assert_allclose(out, dense(q, k, v, segments), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="4 attention heads over the seq axis of size 8"):
    sequence_parallel_attention(q, k, v, mesh=mesh, kind="ulysses")
  # USP goes past it too: Ulysses over groups of gcd(4, 8) = 4 devices, rings of 2 across them.
  assert usp_ulysses_degree(4, 8) == 4
  out = sequence_parallel_attention(q, k, v, mesh=mesh, kind="usp", segment_ids=segments)
  np.testing.assert_allclose(out, dense(q, k, v, segments), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="must divide the seq axis of size 8"):
    usp_ulysses_degree(4, 8, ulysses_degree=3)
  with pytest.raises(ValueError, match="pad the sequence to a multiple"):
    sequence_parallel_attention(q[:, :60], k, v, mesh=mesh, kind="ring")
  # A batch the data axes do not divide (3 prompts to sample) runs whole on each data replica.
  out = sequence_parallel_attention(q[:3], k[:3], v[:3], mesh=make_mesh({"data": 2, "seq": 4}),
                                    kind="ring", segment_ids=segments[:3])
  np.testing.assert_allclose(out, dense(q[:3], k[:3], v[:3], segments[:3]), atol=1e-5,
                             rtol=1e-5)


@pytest.mark.parametrize("kind,attention_name,pattern", [("ulysses", "xla", "full"),
                                                         ("ring", "xla", "full"),
                                                         ("usp", "xla", "full"),
                                                         ("ulysses", "xla", "spatial_temporal")])
def test_the_dit_with_sequence_parallel_attention_equals_the_dit_without(key, randomize, kind,
                                                                         attention_name, pattern):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from configs.common import model_config
  from dit.config import DiTConfig
  from dit.model import DiT

  def velocity(sequence_parallel):
    config = model_config("tiny", in_channels=3, dtype="float32", attention=attention_name,
                          sparse_pattern=pattern, sparse_block=32,
                          sequence_parallel=sequence_parallel)
    model = DiT(DiTConfig.from_dict(config), rngs=nnx.Rngs(0))
    randomize(model, jax.random.fold_in(key, 1))
    kv, kt, kx = jax.random.split(key, 3)
    video = jax.random.normal(kv, (2, 4, 16, 16, 3))  # 256 video tokens + 8 text: 264 = 4 x 66
    text = jax.random.normal(kx, (2, 8, 384))
    mask = jnp.arange(8)[None] < jnp.array([[6], [8]])
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, video, t: nnx.merge(graphdef, state)(video, t, text=text,
                                                                      text_mask=mask))
    return run(state, video, jax.random.uniform(kt, (2,)))

  expected = velocity("none")
  with pytest.raises(ValueError, match="needs a mesh"):  # the model does take the parallel path
    velocity(kind)
  with jax.set_mesh(make_mesh({"data": 2, "seq": 4})):
    got = velocity(kind)
  np.testing.assert_allclose(got, expected, atol=1e-5 * float(jnp.abs(expected).max()), rtol=1e-5)


def test_sequence_parallel_needs_a_mesh_with_a_seq_axis(key):
  from dit import attention  # pylint: disable=g-import-not-at-top
  q, k, v, _ = case(key)
  with pytest.raises(ValueError, match="needs a mesh with a 'seq' axis in context"):
    attention.dot_product_attention(q, k, v, sequence_parallel="ulysses")


def test_bad_sequence_parallel_settings_are_config_errors():
  from configs.checks import validate_model_config  # pylint: disable=g-import-not-at-top
  from configs.common import model_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="sequence_parallel='context'"):
    validate_model_config(model_config("tiny", sequence_parallel="context"))
  with pytest.raises(ValueError, match="'ring' runs model.attention"):
    validate_model_config(model_config("tiny", sequence_parallel="ring", sparse_pattern="window"))
