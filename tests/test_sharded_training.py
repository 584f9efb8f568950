"""Training on a mesh (training/layout.py) computes what one device computes: the same loss and
gradients for one step on data, FSDP and sequence-parallel meshes of 8 simulated devices; the
parameters and optimizer state are really split (bytes per device fall as 1/fsdp); and a
checkpoint saved on one mesh restores onto another."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.quickstart import get_config
from training import checkpoints
from data.random_batch import random_batch as config_batch
from dit.config import DiTConfig
from dit.model import DiT
from training.layout import (batch_sharding, check_fits_mesh, global_batch,
                             init_sharded_train_state, jit_train_step, train_state_layout)
from training.optimizer import make_optimizer
from training.train_state import init_train_state
from training.train_step import make_grad_fn, make_train_step
from sharding.logical import use_mesh
from sharding.mesh import make_mesh

TEXT_LEN = 16


def small_config(sequence_parallel="none", **model):
  """8 heads of 8 (Ulysses up to seq 8), 16 video + 16 text tokens, a batch of 8."""
  config = get_config("tiny")
  with config.unlocked():
    config.model.update(hidden_size=64, num_heads=4, depth=3, dual_stream_depth=1,
                        sequence_parallel=sequence_parallel, **model)
    config.train.batch_size = 8
  return config


def random_batch(key, config):
  """The config's batch (16 text tokens of random lengths), fresh for the key."""
  return config_batch(config, seed=int(jax.random.randint(key, (), 0, 2**31 - 1)))


def layout(config, mesh):
  return train_state_layout(DiTConfig.from_dict(config.model), config.optim, mesh,
                            config.sharding.rules)


def sharded_init(config, shardings):
  return init_sharded_train_state(DiTConfig.from_dict(config.model), config.optim, config.seed,
                                  shardings)


def perturbed_state(config, key):
  """The initial state with every parameter moved off its init (zero gates make a DiT at init
  the identity, whose gradients would test little)."""
  graphdef, state = init_train_state(
      DiT(DiTConfig.from_dict(config.model), rngs=nnx.Rngs(config.seed)),
      make_optimizer(config.optim))
  leaves, treedef = jax.tree.flatten(state.params)
  keys = jax.random.split(key, len(leaves))
  params = jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape)
                                        for k, x in zip(keys, leaves)])
  return graphdef, state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))


MESHES = {  # (data, fsdp, seq) -> the sequence parallelism of the model
    (8, 1, 1): "none",
    (2, 2, 2): "ulysses",
    (1, 1, 8): "usp",     # Ulysses over groups of 4 (the heads), rings of 2
    (1, 2, 4): "ring",
}


@pytest.mark.parametrize("sizes", list(MESHES), ids=lambda s: "x".join(map(str, s)))
def test_one_training_step_on_a_mesh_equals_the_single_device_step(key, sizes):
  config = small_config(MESHES[sizes])
  reference_config = small_config()
  graphdef, state = perturbed_state(reference_config, jax.random.fold_in(key, 1))
  batch = random_batch(jax.random.fold_in(key, 2), config)
  step_key = jax.random.fold_in(key, 3)
  flow, patch = config.flow, config.model.patch_size

  # One device, no mesh.
  grad_fn = jax.jit(make_grad_fn(graphdef, flow, patch))
  want_grads, want_metrics = grad_fn(state.params, state.model_state, batch, step_key)
  step = make_train_step(graphdef, make_optimizer(config.optim), flow, patch)
  want_state, _ = jax.jit(step)(state, batch, step_key)

  mesh = make_mesh(dict(zip(("data", "fsdp", "seq"), sizes)))
  check_fits_mesh(config, mesh)
  with use_mesh(mesh, config.sharding.rules):
    sharded_graphdef, _, shardings = layout(config, mesh)
    sharded = jax.device_put(state, shardings)
    sharded_batch = global_batch(batch, mesh)
    params_sharding = shardings.params
    grads, metrics = jax.jit(
        make_grad_fn(sharded_graphdef, flow, patch),
        in_shardings=(params_sharding, shardings.model_state, batch_sharding(mesh), None),
        out_shardings=(params_sharding, None))(sharded.params, sharded.model_state,
                                                sharded_batch, step_key)
    sharded_step = jit_train_step(
        make_train_step(sharded_graphdef, make_optimizer(config.optim), flow, patch), shardings,
        mesh)
    new_state, _ = sharded_step(sharded, sharded_batch, step_key)

  np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.abs(want).max()) + 1e-7,
                               rtol=1e-4)
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(got, want, atol=1e-5)
  # The parameters kept their layout through the step: the big kernels are split over fsdp.
  kernel = new_state.params["single_blocks"]["stream"]["mlp"]["gate_up"]["kernel"].get_value()
  assert tuple(kernel.sharding.spec)[:2] == (None, "fsdp" if sizes[1] > 1 else None)


def bytes_on_first_device(tree) -> int:
  device = jax.devices()[0]
  return sum(shard.data.nbytes for x in jax.tree.leaves(tree)
             for shard in x.addressable_shards if shard.device == device)


