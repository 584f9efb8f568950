"""The DiT's training step under adaptive sequence parallelism (config.sharding.
sequence_parallel_plan = "adaptive", FlexSP): a batch of data/planned_batches.py carries its
plan of device groups and one packed row per group; sharding/sp_executor.py runs each group at
its own degree and sums the gradients over all devices; one jitted update (the optimizer and
the EMA, training/train_step.apply_gradients) follows on the whole mesh.

Each group's loss is packed flow matching (diffusion/flow_matching.py) with the group's own
random draws (the step key folded with the group's index), summed over its examples; the sum
over groups divided by the step's examples is the mean over examples the static step takes.
"""
import dataclasses
import functools

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data.pipeline import model_inputs
from diffusion.flow_matching import packed_flow_matching_loss
from dit.config import DiTConfig
from dit.model import DiT
from sharding.logical import Rules
from sharding.sp_cost import CostModel, Hardware
from sharding.sp_executor import PlanExecutor
from training.train_state import TrainState
from training.flops import sequence_workload
from training.train_step import apply_gradients

HARDWARE_FILE = "sp_hardware.json"  # a run's measured cost-model figures (sp_calibration.py)


def cost_model_for(config: ml_collections.ConfigDict, model: DiTConfig,
                   hardware: Hardware) -> CostModel:
  """The planner's cost model of a run: the DiT's workload on `hardware`, within
  sharding.sp_memory_gib (0: the device's memory) and the data's tokens and examples per
  device."""
  gib = config.sharding.sp_memory_gib
  return CostModel(hardware, sequence_workload(model),
                   memory_limit=gib * 2**30 if gib > 0 else None,
                   tokens_per_device=config.data.tokens_per_device,
                   slots_per_device=config.data.max_slots)


@functools.cache
def graphdef_for(model: DiTConfig, sequence_parallel: str) -> nnx.GraphDef:
  """The DiT's graph with `sequence_parallel` attention, allocating nothing (built once per
  kind, not once per compiled group program)."""
  config = dataclasses.replace(model, sequence_parallel=sequence_parallel)
  return nnx.split(nnx.eval_shape(lambda: DiT(config, rngs=nnx.Rngs(0))))[0]


def group_grad_fn_for(model: DiTConfig, flow: ml_collections.ConfigDict):
  """kind, degree -> a group's (params, model_state, row, key) -> (gradients of the summed
  packed loss, {"loss", "t_mean"} summed over its examples)."""

  def grad_fn_for(kind: str, degree: int):
    del degree
    graphdef = graphdef_for(model, kind)

    def summed(params, model_state, row, key):
      loss, metrics = packed_flow_matching_loss(nnx.merge(graphdef, params, model_state), row,
                                                key, flow)
      examples = jax.lax.stop_gradient(metrics["examples"])
      return loss * examples, {"loss": loss * examples, "t_mean": metrics["t_mean"] * examples}

    return jax.grad(summed, has_aux=True)

  return grad_fn_for


class AdaptiveStep:
  """(state, planned batch, key) -> (state, metrics) on `mesh` (every device on one axis; the
  state replicated)."""

  def __init__(self, model: DiTConfig, optimizer: optax.GradientTransformation,
               flow: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rules: Rules,
               shardings: TrainState, *, ema_decay: float = 0.999, learning_rate=None,
               grad_accum: int = 1):
    if grad_accum != 1:
      raise ValueError("adaptive sequence parallelism takes train.grad_accum=1")
    self.executor = PlanExecutor(group_grad_fn_for(model, flow), mesh, rules,
                                 num_heads=model.num_heads)
    replicated = NamedSharding(mesh, P())
    self.apply = jax.jit(apply_gradients(optimizer, ema_decay=ema_decay,
                                         learning_rate=learning_rate),
                         in_shardings=(shardings, shardings.params, replicated),
                         out_shardings=(shardings, replicated), donate_argnums=0)

  def __call__(self, state: TrainState, batch: dict, key: jax.Array):
    rows = [None if row is None else model_inputs(row) for row in batch["rows"]]
    grads, metrics = self.executor.gradients(state.params, state.model_state, batch["plan"],
                                             rows, key, batch["examples"])
    return self.apply(state, grads, metrics)
