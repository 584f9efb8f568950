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
  model_state: nnx.State  # any other model variables, carried along untouched
  opt_state: optax.OptState


def init_train_state(model: nnx.Module,
                     optimizer: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              model_state=model_state, opt_state=optimizer.init(params))


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    flow: ml_collections.ConfigDict, patch_size):
  """A pure step function: (TrainState, batch, key) -> (TrainState, metrics dict)."""
  validate_flow_config(flow)

  def loss_fn(params, model_state, batch, key):
    model = nnx.merge(graphdef, params, model_state)
    num_tokens = int(np.prod(patch_grid(batch["video"].shape, patch_size)))
    return flow_matching_loss(model, batch, key, num_tokens, flow)

  def train_step(state: TrainState, batch: dict, key: jax.Array):
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state.model_state, batch,
                                                     key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
