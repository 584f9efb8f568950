"""The device mesh from the config: axes (data, fsdp, seq, tensor), sizes with -1 for the rest.

    mesh = make_mesh({"data": -1, "fsdp": 2, "seq": 2, "tensor": 1})   # 8 devices -> (2, 2, 2, 1)

Code never names a device: everything is placed by mesh axis names.
"""
from collections.abc import Mapping, Sequence

import jax
import numpy as np

MESH_AXES = ("data", "fsdp", "seq", "tensor")


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes per axis of MESH_AXES (missing: 1; one -1: whatever is left) -> the mesh shape."""
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; the axes are {list(MESH_AXES)}")
  shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
  fill = [axis for axis, size in zip(MESH_AXES, shape) if size == -1]
  if len(fill) > 1 or any(size == 0 or size < -1 for size in shape):
    raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, shape))}: each must be positive, and at "
                     "most one may be -1 (the devices left over)")
  known = int(np.prod([size for size in shape if size != -1]))
  if fill:
    if num_devices % known:
      raise ValueError(f"the mesh axes other than {fill[0]!r} take {known} devices, which does "
                       f"not divide the {num_devices} devices: change the sizes")
    shape[MESH_AXES.index(fill[0])] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices "
                     f"but there are {num_devices}: change the sizes or set one to -1")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh over `devices` (default: all of them, every host's) with axes MESH_AXES."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(sizes, len(devices))
  # Auto axes: XLA propagates shardings from the jit boundary and from sharding constraints on
  # logical axes (maxtext's model), and shard_map reshards its inputs as needed.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
