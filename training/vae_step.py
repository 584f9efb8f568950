"""The VAE's training objective and pure step: (state, batch, key) -> (state, metrics).

    loss = l1 * mean |x - decode(z)|  +  l2 * mean (x - decode(z))^2
           + kl * KL(q(z|x) || N(0, 1)) / values of x
           + perceptual * distance(x, decode(z))          z ~ q(z|x), reparameterised
           + adversarial * -D(decode(z))   and the discriminator D's hinge loss, once
                                           step >= adversarial_start

The KL is summed over each example's latent and divided by its video's values, LDM's weighting
(Rombach et al. 2022; their KL weight 1e-6 means the same here). `perceptual` is a function
(reconstruction, video) -> [B] given by the caller (train.py builds eval/i3d.py's feature
distance), so this module needs no feature network. Logged: loss, l1, kl (nats per latent
value), psnr and ssim of the clipped reconstruction, the perceptual distance and the two
players' adversarial losses when used. L1 seeks the median: on sparse videos (a digit on
black) it can sit at an empty frame for hundreds of steps, where the squared error moves at
once. The discriminator (dit/vae/discriminator.py) is part of the VAE's parameters, so one
train state and checkpoint carry both players; it has its own optimizer within it
(training/optimizer.py). Before the warm-up ends neither is trained by the adversarial loss:
its gradients are zero. With loss.image_steps the first steps train on each video's first
frame alone, an image the causal VAE codes on its own: about T times cheaper a step, they
teach the spatial layers shapes before motion is asked of them (the VAE starts as an image VAE
inflated to video, dit/vae/layers.py).
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from dit.vae.discriminator import discriminator_loss, generator_loss
from dit.vae.model import kl_divergence, sample_posterior
from training.reconstruction_metrics import psnr, ssim
from training.train_step import step_from_grads

ADVERSARIAL_ON = "adversarial_on"  # the batch's flag: 1.0 once the adversarial loss has started


def make_vae_grad_fn(graphdef: nnx.GraphDef, loss: ml_collections.ConfigDict, perceptual=None):
  """(params, model_state, batch, key) -> (gradients of the VAE loss, metrics)."""

  def loss_fn(params, model_state, batch, key):
    vae = nnx.merge(graphdef, params, model_state)
    video = batch["video"].astype(jnp.float32)  # [B, T, H, W, C] in [-1, 1]
    (mean, logvar), _ = vae.encode(video)
    recon, _ = vae.decode(sample_posterior(mean, logvar, key), clip=False)
    values = video[0].size
    l1 = jnp.mean(jnp.abs(recon - video))
    l2 = jnp.mean(jnp.square(recon - video))
    kl = jnp.mean(kl_divergence(mean, logvar))  # per example
    total = loss.l1 * l1 + loss.l2 * l2 + loss.kl * kl / values
    clipped = jnp.clip(recon, -1.0, 1.0)
    metrics = dict(l1=l1, l2=l2, kl=kl / mean[0].size,
                   psnr=jnp.mean(psnr(clipped, video)), ssim=jnp.mean(ssim(clipped, video)))
    if perceptual is not None and loss.perceptual:
      distance = jnp.mean(perceptual(recon, video))
      total = total + loss.perceptual * distance
      metrics["perceptual"] = distance
    if loss.adversarial:
      generator, critic = adversarial_losses(vae.discriminator, video, recon)
      on = batch[ADVERSARIAL_ON][0]  # 0 during the warm-up: neither player trains
      total = total + on * (loss.adversarial * generator + critic)
      metrics.update(adversarial=generator, discriminator=critic)
    return total, dict(metrics, loss=total)

  return jax.grad(loss_fn, has_aux=True)


def adversarial_losses(discriminator: nnx.Module, video: jax.Array, recon: jax.Array):
  """(the decoder's hinge loss, the discriminator's). Each reaches only its own player's
  parameters: the decoder's sees a frozen discriminator, the discriminator's a fixed
  reconstruction, so one gradient of their sum trains both."""
  graphdef, state = nnx.split(discriminator)
  frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
  generator = generator_loss(frozen(recon))
  critic = discriminator_loss(discriminator(video), discriminator(jax.lax.stop_gradient(recon)))
  return generator, critic


def make_vae_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                        loss: ml_collections.ConfigDict, *, perceptual=None, images: bool = False,
                        **kwargs):
  """The VAE's pure step; keywords as training.train_step.step_from_grads'. With
  loss.adversarial the discriminator and its loss join at step loss.adversarial_start. With
  `images` it trains on each video's first frame alone (the steps before loss.image_steps: the
  caller compiles both and picks one per step; a lax.cond of the two ran an image step as slowly
  as a video step on XLA's CPU backend)."""
  grad_fn = make_vae_grad_fn(graphdef, loss, perceptual)
  if images:
    video_grad_fn = grad_fn
    grad_fn = lambda params, model_state, batch, key: video_grad_fn(
        params, model_state, dict(batch, video=batch["video"][:, :1]), key)
  step = step_from_grads(grad_fn, optimizer, **kwargs)
  if not loss.adversarial:
    return step

  def train_step(state, batch, key):
    on = (state.step >= loss.adversarial_start).astype(jnp.float32)
    # One flag per example, so that microbatches (train.grad_accum) split it as the videos.
    flags = jnp.broadcast_to(on, batch["video"].shape[:1])
    return step(state, dict(batch, **{ADVERSARIAL_ON: flags}), key)

  return train_step


def reconstruct(graphdef: nnx.GraphDef, params: nnx.State, model_state: nnx.State,
                video: jax.Array) -> jax.Array:
  """The posterior mean's decoding, clipped: [B, T, H, W, C] -> the same shape."""
  vae = nnx.merge(graphdef, params, model_state)
  (mean, _), _ = vae.encode(video)
  return vae.decode(mean)[0]
