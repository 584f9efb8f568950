"""The VAE's optional 3D patch discriminator: its shapes, the hinge losses, each player's loss
reaching only its own parameters, and the warm-up before either trains."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.vae_quickstart import get_config
from configs.checks import validate_config
from dit.vae.config import VAEConfig
from dit.vae.layers import conv3d_as_2d
from dit.vae.discriminator import PatchDiscriminator3D, discriminator_loss, generator_loss
from dit.vae.model import CausalVAE
from training.optimizer import make_optimizer
from training.train_state import init_train_state
from training.vae_step import adversarial_losses, make_vae_train_step

# One level (no resampling: the smallest VAE there is), with a two-layer discriminator.
TINY = VAEConfig(in_channels=1, base_channels=4, channel_multipliers=(1,), num_res_blocks=1,
                 temporal_downsample=(), latent_channels=2, discriminator_channels=4,
                 discriminator_layers=2)
SHAPE = (3, 8, 8)


def test_the_discriminator_scores_patches(key):
  discriminator = PatchDiscriminator3D(1, 4, 3, rngs=nnx.Rngs(0))
  logits = jax.jit(lambda v: discriminator(v))(jax.random.normal(key, (1, 3, 16, 8, 1)))
  assert logits.shape == (1, 3, 2, 1, 1) and logits.dtype == jnp.float32
  assert float(jnp.std(logits)) > 0


def test_a_strided_3d_convolution_computed_as_2d_is_the_same(key):
  conv = nnx.Conv(3, 5, (3, 4, 4), strides=(2, 2, 2), padding=((0, 0), (1, 1), (1, 1)),
                  rngs=nnx.Rngs(3))
  x = jax.random.normal(key, (2, 7, 8, 6, 3))
  np.testing.assert_allclose(conv3d_as_2d(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_the_hinge_losses():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0])
  # 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * (0.25 + 0.5)
  assert float(discriminator_loss(real, fake)) == pytest.approx(0.375)
  assert float(generator_loss(fake)) == pytest.approx(1.5)


def test_each_player_trains_only_its_own_parameters(key):
  graphdef, state = nnx.split(PatchDiscriminator3D(1, 4, 2, rngs=nnx.Rngs(1)))
  video, recon = jax.random.uniform(key, (2, 1, *SHAPE, 1), minval=-1, maxval=1)

  @jax.jit
  def gradients(state, recon):
    losses = lambda s, r: adversarial_losses(nnx.merge(graphdef, s), video, r)
    return (jax.grad(lambda s, r: losses(s, r)[0], argnums=(0, 1))(state, recon),
            jax.grad(lambda s, r: losses(s, r)[1], argnums=(0, 1))(state, recon))

  (generator_by_state, generator_by_recon), (critic_by_state, critic_by_recon) = gradients(
      state, recon)
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
  assert norm(generator_by_state) == 0 and norm(generator_by_recon) > 0  # the decoder's
  assert norm(critic_by_recon) == 0 and norm(critic_by_state) > 0        # the critic's


def test_neither_player_trains_before_the_warm_up_ends(key):
  config = get_config("tiny")
  config.unlock()
  config.vae_loss.update(adversarial=0.5, adversarial_start=1)
  config.optim.update(warmup_steps=0, weight_decay=0.1)  # decay, yet not on the waiting critic
  optimizer = make_optimizer(config.optim, discriminator=True)
  graphdef, state = init_train_state(CausalVAE(TINY, rngs=nnx.Rngs(2)), optimizer)
  step = jax.jit(make_vae_train_step(graphdef, optimizer, config.vae_loss))
  batch = {"video": jax.random.uniform(key, (2, *SHAPE, 1), minval=-1, maxval=1)}
  critic = lambda s: s.params["discriminator"]
  before = critic(state)
  state, warm_up = step(state, batch, key)
  jax.tree.map(np.testing.assert_array_equal, critic(state), before)  # step 0: untouched
  state, adversarial = step(state, batch, key)
  changed = nnx.to_flat_state(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), critic(state),
                                            before))
  # Step 1: every kernel of the discriminator moved (the output bias may not: while both
  # players' logits are inside the hinge's margin, its gradients cancel).
  assert all(moved.get_value() for path, moved in changed if path[-1] == "kernel")
  for metrics in (warm_up, adversarial):
    assert {"adversarial", "discriminator"} <= set(metrics)
    assert np.isfinite(float(metrics["loss"]))
  # The warm-up's loss leaves the adversarial terms out.
  weights = config.vae_loss
  kl_per_video = float(warm_up["kl"]) * np.prod(TINY.latent_shape(SHAPE))
  assert float(warm_up["loss"]) == pytest.approx(
      weights.l1 * float(warm_up["l1"]) + weights.l2 * float(warm_up["l2"])
      + weights.kl * kl_per_video / np.prod(SHAPE), rel=1e-4)
  assert float(adversarial["loss"]) != pytest.approx(
      weights.l1 * float(adversarial["l1"]) + weights.l2 * float(adversarial["l2"])
      + weights.kl * float(adversarial["kl"]) * np.prod(TINY.latent_shape(SHAPE))
      / np.prod(SHAPE), rel=1e-4)


def test_an_adversarial_weight_needs_a_discriminator():
  config = get_config("tiny")
  config.unlock()
  config.vae_loss.adversarial = 0.1
  with pytest.raises(ValueError, match="vae_loss.adversarial=0.1 needs a discriminator: set "
                                       "vae.discriminator_channels"):
    validate_config(config)
  config.vae.discriminator_channels = 8
  validate_config(config)
