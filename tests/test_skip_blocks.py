"""DiT(skip_blocks=...): a skipped block is the identity, and its compute is not spent."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.common import model_config
from dit.config import DiTConfig
from dit.model import DiT


def random_model(key, randomize, scan: bool):
  config = DiTConfig.from_dict(model_config("tiny", in_channels=1, dtype="float32",
                                            scan_layers=scan))
  model = DiT(config, rngs=nnx.Rngs(0))
  randomize(model, key)
  return model


def inputs(key):
  kv, kt, kx = jax.random.split(key, 3)
  return (jax.random.normal(kv, (2, 2, 8, 8, 1)), jax.random.uniform(kt, (2,)),
          dict(text=jax.random.normal(kx, (2, 5, 384))))


def silence(model: DiT, index: int) -> None:
  """adaLN-Zero: a block whose modulation (gates included) is zero adds nothing to its input."""
  num_dual = model.config.num_dual
  kind, i = ("dual", index) if index < num_dual else ("single", index - num_dual)
  blocks = model.dual_blocks if kind == "dual" else model.single_blocks
  for path, variable in nnx.to_flat_state(nnx.state(blocks, nnx.Param)):
    if "modulation" in path:
      variable.set_value(variable.get_value().at[i].set(0.0))


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_a_skipped_block_is_the_identity(key, randomize, scan):
  model = random_model(key, randomize, scan)
  video, t, cond = inputs(jax.random.fold_in(key, 1))
  depth = model.config.depth
  full = model(video, t, **cond)
  tol = dict(rtol=1e-5, atol=1e-5 * float(jnp.abs(full).max()))  # float32 reordering only
  np.testing.assert_allclose(model(video, t, skip_blocks=jnp.zeros(depth, bool), **cond),
                             full, **tol)
  for index in (0, depth - 1):  # a dual block and a single one
    skip = jnp.zeros(depth, bool).at[index].set(True)
    skipped = jax.jit(lambda v, t, s: model(v, t, skip_blocks=s, **cond))(video, t, skip)
    assert float(jnp.abs(skipped - full).max()) > 100 * tol["atol"]
    silenced = nnx.clone(model)
    silence(silenced, index)
    np.testing.assert_allclose(skipped, silenced(video, t, **cond), **tol)


def test_skipping_is_a_branch_not_a_mask(key, randomize):
  """A skipped block's compute is not spent: each block runs under a conditional."""
  model = random_model(key, randomize, True)
  video, t, cond = inputs(key)
  jaxpr = jax.make_jaxpr(lambda s: model(video, t, skip_blocks=s, **cond))(
      jnp.zeros(model.config.depth, bool))
  assert "cond[" in str(jaxpr)
  assert "cond[" not in str(jax.make_jaxpr(lambda v: model(v, t, **cond))(video))


def test_skip_blocks_must_name_every_block(key, randomize):
  model = random_model(key, randomize, True)
  video, t, cond = inputs(key)
  with pytest.raises(ValueError, match="skip_blocks must be bool"):
    model(video, t, skip_blocks=jnp.zeros(model.config.depth + 1, bool), **cond)
