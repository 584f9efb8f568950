"""Calibrates the sequence-parallel cost model (sharding/sp_cost.py) on this machine: a short
measurement of matmul throughput, all-to-all bandwidth and collective latency.

    hardware = measure_hardware(jax.devices(), dim=config.hidden_size)   # ~1-3 s
    save_hardware(hardware, path); load_hardware(path)

A run measures once and keeps the figures in its folder, so its plans (and its bits) are the
same when it resumes.
"""
import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sharding.sp_cost import PUBLISHED, Hardware


def _seconds(fn, *args, repeats: int = 5) -> float:
  """The median wall time of fn(*args) after one warm-up (compilation) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_flops_per_second(devices: Sequence[jax.Device], dim: int, tokens: int = 2048,
                            dtype=jnp.float32) -> float:
  """Achieved FLOP/s per device of a [tokens, dim] x [dim, 4 dim] matmul (the shape of the
  model's MLP) on every device at once: what each gets when all compute (simulated CPU
  devices share the host's cores)."""
  mesh = jax.sharding.Mesh(np.array(devices), ("x",))
  x = jax.device_put(jnp.ones((len(devices) * tokens, dim), dtype), NamedSharding(mesh, P("x")))
  w = jax.device_put(jnp.ones((dim, 4 * dim), dtype), NamedSharding(mesh, P()))
  matmul = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, P("x")))
  return 2.0 * tokens * dim * 4 * dim / _seconds(matmul, x, w)


def alltoall_seconds(devices: Sequence[jax.Device], bytes_per_device: int) -> float:
  """Seconds of one all-to-all in which each device sends bytes_per_device (float32)."""
  n = len(devices)
  mesh = jax.sharding.Mesh(np.array(devices), ("x",))
  per_device = max(n, bytes_per_device // 4 // n * n)
  x = jax.device_put(jnp.ones((n * per_device,), jnp.float32), NamedSharding(mesh, P("x")))
  exchange = jax.jit(jax.shard_map(
      lambda x: jax.lax.all_to_all(x, "x", 0, 0, tiled=True), mesh=mesh, in_specs=P("x"),
      out_specs=P("x")))
  return _seconds(exchange, x)


def device_memory_bytes(device: jax.Device) -> float:
  """The device's memory limit (its allocator's), or for a CPU its share of the host's."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return float(stats["bytes_limit"])
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return float(host) / max(1, len(jax.local_devices(backend=device.platform)))


def measure_hardware(devices: Sequence[jax.Device], dim: int, dtype="float32") -> Hardware:
  """Hardware figures of these devices (one process's) for a model of width `dim` computing
  in `dtype`."""
  devices = list(devices)
  flops = matmul_flops_per_second(devices, dim, dtype=jnp.dtype(dtype))
  if len(devices) > 1:
    size = 4 << 20
    pair = devices[:2]
    latency = alltoall_seconds(pair, 4 * 2)
    intra = size / max(alltoall_seconds(pair, size) - latency, 1e-9)
    wide = size / max(alltoall_seconds(devices, size) - latency, 1e-9)
  else:
    latency, intra, wide = 0.0, float("inf"), float("inf")
  # One process's devices share one node: the wider all-to-all is still inside it.
  return Hardware(name=f"{devices[0].device_kind} (measured)", flops_per_second=flops,
                  intra_node_bandwidth=min(intra, wide), inter_node_bandwidth=min(intra, wide),
                  node_size=len(devices), collective_latency=latency,
                  memory_bytes=device_memory_bytes(devices[0]))


def hardware_for(name: str, devices: Sequence[jax.Device], dim: int,
                 path: str | None = None, dtype="float32") -> Hardware:
  """config.sharding.sp_hardware: a PUBLISHED name, or "measure": the figures saved at `path`
  by an earlier start of this run, else measured now (the caller saves them there once the
  run is known to start: save_hardware)."""
  if name != "measure":
    if name not in PUBLISHED:
      raise ValueError(f"sharding.sp_hardware={name!r}; choose 'measure' or one of "
                       f"{sorted(PUBLISHED)}")
    return PUBLISHED[name]
  if path and os.path.exists(path):
    return load_hardware(path)
  return measure_hardware(devices, dim, dtype)


def save_hardware(hardware: Hardware, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(dataclasses.asdict(hardware), f, indent=2)
  os.replace(path + ".tmp", path)


def load_hardware(path: str) -> Hardware:
  with open(path) as f:
    return Hardware(**json.load(f))
