"""The train state and its steps placed on the config's mesh: parameters, gradients, optimizer
state and EMA sharded by the logical-axis rules (FSDP over "fsdp"), the batch split over data x
fsdp, explicit in and out shardings at every jit boundary.

    mesh, rules = make_mesh(config.mesh), config.sharding.rules
    with use_mesh(mesh, rules):
      graphdef, abstract, shardings = train_state_layout(model, config.optim, mesh, rules)
      state = init_sharded_train_state(model, config.optim, config.seed, shardings)
      # or restore onto `abstract` (training/checkpoints.py)
      step = jit_train_step(make_train_step(graphdef, ...), shardings, mesh)
      state, metrics = step(state, global_batch(local_numpy_batch, mesh), key)

One device is the mesh (1, 1, 1, 1): the same code runs from a laptop to a pod.
"""
import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dit.patchify import num_video_tokens
from sharding import sequence_parallel as sequence_parallel_lib
from sharding import ulysses
from sharding.logical import Rules, tree_shardings
from training.train_state import (NetworkConfig, TrainState, abstract_train_state,
                                  initial_train_state)

BATCH_AXES = ("data", "fsdp")


def check_fits_mesh(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Errors, before any long work, when the batch or the token sequence does not split over the
  mesh as the config asks."""
  errors = []
  degree = batch_degree(mesh)
  microbatch = config.train.batch_size // max(config.train.grad_accum, 1)
  adaptive = adaptive_plan(config)
  if adaptive:  # the plans make the batch: the devices split into power-of-two groups
    if mesh.size & (mesh.size - 1):
      errors.append(f"sharding.sequence_parallel_plan='adaptive' splits a power-of-two number "
                    f"of devices into groups; there are {mesh.size}")
  elif microbatch % degree:
    errors.append(f"train.batch_size={config.train.batch_size} (/ train.grad_accum="
                  f"{config.train.grad_accum}) must be a multiple of the mesh's data x fsdp = "
                  f"{degree} devices")
  model, seq = config.get("model"), mesh.shape["seq"]
  if model is None:  # a VAE: convolutions, no token sequence to split
    if seq > 1:
      errors.append(f"mesh.seq={seq}: the VAE has no sequence parallelism; set mesh.seq=1")
  elif model.sequence_parallel != "none":
    batching = config.data.get("batching", "fixed") if "data" in config else "fixed"
    video = num_video_tokens(config.train.video_shape, model.patch_size)
    text = config.text.max_length if model.conditioning == "text" else 0
    if batching == "packing":  # a row: row_tokens video tokens, then each slot's text
      video, text = config.data.row_tokens, text * config.data.max_slots
    elif batching == "buckets" and seq > 1:
      errors.append("data.batching='buckets' with mesh.seq > 1 is not supported yet (each "
                    "bucket's tokens would have to split over seq): use packing, or mesh.seq=1")
    if (video + text) % seq:
      errors.append(f"{video + text} tokens per video (video + text.max_length) do not split "
                    f"over mesh.seq={seq}: change the video shape, the text length or the seq "
                    "size")
    elif text and model.dual_stream_depth and (video % seq or text % seq):
      # The dual-stream blocks hold video and text as two arrays, each split over seq.
      errors.append(f"the dual-stream blocks split the {video} video and {text} text tokens "
                    f"over mesh.seq={seq} apart: each must be a multiple of it; change the "
                    "video shape or text.max_length")
    try:
      if model.sequence_parallel == "ulysses":
        ulysses.check_heads(model.num_heads, seq)
      elif model.sequence_parallel == "usp":
        sequence_parallel_lib.usp_ulysses_degree(model.num_heads, seq, model.ulysses_degree)
    except ValueError as e:
      errors.append(str(e))
  elif seq > 1:
    errors.append(f"mesh.seq={seq} splits the tokens but model.sequence_parallel='none': choose "
                  "ulysses, ring or usp for the attention")
  if errors:
    raise ValueError(f"the config does not fit the mesh {dict(mesh.shape)}:\n  "
                     + "\n  ".join(errors))


def adaptive_plan(config: ml_collections.ConfigDict) -> bool:
  """Whether the steps of this (stage's) config run adaptive sequence-parallel plans: packed
  rows under sharding.sequence_parallel_plan="adaptive"."""
  return (config.get("sharding", {}).get("sequence_parallel_plan", "static") == "adaptive"
          and "data" in config and config.data.get("batching", "fixed") == "packing")


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying `shardings`: the target an orbax restore lays out on a mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def train_state_layout(model: NetworkConfig, optim: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh, rules: Rules,
                       lora: ml_collections.ConfigDict | None = None
                       ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, abstract state carrying its shardings, shardings) of the DiT of `model` with
  config.optim's optimizer on `mesh`, allocating nothing: what init builds into and what a
  checkpoint restores onto. Params, EMA and the optimizer's moments follow the params' logical
  axes (`rules`); the step is replicated. lora: a LoRA run's config.lora (training/lora.py)."""
  graphdef, abstract = abstract_train_state(model, optim, lora)
  shardings = tree_shardings(abstract, mesh, rules)
  return graphdef, with_shardings(abstract, shardings), shardings


def init_sharded_train_state(model: NetworkConfig, optim: ml_collections.ConfigDict, seed: int,
                             shardings: TrainState,
                             lora: ml_collections.ConfigDict | None = None) -> TrainState:
  """The initial state built directly in its shards (jit with out_shardings), so no device
  ever holds the whole model; the values equal an unsharded init's with the same seed."""
  return jax.jit(lambda: initial_train_state(model, optim, seed, lora)[1],
                 out_shardings=shardings)()


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Every batch array split over data x fsdp on its leading (example) axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_degree(mesh: jax.sharding.Mesh) -> int:
  return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def global_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's numpy batch (global batch / process count examples) -> global jax.Arrays
  split over data x fsdp (check_fits_mesh checked that it does). With one process the local
  batch is the global one."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(x))
          for name, x in local_batch.items()}


def jit_train_step(train_step, state_shardings: TrainState, mesh: jax.sharding.Mesh):
  """jax.jit of a (state, batch, key) -> (state, metrics) step with explicit shardings: the
  state keeps its layout (and is donated), metrics come back replicated."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding(mesh), replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
