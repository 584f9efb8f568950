"""The train state: parameters, their EMA, other model variables and the optimizer state.

The model lives as (graphdef, params) outside jit and is rebuilt with nnx.merge inside, so the
state is an ordinary pytree of arrays that any jit, sharding or checkpointing can handle.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

from dit.config import DiTConfig
from dit.model import DiT
from dit.vae.config import VAEConfig
from dit.vae.model import CausalVAE
from training.optimizer import make_optimizer

NetworkConfig = DiTConfig | VAEConfig


@struct.dataclass
class TrainState:
  step: jax.Array         # int32 scalar
  params: nnx.State       # the model's nnx.Param variables (float32): what is trained
  ema_params: nnx.State   # exponential moving average of params: what is sampled from
  model_state: nnx.State  # any other model variables, carried along untouched
  opt_state: optax.OptState


def init_train_state(model: nnx.Module, optimizer: optax.GradientTransformation,
                     trained=nnx.Param) -> tuple[nnx.GraphDef, TrainState]:
  """trained: the variables the optimizer updates (a LoRA network's: its nnx.LoRAParam
  adapters; the base weights are then model_state, frozen)."""
  graphdef, params, model_state = nnx.split(model, trained, ...)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              ema_params=jax.tree.map(jnp.copy, params),
                              model_state=model_state, opt_state=optimizer.init(params))


def build_network(model: NetworkConfig, seed: int,
                  lora: ml_collections.ConfigDict | None = None) -> nnx.Module:
  """The network a config describes (the DiT or the causal VAE), initialised from `seed`;
  with lora (a config.lora section of rank > 0) the DiT with LoRA adapters (training/lora.py)."""
  if lora is not None:
    from training.lora import lora_network  # noqa: PLC0415  (imports qwix)
    return lora_network(model, lora, seed)
  network = DiT if isinstance(model, DiTConfig) else CausalVAE
  return network(model, rngs=nnx.Rngs(seed))


def initial_train_state(model: NetworkConfig, optim: ml_collections.ConfigDict,
                        seed: int, lora: ml_collections.ConfigDict | None = None
                        ) -> tuple[nnx.GraphDef, TrainState]:
  """(graphdef, TrainState at step 0): the network initialised from `seed`, config.optim's
  optimizer; with lora, only the adapters are trained."""
  return init_train_state(build_network(model, seed, lora), optimizer_for(model, optim),
                          nnx.Param if lora is None else nnx.LoRAParam)


def optimizer_for(model: NetworkConfig,
                  optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """config.optim's optimizer for the network `model` describes; a VAE's discriminator, if it
  has one, gets its own (training/optimizer.py)."""
  return make_optimizer(optim, discriminator=bool(getattr(model, "discriminator_channels", 0)))


def abstract_train_state(model: NetworkConfig, optim: ml_collections.ConfigDict,
                         lora: ml_collections.ConfigDict | None = None
                         ) -> tuple[nnx.GraphDef, TrainState]:
  """The graphdef and the shapes and dtypes of the TrainState, allocating nothing: the target
  a checkpoint restores into."""
  graphdefs = []

  def init():
    graphdef, state = initial_train_state(model, optim, 0, lora)
    graphdefs.append(graphdef)  # static structure: valid outside the trace
    return state

  abstract = jax.eval_shape(init)
  return graphdefs[0], abstract
