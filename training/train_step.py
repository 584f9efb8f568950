"""The pure training step: (state, batch, key) -> (state, metrics), jit-able, no hidden state:
the gradients of a loss (flow matching for the DiT here; the VAE's in training/vae_step.py),
averaged over microbatches, one optimizer update, the EMA.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from diffusion.flow_matching import flow_matching_loss, packed_flow_matching_loss
from dit.patchify import num_video_tokens
from training.train_state import TrainState


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """The EMA decay at `step`, warmed up as min(decay, (1 + step) / (10 + step)), so the average
  is not dominated by the random initialisation early in a short run."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def split_microbatches(batch: dict, num_microbatches: int) -> dict:
  """[B, ...] -> [num_microbatches, B / num_microbatches, ...] for every array in the batch; a
  batch of another size than the config's (checked there) is an error when the step is traced."""
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch of {x.shape[0]} does not split into train.grad_accum="
                       f"{num_microbatches} equal microbatches")
    return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])
  return jax.tree.map(split, batch)


def make_grad_fn(graphdef: nnx.GraphDef, flow: ml_collections.ConfigDict, patch_size,
                 encode=None):
  """(params, model_state, batch, key) -> (gradients of the flow-matching loss, metrics).
  encode: videos -> latents (rundir.open_vae.latent_encoder), applied to batch["video"] first
  when the DiT trains in a VAE's latent space. A packed batch (data/packing.py: "patches",
  "segment_ids", "positions") trains through the packed loss, averaged per example."""

  def loss_fn(params, model_state, batch, key):
    if "segment_ids" in batch:
      return packed_flow_matching_loss(nnx.merge(graphdef, params, model_state), batch, key,
                                       flow)
    if encode is not None:
      batch = dict(batch, video=jax.lax.stop_gradient(encode(batch["video"])))
    model = nnx.merge(graphdef, params, model_state)
    num_tokens = num_video_tokens(batch["video"].shape[1:4], patch_size)
    return flow_matching_loss(model, batch, key, num_tokens, flow)

  return jax.grad(loss_fn, has_aux=True)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    flow: ml_collections.ConfigDict, patch_size, encode=None, **kwargs):
  """The DiT's pure step function: (TrainState, batch, key) -> (TrainState, metrics dict), on
  the flow-matching loss (of latents, given `encode`); keywords as step_from_grads'."""
  return step_from_grads(make_grad_fn(graphdef, flow, patch_size, encode), optimizer, **kwargs)


def step_from_grads(grad_fn, optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.999, grad_accum: int = 1,
                    learning_rate: optax.Schedule | None = None):
  """A pure step function from a (params, model_state, batch, key) -> (grads, metrics) function:
  one optimizer update and the EMA.

  With grad_accum = k the batch is cut into k microbatches whose gradients are averaged (a
  lax.scan, so activation memory is that of one microbatch) before one optimizer update.
  """

  def accumulated_grads(state: TrainState, batch: dict, key: jax.Array):
    if grad_accum == 1:
      return grad_fn(state.params, state.model_state, batch, key)

    def add_microbatch(total, inputs):
      index, microbatch = inputs
      grads, metrics = grad_fn(state.params, state.model_state, microbatch,
                               jax.random.fold_in(key, index))
      return jax.tree.map(jnp.add, total, (grads, metrics)), None

    microbatches = split_microbatches(batch, grad_accum)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        grad_fn, state.params, state.model_state,
        jax.tree.map(lambda x: x[0], microbatches), key))
    total, _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(grad_accum), microbatches))
    return jax.tree.map(lambda x: x / grad_accum, total)

  apply = apply_gradients(optimizer, ema_decay=ema_decay, learning_rate=learning_rate)

  def train_step(state: TrainState, batch: dict, key: jax.Array):
    grads, metrics = accumulated_grads(state, batch, key)
    return apply(state, grads, metrics)

  return train_step


def apply_gradients(optimizer: optax.GradientTransformation, *, ema_decay: float = 0.999,
                    learning_rate: optax.Schedule | None = None):
  """(state, grads, metrics) -> (state after one optimizer update and the EMA, metrics with
  grad_norm and lr): the second half of every step, and all of the adaptive sequence-parallel
  step's jitted update (training/adaptive_step.py)."""

  def apply(state: TrainState, grads, metrics: dict):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - decay)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    if learning_rate is not None:
      metrics["lr"] = learning_rate(state.step)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                         opt_state=opt_state), metrics

  return apply
