"""LoRA fine-tuning of a trained DiT through qwix: the base weights frozen, low-rank adapters
trained on chosen layers, checkpoints that hold only the adapters.

A LoRA run's config has a `lora` section (configs/lora.py) and names its base run in
train.init_from (pinned to a step): that reference, in its config.json, is how the adapters
find their base again. Its network is the base DiT unstacked (DiT.unstacked) with qwix LoRA
on the layers matching lora.layers: each matched linear y = x W + (alpha / rank) x A B, A [in,
rank] and B [rank, out] (B zero at init, so training starts at the base model exactly).

In its train state the adapters (nnx.LoRAParam) are the params; the base weights are the
model_state, carried untouched and never saved: checkpoints store the state with model_state
left out, and restoring fills it from the base run again.

    python train.py --config=configs/lora.py --workdir=runs/quickstart_lora
    python sample.py --workdir=runs/quickstart_lora                # adapters attached
    python sample.py --workdir=runs/quickstart_lora --merge_lora   # merged into the weights
"""
import jax
import jax.numpy as jnp
import ml_collections
import qwix
from flax import nnx

from configs.common import uses_lora
from dit.config import DiTConfig
from dit.model import DiT, restack

def example_inputs(model: DiTConfig) -> tuple[tuple, dict]:
  """(args, kwargs) of one smallest call of the DiT (one patch, one text token)."""
  video = jnp.zeros((1, *model.patch_size, model.in_channels))
  if not model.uses_text:
    return (video, jnp.ones((1,))), dict(labels=jnp.zeros((1,), jnp.int32))
  text = (jnp.zeros((1, 1), jnp.int32) if model.text_vocab_size
          else jnp.zeros((1, 1, model.text_dim)))
  return (video, jnp.ones((1,))), dict(text=text)


def lora_network(model: DiTConfig, lora: ml_collections.ConfigDict, seed: int) -> nnx.Module:
  """The DiT of `model` (initialised from `seed`; the base weights replace these) unstacked,
  with qwix LoRA adapters on the layers matching lora.layers."""
  # qwix makes the adapters in a first call, which must not run under remat (it would make
  # them inside a rematerialised trace); the network then runs as model.remat says.
  base = DiT(model, rngs=nnx.Rngs(seed)).unstacked(remat="none")
  rule = qwix.LoraRule(module_path=lora.layers, op_names=("dot_general",), rank=lora.rank,
                       alpha=lora.alpha)
  args, kwargs = example_inputs(model)
  adapted = qwix.apply_lora_to_model(base, qwix.LoraProvider([rule]), *args,
                                     rngs=nnx.Rngs(seed + 1), **kwargs)
  if not jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam)):
    raise ValueError(f"lora.layers={lora.layers!r} matches no layer of the model (paths such as "
                     "'single_blocks/0/stream/qkv')")
  adapted.config = model
  return adapted


def base_state(stacked_params: nnx.State, model: DiTConfig) -> nnx.State:
  """The base run's parameters (a stacked DiT's nnx.Param state) in the unstacked layout of
  a LoRA network: what its model_state holds."""
  dit = nnx.eval_shape(lambda: DiT(model, rngs=nnx.Rngs(0)))
  nnx.update(dit, stacked_params)
  return nnx.state(dit.unstacked(), nnx.Param)


def saved_part(state):
  """The part of a LoRA run's train state that its checkpoints hold: all but the base."""
  return state.replace(model_state=None)


def merged_params(graphdef: nnx.GraphDef, adapters: nnx.State, base: nnx.State,
                  model: DiTConfig, lora: ml_collections.ConfigDict
                  ) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, params, model_state) of a plain (stacked) DiT whose weights are the base's
  with the adapters merged in: W + (alpha / rank) A B for every adapted kernel. It computes
  what the adapted model computes, without the adapters' extra matmuls."""
  adapted = nnx.merge(graphdef, adapters, base, copy=True)  # the caller's base stays as is
  scale = lora.alpha / lora.rank
  for _, module in nnx.iter_modules(adapted):
    if hasattr(module, "kernel_lora_a"):
      delta = module.kernel_lora_a[...] @ module.kernel_lora_b[...]
      module.kernel[...] = module.kernel[...] + scale * delta.astype(module.kernel.dtype)
  dit = nnx.eval_shape(lambda: DiT(model, rngs=nnx.Rngs(0)))
  values = nnx.to_pure_dict(nnx.state(adapted, nnx.Not(nnx.LoRAParam)))
  for kind in ("dual_blocks", "single_blocks"):
    if kind in values:
      values[kind] = restack(getattr(adapted, kind), nnx.Not(nnx.LoRAParam))
  nnx.update(dit, values)
  graphdef, params, model_state = nnx.split(dit, nnx.Param, ...)
  return graphdef, params, model_state


__all__ = ["uses_lora", "lora_network", "base_state", "saved_part", "merged_params"]
