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
