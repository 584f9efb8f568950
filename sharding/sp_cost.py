"""What a sequence costs at a sequence-parallel degree: the cost model the adaptive planner
(sharding/sp_planner.py, FlexSP) minimises.

A group of d devices runs a packed row of sequences (lengths L_i tokens, text included) with
Ulysses (USP past the heads' limit): every device holds sum(L_i) / d tokens. Its step time is

  compute   (a * sum L_i + b * sum L_i^2) / d / F       linear layers, and attention within each
                                                        sequence (segment ids: no cross terms)
  Ulysses   sum(L_i) / d * A * (u - 1) / u / W(u)        the all-to-alls of u = min(d, heads' limit)
  ring      sum(L_i) / d * R * (r - 1) / W(d)            USP's K/V passes over r = d / u groups
  latency   collectives * alpha                         once per group, if d > 1

with a, b the model's FLOPs per token and per (query, key) pair of a training step (Workload,
from training/flops.py), F the achieved FLOP/s, W(d) the all-to-all bandwidth per device of a
group of d (NVLink/ICI within a node, the network across nodes). Memory per device is the
static state plus sum(L_i) / d times the activation bytes per token; a group's rows may not
pass the memory limit. The step's gradient reduction over all devices is the same for every
plan and is left out.

Hardware comes from a short measurement on this machine (sharding/sp_calibration.py) or from
the published figures below, for simulating clusters we do not have.
"""
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One device kind and its network. Bandwidths are bytes/s each device moves in an all-to-all
  (one direction); latency is seconds per collective."""
  name: str
  flops_per_second: float          # achieved, on the model's matmuls
  intra_node_bandwidth: float
  inter_node_bandwidth: float
  node_size: int                   # devices that share the fast links (NVLink domain, ICI cube)
  collective_latency: float
  memory_bytes: float

  def bandwidth(self, degree: int) -> float:
    return self.intra_node_bandwidth if degree <= self.node_size else self.inter_node_bandwidth


# Published figures (peak bf16 FLOP/s at an assumed 50% MFU; NVLink 4 at 900 GB/s both ways,
# of which an all-to-all sustains ~360 GB/s per GPU one way; 8x400 Gb/s InfiniBand NDR per
# node, ~45 GB/s per GPU; TPU v5p: 4,800 Gb/s ICI per chip, all-to-all inside a 4x4x4 cube,
# ~25 GB/s per chip over the data-center network between slices). For simulation only.
PUBLISHED: dict[str, Hardware] = {
    "h100": Hardware("NVIDIA H100 SXM (published)", 0.5 * 989e12, 360e9, 45e9, 8, 20e-6,
                     80 * 1e9),
    "h200": Hardware("NVIDIA H200 SXM (published)", 0.5 * 989e12, 360e9, 45e9, 8, 20e-6,
                     141 * 1e9),
    "tpu-v5p": Hardware("TPU v5p (published)", 0.5 * 459e12, 200e9, 25e9, 64, 20e-6,
                        95 * 1e9),
}


@dataclasses.dataclass(frozen=True)
class Workload:
  """A model's training step, per token. training.flops.sequence_workload(config) gives it for
  a DiT."""
  flops_per_token: float           # linear layers, forward and backward
  flops_per_pair: float            # attention, per (query, key) pair, forward and backward
  alltoall_bytes_per_token: float  # Ulysses: bytes a device sends per token it holds, whole step
  ring_bytes_per_token: float      # USP's ring: K/V bytes per token held, per ring step
  activation_bytes_per_token: float
  static_bytes: float              # parameters, gradients and optimizer state on each device
  num_heads: int
  collectives: int                 # collectives per step of a sequence-parallel group


@dataclasses.dataclass(frozen=True)
class CostModel:
  hardware: Hardware
  workload: Workload
  memory_limit: float | None = None  # bytes per device; default the hardware's
  tokens_per_device: int | None = None  # a tighter limit in tokens (the data's rows), if set
  slots_per_device: int | None = None   # at most this many sequences per device of a group
  # ((degree, factor), ...): measured group time over predicted, per degree (a model timed on
  # this machine: what the figures above miss, e.g. simulated devices sharing a host's cores)
  degree_factors: tuple[tuple[int, float], ...] = ()

  def factor(self, degree: int) -> float:
    return dict(self.degree_factors).get(degree, 1.0)

  @property
  def limit(self) -> float:
    return self.hardware.memory_bytes if self.memory_limit is None else self.memory_limit

  def ulysses_degree(self, degree: int) -> int:
    """The Ulysses part of a group of `degree` (the rest is USP's ring): the largest power of
    two dividing both the degree and the heads."""
    heads = self.workload.num_heads
    return math.gcd(degree, heads & -heads)

  def group_time(self, lengths: Sequence[int] | np.ndarray, degree: int) -> float:
    """Seconds for a group of `degree` devices to run one packed row of these sequences."""
    lengths = np.asarray(lengths, np.float64)
    if not lengths.size:
      return 0.0
    return float(self.sequence_times(lengths, degree).sum() + self.fixed_time(degree))

  def sequence_times(self, lengths: np.ndarray, degree: int) -> np.ndarray:
    """Each sequence's share of a group's time: linear in the group's contents, so a group's
    time is the sum of its sequences' plus fixed_time(degree)."""
    w, hw = self.workload, self.hardware
    lengths = np.asarray(lengths, np.float64)
    compute = (w.flops_per_token * lengths + w.flops_per_pair * lengths**2) / degree
    time = compute / hw.flops_per_second
    u = self.ulysses_degree(degree)
    r = degree // u
    held = lengths / degree
    if u > 1:
      time = time + held * w.alltoall_bytes_per_token * (u - 1) / u / hw.bandwidth(u)
    if r > 1:
      time = time + held * w.ring_bytes_per_token * (r - 1) / hw.bandwidth(degree)
    return time * self.factor(degree)

  def fixed_time(self, degree: int) -> float:
    if degree == 1:
      return 0.0
    return self.workload.collectives * self.hardware.collective_latency * self.factor(degree)

  def memory(self, tokens: float, degree: int) -> float:
    """Bytes per device of a group of `degree` holding a row of `tokens` tokens."""
    return self.workload.static_bytes + tokens / degree * self.workload.activation_bytes_per_token

  def capacity(self, degree: int) -> int:
    """The most tokens a group of `degree` devices can hold in one row under the limit."""
    room = self.limit - self.workload.static_bytes
    tokens = max(0, int(room // self.workload.activation_bytes_per_token))
    if self.tokens_per_device is not None:
      tokens = min(tokens, self.tokens_per_device)
    return tokens * degree

  def slots(self, degree: int) -> int:
    """The most sequences a group of `degree` devices may run in one row."""
    return 2**62 if self.slots_per_device is None else self.slots_per_device * degree


def degrees(num_devices: int) -> list[int]:
  """The group sizes a plan may use: the powers of two up to the device count."""
  if num_devices < 1 or num_devices & (num_devices - 1):
    raise ValueError(f"adaptive sequence parallelism splits a power-of-two number of devices "
                     f"into groups; there are {num_devices}")
  return [2**k for k in range(int(math.log2(num_devices)) + 1)]
