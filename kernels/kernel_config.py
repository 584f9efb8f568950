"""The static settings of one block-sparse attention call, shared by its kernels."""
import dataclasses
from typing import Any

import jax
from jax.experimental.pallas import tpu as pltpu

BACKENDS = ("gpu", "tpu")
MIN_BLOCK = {"gpu": 16, "tpu": 128}  # the smallest tile each backend's kernels take


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  block_q: int
  block_k: int
  scale: float
  kv_len: int            # real keys; the padded key blocks past it are masked out
  kv_len_padded: int     # keys after padding to whole pattern blocks
  has_segments: bool
  interpret: Any = False  # False, True (generic interpreter: resolve_backend's "hlo") or
                          # pltpu.InterpretParams (TPU interpret mode)
  num_warps: int | None = None   # GPU: warps per program (default 4 for D <= 64, else 8)
  num_stages: int | None = None  # GPU: software-pipelining stages of the key-block loop


def check_block_sizes(block_q: int, block_k: int, backend: str = "gpu") -> None:
  """The block sizes every kernel here takes: powers of two of at least 16 (at least 128 on TPU,
  whose tiles hold 128 lanes)."""
  for name, size in (("block_q", block_q), ("block_k", block_k)):
    if size < 16 or size & (size - 1):
      raise ValueError(f"{name}={size} must be a power of two of at least 16")
    if size % MIN_BLOCK[backend]:
      raise ValueError(f"the {backend.upper()} kernels need {name} to be a multiple of "
                       f"{MIN_BLOCK[backend]}; got {size}")


def resolve_backend(backend: str | None, interpret):
  """(backend, interpret) of a kernel call, as pallas_call takes them.

  backend "gpu" or "tpu", by default this machine's (CPU runs the GPU kernels interpreted).
  interpret: None (True unless `backend` is this machine's), False, True (for TPU kernels:
  Pallas's TPU interpret mode, which checks what Mosaic would), a pltpu.InterpretParams, or
  "hlo": the kernel bodies lowered to plain XLA ops on this machine (Pallas's generic
  interpreter), so that XLA allocates exactly the blocks the kernel holds and
  `compiled.memory_analysis()` measures its memory.
  """
  platform = jax.default_backend()
  if backend is None:
    backend = "tpu" if platform == "tpu" else "gpu"
  if backend not in BACKENDS:
    raise ValueError(f"unknown kernel backend {backend!r}; choose one of {list(BACKENDS)}")
  if interpret is None:
    interpret = platform != backend
  if interpret == "hlo":
    return backend, True
  if interpret is True and backend == "tpu":
    interpret = pltpu.InterpretParams()
  return backend, interpret


def padded_head_dim(dim: int) -> int:
  """The head dim the GPU kernels run at: Triton's tensors have power-of-two sides (>= 16), so
  72 runs as 128. Zero features change no logit; the outputs' extra features are sliced off."""
  return max(16, 1 << (dim - 1).bit_length())
