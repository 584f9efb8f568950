"""The static settings of one block-sparse attention call, shared by its kernels."""
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  block_q: int
  block_k: int
  scale: float
  kv_len: int            # real keys; the padded key blocks past it are masked out
  kv_len_padded: int     # keys after padding to whole pattern blocks
  has_segments: bool
  interpret: Any = False  # False, True (generic interpreter) or pltpu.InterpretParams
  num_warps: int | None = None   # GPU: warps per program (default 4 for D <= 64, else 8)
  num_stages: int | None = None  # GPU: software-pipelining stages of the key-block loop


def check_block_sizes(block_q: int, block_k: int) -> None:
  """The block sizes every kernel here takes: powers of two of at least 16."""
  for name, size in (("block_q", block_q), ("block_k", block_k)):
    if size < 16 or size & (size - 1):
      raise ValueError(f"{name}={size} must be a power of two of at least 16")
