"""Runs an adaptive sequence-parallel plan (sharding/sp_planner.py) as one training step's
gradients: every group of the plan on its own devices at its own degree, the gradients summed
over all devices.

    executor = PlanExecutor(grad_fn_for, mesh, rules, num_heads=24)
    grads, metrics = executor.gradients(params, model_state, plan, rows, key)

Group g of the plan (degree d, laid out widest first from device 0) gets a mesh of its d devices
with seq = d and runs its packed row there: without sequence parallelism at d = 1, Ulysses up
to the heads' power-of-two limit, USP (Ulysses within, ring across) past it. The groups are
separate programs on disjoint devices, dispatched one after another without waiting, so they run
at the same time. The parameters stay replicated over all devices, and each group reads its
devices' copies (no transfer). Each group returns the gradient of its examples' summed loss on
each of its devices; a single program over all devices then adds them up (1/d per device of a
group of d: each group once) and divides by the step's examples, which is the mean over
examples the single-device step takes.

Programs are compiled per (degree, first device, input shapes) and kept in an LRU cache,
so a plan that repeats the shape of an earlier one runs without compiling.

grad_fn_for(kind, degree) -> (params, model_state, row, key) -> (gradients of the summed loss,
{metric name: its sum over the row's examples}) is what the training side provides (training/adaptive_step.py); `kind`
is the model's sequence parallelism for the group ("none", "ulysses" or "usp").
"""
import collections
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sharding.logical import Rules, use_mesh
from sharding.mesh import make_mesh
from sharding.sp_planner import Plan

GradFn = Callable  # (params, model_state, row, key) -> (grads, metric sums)


def group_kind(degree: int, num_heads: int) -> str:
  """The sequence parallelism a group of `degree` runs: none, Ulysses while the degree divides
  the heads, USP beyond."""
  if degree == 1:
    return "none"
  return "ulysses" if num_heads % degree == 0 else "usp"


def group_starts(plan: Plan) -> list[int]:
  """The first device of each of the plan's groups (widest first, packed from device 0)."""
  return list(np.cumsum([0] + [d for d, _ in plan.groups])[:-1])


