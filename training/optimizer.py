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


DISCRIMINATOR = "discriminator"  # the VAE's submodule that holds the discriminator


def make_optimizer(config: ml_collections.ConfigDict,
                   discriminator: bool = False) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay and global-norm gradient clipping. With `discriminator`
  (a VAE trained with a 3D patch discriminator, its parameters under params["discriminator"]):
  the discriminator has its own optimizer, Adam with betas (0.5, 0.9) at the constant config.lr
  with its own clipping and no weight decay (the usual choice for a GAN's critic, e.g.
  taming-transformers'). Its gradients are zero until vae_loss.adversarial_start, and so are
  its updates: it stays as initialised through the warm-up."""
  network = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay, mask=decay_mask))
  if not discriminator:
    return network
  critic = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adam(config.lr, b1=0.5, b2=0.9))
  return optax.multi_transform({"network": network, DISCRIMINATOR: critic}, player_labels)


def player_labels(params):
  """Each parameter's optimizer: "discriminator" under params["discriminator"], else
  "network"."""

  def label(path, _):
    first = path[0]
    return (DISCRIMINATOR if isinstance(first, jax.tree_util.DictKey)
            and first.key == DISCRIMINATOR else "network")

  return jax.tree_util.tree_map_with_path(label, params)
