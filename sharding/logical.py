"""Logical axis names -> mesh axes: one table of rules places every parameter and activation.

Parameters carry logical names from their initialisers (`annotate`, i.e. nnx.with_partitioning:
a Linear kernel is ("embed", "mlp"), a stacked block adds "layers" in front); activations are
pinned with `constrain(x, ("activation_batch", "activation_length", "activation_embed"))`. The
rules (config.sharding.rules) map each logical name to mesh axes (data, fsdp, seq, tensor) or to
None (replicated), so changing the parallelism is changing the table, never the model:

    with use_mesh(make_mesh(config.mesh), config.sharding.rules):
      ...   # jit, constrain and tree_shardings see this mesh and these rules

A mesh axis is used at most once per array, axes of size 1 are left out, and a dimension that
the mesh axes do not divide is left whole (replicated) rather than split unevenly.
"""
import contextlib
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def annotate(initializer, *names: str | None):
  """An initialiser whose Variable carries the logical axis names `names` (one per dim).

  The Variable is created whole even under a mesh (no eager sharding): it is placed by jit's
  out_shardings from `tree_shardings`, so a model builds the same with or without a mesh.
  """
  return nnx.with_partitioning(initializer, names, eager_sharding=False)


def normalize_rules(rules: Rules) -> tuple[tuple[str, tuple[str, ...]], ...]:
  """Rules as (name, mesh axes tuple) pairs; accepts what a config or its JSON holds."""
  normalized = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"sharding rule {rule!r} must be a pair (logical name, mesh axes or None)")
    name, axes = rule
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    normalized.append((name, axes))
  return tuple(normalized)


def check_rules(rules: Rules, mesh_axes: Sequence[str]) -> list[str]:
  """Errors for rules that name unknown mesh axes or give one logical name twice."""
  errors, seen = [], set()
  for name, axes in normalize_rules(rules):
    if name in seen:
      errors.append(f"sharding.rules gives {name!r} twice; keep one rule per logical name")
    seen.add(name)
    unknown = [a for a in axes if a not in mesh_axes]
    if unknown:
      errors.append(f"sharding.rules maps {name!r} to {unknown}, not mesh axes; use "
                    f"{list(mesh_axes)} or None")
  return errors


def mesh_spec(names: Sequence[str | None], shape: Sequence[int], rules: Rules,
              mesh_sizes: Mapping[str, int]) -> P:
  """The PartitionSpec of an array of `shape` whose dims have the logical `names`."""
  if len(names) != len(shape):
    raise ValueError(f"logical axes {tuple(names)} do not match an array of shape {tuple(shape)}")
  table = dict(normalize_rules(rules))
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no rule in sharding.rules; add "
                       f"({name!r}, <mesh axes or None>)")
    axes = [a for a in table[name] if a not in used and mesh_sizes[a] > 1]
    while axes and size % int(np.prod([mesh_sizes[a] for a in axes])):
      axes.pop()  # an uneven split is not worth it: keep the dimension whole
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*spec)


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  return variable.get_metadata().get("out_sharding")


def tree_shardings(tree, mesh: jax.sharding.Mesh, rules: Rules):
  """NamedShardings for a pytree of nnx Variables (their logical names through the rules) and
  plain arrays (replicated), e.g. a whole TrainState with its optimizer state."""

  def sharding(x):
    if isinstance(x, nnx.Variable):
      names = logical_names(x)
      value = x.get_value()
      spec = mesh_spec(names, value.shape, rules, mesh.shape) if names else P()
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """x pinned to the mesh axes its logical `names` map to; unchanged without a mesh and rules
  in context (a single device, or a notebook that set none)."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = spmd.get_logical_axis_rules()
  if mesh.empty or not rules:
    return x
  return jax.lax.with_sharding_constraint(x, mesh_spec(names, x.shape, rules, mesh.shape))


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, rules: Rules):
  """Sets the mesh (jax.set_mesh) and the logical rules for what is traced inside."""
  errors = check_rules(rules, mesh.axis_names)
  if errors:
    raise ValueError("invalid sharding config:\n  " + "\n  ".join(errors))
  with jax.set_mesh(mesh), spmd.logical_axis_rules(normalize_rules(rules)):
    yield mesh