class PlanExecutor:

  """Runs plans on the devices of `mesh` (in its order); the gradients come back replicated
  over it."""

  def __init__(self, grad_fn_for: Callable[[str, int], GradFn], mesh: jax.sharding.Mesh,
               rules: Rules, *, num_heads: int, cache_size: int = 256):
    if jax.process_count() > 1:
      raise ValueError("sharding.sequence_parallel_plan='adaptive' runs on one process for now: "
                       "use 'static' on several hosts")
    self.grad_fn_for, self.rules, self.num_heads = grad_fn_for, rules, num_heads
    self.devices = list(mesh.devices.flat)
    self.flat = mesh
    self.compilations = 0
    self._programs: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_size
    self._meshes: dict[tuple[int, int], jax.sharding.Mesh] = {}
    self._reduce = jax.jit(_weighted_sum, out_shardings=NamedSharding(self.flat, P()))

  def mesh(self, start: int, degree: int) -> jax.sharding.Mesh:
    key = (start, degree)
    if key not in self._meshes:
      self._meshes[key] = make_mesh({"seq": degree}, self.devices[start:start + degree])
    return self._meshes[key]

  def gradients(self, params, model_state, plan: Plan, rows: Sequence[dict | None],
                key: jax.Array, num_examples: int):
    """(params and model state replicated over self.devices, the plan, one packed row dict
    [1, ...] per group (None for an empty group), the step key, the step's examples) ->
    (mean gradients replicated over the devices, metrics: the groups' metric sums divided by
    the step's examples, i.e. means over examples)."""
    if sum(d for d, _ in plan.groups) != len(self.devices):
      raise ValueError(f"the plan's groups {plan.degrees} are not the {len(self.devices)} "
                       "devices of the executor")
    per_device: list = [None] * len(self.devices)
    weights = np.zeros(len(self.devices), np.float32)
    for index, ((degree, members), start, row) in enumerate(
        zip(plan.groups, group_starts(plan), rows)):
      if not members:
        continue
      mesh = self.mesh(start, degree)
      program = self._program(degree, start, mesh, params, model_state, row, key)
      inputs = (_view(params, mesh), _view(model_state, mesh),
                jax.device_put(row, NamedSharding(mesh, P())),
                jax.device_put(jax.random.fold_in(key, index), NamedSharding(mesh, P())))
      stacked = program(*inputs)  # every leaf [degree, ...], one row per device
      for i in range(start, start + degree):
        per_device[i] = jax.tree.map(lambda x, i=i: _shard_on(x, self.devices[i]), stacked)
      weights[start:start + degree] = 1.0 / (degree * num_examples)
    # The reduction starts once every group has finished: on CPU each device's part of a
    # program that waits in a collective holds a thread, and the reduction's parts on idle
    # devices would otherwise wait there while the groups still need threads (a deadlock seen
    # on 8 simulated devices). The groups themselves run concurrently; a GPU loses only the
    # dispatch of the reduction.
    jax.block_until_ready([x for x in per_device if x is not None])
    template = next(x for x in per_device if x is not None)
    for i, device in enumerate(self.devices):
      if per_device[i] is None:  # an empty group adds zeros
        per_device[i] = jax.tree.map(
            lambda x, device=device: jnp.zeros(x.shape, x.dtype, device=device), template)
    leaves = [jax.tree.leaves(x) for x in per_device]
    treedef = jax.tree.structure(template)
    sharding = NamedSharding(self.flat, P(self.flat.axis_names))
    gathered = [jax.make_array_from_single_device_arrays(
        (len(self.devices),) + column[0].shape[1:], sharding, list(column))
        for column in zip(*leaves)]
    summed = self._reduce(gathered, jax.device_put(weights, NamedSharding(self.flat, P())))
    grads, metrics = jax.tree.unflatten(treedef, summed)
    return grads, metrics

  def _program(self, degree, start, mesh, params, model_state, row, key):
    shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), (params, model_state, row))
    name = (degree, start, str(shapes))
    if name in self._programs:
      self._programs.move_to_end(name)
      return self._programs[name]
    grad_fn = self.grad_fn_for(group_kind(degree, self.num_heads), degree)
    replicated = NamedSharding(mesh, P())
    per_device = NamedSharding(mesh, P("seq"))

    def run(params, model_state, row, key):
      grads, sums = grad_fn(params, model_state, row, key)
      spread = lambda x: jnp.broadcast_to(x[None], (degree,) + x.shape)
      return jax.tree.map(spread, (grads, sums))

    with use_mesh(mesh, self.rules):
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                              (params, model_state, row))
      key_shape = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
      program = jax.jit(run, out_shardings=per_device).lower(*abstract, key_shape).compile()
    self.compilations += 1
    self._programs[name] = program
    if len(self._programs) > self._cache_size:
      self._programs.popitem(last=False)
    return program


def _view(tree, mesh: jax.sharding.Mesh):
  """Arrays replicated over a superset of mesh's devices -> the same buffers as arrays
  replicated over `mesh` (no copy)."""
  def view(x):
    shards = {s.device: s.data for s in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        x.shape, NamedSharding(mesh, P()), [shards[d] for d in mesh.devices.flat])
  return jax.tree.map(view, tree)


def _shard_on(x: jax.Array, device: jax.Device) -> jax.Array:
  return next(s.data for s in x.addressable_shards if s.device == device)


def _weighted_sum(stacked, weights):
  """Leaves [N, ...] (one row per device) -> sum_n weights[n] * leaf[n], in float32."""
  return [jnp.tensordot(weights, x.astype(jnp.float32), axes=1).astype(x.dtype)
          for x in stacked]
