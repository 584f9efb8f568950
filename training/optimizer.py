"""The optimizer of config.optim: AdamW with linear warmup then cosine decay, global-norm
gradient clipping, and weight decay on matrices only."""
import jax
import ml_collections
import optax


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
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay, mask=decay_mask))
