"""The VAE's training objective and pure step: (state, batch, key) -> (state, metrics).

    loss = l1 * mean |x - decode(z)|  +  l2 * mean (x - decode(z))^2
           + kl * KL(q(z|x) || N(0, 1)) / values of x
           + perceptual * distance(x, decode(z))          z ~ q(z|x), reparameterised

The KL is summed over each example's latent and divided by its video's values, LDM's weighting
(Rombach et al. 2022; their KL weight 1e-6 means the same here). `perceptual` is a function
(reconstruction, video) -> [B] given by the caller (train.py builds eval/i3d.py's feature
distance), so this module needs no feature network. Logged: loss, l1, kl (nats per latent
value), psnr and ssim of the clipped reconstruction, and the perceptual distance when used. L1 seeks the median: on sparse videos (a digit on black) it can sit at
an empty frame for hundreds of steps, where the squared error moves at once.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from dit.vae.model import kl_divergence, sample_posterior
from training.reconstruction_metrics import psnr, ssim
from training.train_step import step_from_grads


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
    return total, dict(metrics, loss=total)

  return jax.grad(loss_fn, has_aux=True)


def make_vae_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                        loss: ml_collections.ConfigDict, *, perceptual=None, **kwargs):
  """The VAE's pure step; keywords as training.train_step.step_from_grads'."""
  return step_from_grads(make_vae_grad_fn(graphdef, loss, perceptual), optimizer, **kwargs)


def reconstruct(graphdef: nnx.GraphDef, params: nnx.State, model_state: nnx.State,
                video: jax.Array) -> jax.Array:
  """The posterior mean's decoding, clipped: [B, T, H, W, C] -> the same shape."""
  vae = nnx.merge(graphdef, params, model_state)
  (mean, _), _ = vae.encode(video)
  return vae.decode(mean)[0]