def test_per_device_parameter_and_optimizer_bytes_fall_as_one_over_fsdp():
  """Every matrix is split over fsdp; only vectors (biases, norm scales) stay whole, so the
  bytes a device holds are exactly matrices / fsdp + vectors, for params, EMA and Adam's
  moments alike."""
  config = small_config()
  for fsdp in (2, 4, 8):
    mesh = make_mesh({"data": -1, "fsdp": fsdp})
    with use_mesh(mesh, config.sharding.rules):
      _, _, shardings = layout(config, mesh)
      state = sharded_init(config, shardings)
    for name in ("params", "ema_params", "opt_state"):
      arrays = jax.tree.leaves(getattr(state, name))
      split = [x for x in arrays if "fsdp" in jax.tree.leaves(tuple(x.sharding.spec))]
      whole = [x for x in arrays if x.sharding.is_fully_replicated]
      assert len(split) + len(whole) == len(arrays)
      stacked_vectors = all(x.ndim <= 1 or (x.ndim == 2 and x.shape[0] <= config.model.depth)
                            for x in whole)
      assert stacked_vectors, [x.shape for x in whole]
      matrix_bytes = sum(x.nbytes for x in split)
      vector_bytes = sum(x.nbytes for x in whole)
      assert bytes_on_first_device(arrays) == matrix_bytes // fsdp + vector_bytes, (name, fsdp)
      assert matrix_bytes > 10 * vector_bytes  # the matrices are what FSDP saves


def test_a_checkpoint_saved_on_one_mesh_restores_onto_another(tmp_path, key):
  config = small_config()
  graphdef, state = perturbed_state(config, key)
  fsdp_mesh = make_mesh({"fsdp": 8})
  with use_mesh(fsdp_mesh, config.sharding.rules):
    _, _, shardings = layout(config, fsdp_mesh)
    saved = jax.device_put(state, shardings)
  manager = checkpoints.make_manager(str(tmp_path), async_save=False)
  checkpoints.save(manager, saved, jax.random.key(7), None)
  manager.wait_until_finished()

  other = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with use_mesh(other, config.sharding.rules):
    _, abstract, shardings = layout(config, other)
    restored, rng = checkpoints.restore(manager, abstract)
  one_device = make_mesh({}, devices=jax.devices()[:1])  # e.g. sampling on a laptop
  with use_mesh(one_device, config.sharding.rules):
    _, abstract, _ = layout(config, one_device)
    alone, _ = checkpoints.restore(manager, abstract)
  manager.close()
  for got, want in zip(jax.tree.leaves(alone), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)
    assert got.sharding.device_set == {jax.devices()[0]}
  for got, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                                 jax.tree.leaves(shardings)):
    np.testing.assert_array_equal(got, want)
    assert got.sharding == sharding  # laid out for the new mesh, not the one it was saved from
  kernel = restored.params["single_blocks"]["stream"]["mlp"]["down"]["kernel"].get_value()
  assert kernel.sharding.spec == P(None, "tensor", "fsdp")
  np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(7)))


def test_a_config_that_does_not_fit_the_mesh_says_what_to_change():
  with pytest.raises(ValueError, match="batch_size=8 .* multiple of the mesh's data x fsdp = "
                                       "16"):
    check_fits_mesh(small_config(), _abstract_mesh(data=16))
  with pytest.raises(ValueError, match="4 attention heads over the seq axis of size 8"):
    check_fits_mesh(small_config("ulysses"), make_mesh({"seq": 8}))
  with pytest.raises(ValueError, match="choose ulysses, ring or usp"):
    check_fits_mesh(small_config(), make_mesh({"seq": 2, "data": -1}))
  config = small_config("ring")
  with config.unlocked():
    config.text.max_length = 13
  with pytest.raises(ValueError, match="29 tokens per video .* do not split over mesh.seq=2"):
    check_fits_mesh(config, make_mesh({"seq": 2, "data": -1}))
  with config.unlocked():  # 12 video + 12 text tokens: together 3 per device of 8, apart not
    config.train.video_shape = (2, 12, 16)
    config.text.max_length = 12
  check_fits_mesh(config, make_mesh({"seq": 4, "data": -1}))
  with pytest.raises(ValueError, match="12 video and 12 text tokens over mesh.seq=8 apart"):
    check_fits_mesh(config, make_mesh({"seq": 8}))


def _abstract_mesh(**sizes):
  axes = ("data", "fsdp", "seq", "tensor")
  return jax.sharding.AbstractMesh(tuple(sizes.get(a, 1) for a in axes), axes)


def test_sharded_init_equals_the_unsharded_init():
  config = small_config()
  graphdef, state = init_train_state(
      DiT(DiTConfig.from_dict(config.model), rngs=nnx.Rngs(config.seed)),
      make_optimizer(config.optim))
  mesh = make_mesh({"fsdp": 4, "tensor": 2})
  with use_mesh(mesh, config.sharding.rules):
    _, _, shardings = layout(config, mesh)
    sharded = sharded_init(config, shardings)
  for got, expected in zip(jax.tree.leaves(sharded), jax.tree.leaves(state)):
    # The same draws; jit may round the initialisers' arithmetic differently from eager ops.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert jax.tree.structure(sharded) == jax.tree.structure(state)
  assert isinstance(jax.tree.leaves(shardings)[0], NamedSharding)
