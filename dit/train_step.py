"""The pure training step: (state, batch, key) -> (state, metrics), jit-able, no hidden state.

The model lives as (graphdef, params) outside jit and is rebuilt with nnx.merge inside, so the
step is an ordinary function of arrays that any jit, sharding or checkpointing can wrap.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

from dit.config_checks import validate_flow_config, validate_optim_config
from dit.flow_matching import flow_matching_loss
from dit.model import DiT
from dit.patchify import patch_grid


def optim_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=1000, decay_steps=100_000, final_lr_ratio=0.1,
      b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0,
  ))
  config.lock()
  config.update(overrides)
  return config


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to config.lr, then cosine decay to lr * final_lr_ratio at decay_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=config.warmup_steps,
      decay_steps=config.decay_steps,
      end_value=config.lr * config.final_lr_ratio)


def decay_mask(params):
  """Weight decay on matrices (Linear kernels, embedding tables) only, not biases or norms."""

  def is_matrix(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] in ("kernel", "embedding")

  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay and global-norm gradient clipping."""
  validate_optim_config(config)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay, mask=decay_mask))


@struct.dataclass
class TrainState:
  step: jax.Array         # int32 scalar
  params: nnx.State       # the model's nnx.Param variables (float32): what is trained
  ema_params: nnx.State   # exponential moving average of params: what is sampled from
  model_state: nnx.State  # any other model variables, carried along untouched
  opt_state: optax.OptState


def init_train_state(model: nnx.Module,
                     optimizer: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              ema_params=jax.tree.map(jnp.copy, params),
                              model_state=model_state, opt_state=optimizer.init(params))


def initial_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """An experiment's TrainState at step 0 (the model initialised from config.seed)."""
  model = DiT(config.model, rngs=nnx.Rngs(config.seed))
  return init_train_state(model, make_optimizer(config.optim))[1]


def abstract_train_state(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, TrainState]:
  """The graphdef and the shapes and dtypes of an experiment's TrainState, allocating nothing:
  the target a checkpoint restores into."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: DiT(config.model, rngs=nnx.Rngs(0))))
  return graphdef, jax.eval_shape(lambda: initial_train_state(config))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """The EMA decay at `step`, warmed up as min(decay, (1 + step) / (10 + step)), so the average
  is not dominated by the random initialisation early in a short run."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def split_microbatches(batch: dict, num_microbatches: int) -> dict:
  """[B, ...] -> [num_microbatches, B / num_microbatches, ...] for every array in the batch."""
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch of {x.shape[0]} does not split into train.grad_accum="
                       f"{num_microbatches} equal microbatches")
    return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])
  return jax.tree.map(split, batch)


def make_grad_fn(graphdef: nnx.GraphDef, flow: ml_collections.ConfigDict, patch_size):
  """(params, model_state, batch, key) -> (gradients of the flow-matching loss, metrics)."""
  validate_flow_config(flow)

  def loss_fn(params, model_state, batch, key):
    model = nnx.merge(graphdef, params, model_state)
    num_tokens = int(np.prod(patch_grid(batch["video"].shape, patch_size)))
    return flow_matching_loss(model, batch, key, num_tokens, flow)

  return jax.grad(loss_fn, has_aux=True)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    flow: ml_collections.ConfigDict, patch_size, *, ema_decay: float = 0.999,
                    grad_accum: int = 1, learning_rate: optax.Schedule | None = None):
  """A pure step function: (TrainState, batch, key) -> (TrainState, metrics dict).

  With grad_accum = k the batch is cut into k microbatches whose gradients are averaged (a
  lax.scan, so activation memory is that of one microbatch) before one optimizer update.
  """
  if grad_accum < 1:
    raise ValueError(f"train.grad_accum={grad_accum} must be >= 1")
  if not 0 <= ema_decay < 1:
    raise ValueError(f"train.ema_decay={ema_decay} must be in [0, 1)")
  grad_fn = make_grad_fn(graphdef, flow, patch_size)

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

  def train_step(state: TrainState, batch: dict, key: jax.Array):
    grads, metrics = accumulated_grads(state, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - decay)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    if learning_rate is not None:
      metrics["lr"] = learning_rate(state.step)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                         opt_state=opt_state), metrics

  return train_step
