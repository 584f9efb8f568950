"""The DiT's settings: a frozen dataclass of the network's own fields, checked when it is made.

An experiment keeps them as config.model (a ConfigDict whose defaults and named sizes are in
configs/common.py:model_config); `DiTConfig.from_dict(config.model)` turns that section into
what the network is built from. Building a DiTConfig is the network's boundary: a bad value is
an error here, saying which field and what to set, and nothing inside the model checks again.
"""
import dataclasses
from collections.abc import Mapping

from dit import attention as attention_lib
from dit import remat as remat_lib
from dit import rope
from dit import sparsity
from sharding import ring
from sharding import sequence_parallel as sequence_parallel_lib

CONDITIONINGS = ("text", "label")
# What the final layer predicts; the model returns the velocity either way (dit/model.py).
PREDICTIONS = ("velocity", "data")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """What a DiT is: its sizes, inputs, attention and numerics (field notes in
  configs/common.py:model_config)."""
  size: str                       # the name of the size it started from (a label only)
  hidden_size: int
  depth: int
  num_heads: int
  dual_stream_depth: int          # the first blocks, dual-stream (text models only)
  patch_size: tuple[int, int, int]
  in_channels: int
  mlp_ratio: float
  conditioning: str               # "text" or "label"
  text_dim: int
  text_vocab_size: int
  num_classes: int
  attention: str
  sparse_pattern: str
  sparse_window: tuple
  sparse_block: int
  sequence_parallel: str
  ulysses_degree: int
  remat: str
  scan_layers: bool
  dtype: str
  param_dtype: str
  rope_theta: float
  prediction: str                 # "velocity" or "data" (x0, turned into a velocity)

  def __post_init__(self):
    # JSON gives lists; the config must be hashable (it is static under jit).
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
    object.__setattr__(self, "sparse_window", tuple(self.sparse_window))
    errors = _errors(self)
    if errors:
      raise ValueError("invalid model config:\n  " + "\n  ".join(errors))

  @classmethod
  def from_dict(cls, fields: Mapping) -> "DiTConfig":
    """From config.model (a ConfigDict) or any mapping of exactly these fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = set(fields.keys())
    if given != names:
      raise ValueError(f"model config: unknown fields {sorted(given - names)}, missing fields "
                       f"{sorted(names - given)}; build it with configs.common.model_config")
    return cls(**{name: fields[name] for name in names})

  def replace(self, **changes) -> "DiTConfig":
    return dataclasses.replace(self, **changes)

  @property
  def uses_text(self) -> bool:
    return self.conditioning == "text"

  @property
  def num_dual(self) -> int:
    """Dual-stream blocks: label models have no text stream, so every block is single-stream."""
    return self.dual_stream_depth if self.uses_text else 0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def mlp_hidden_size(self) -> int:
    """SwiGLU width: 2/3 * mlp_ratio * hidden, rounded up to a multiple of 64."""
    width = int(2 * self.mlp_ratio * self.hidden_size / 3)
    return -(-width // 64) * 64


def _errors(config: DiTConfig) -> list[str]:
  errors = [f"model.{field}={getattr(config, field)} must be positive"
            for field in ("hidden_size", "num_heads", "depth", "in_channels", "text_dim",
                          "num_classes", "mlp_ratio", "rope_theta")
            if not getattr(config, field) > 0]
  if errors:
    return errors
  if config.text_vocab_size < 0:
    errors.append(f"model.text_vocab_size={config.text_vocab_size} must be >= 0 (0: the text is "
                  "encoder states)")
  if config.hidden_size % config.num_heads:
    errors.append(f"model.hidden_size={config.hidden_size} is not divisible by "
                  f"model.num_heads={config.num_heads}")
  elif config.head_dim % 2 or min(rope.rope_axes_dims(config.head_dim)) < 2:
    errors.append(f"head dimension {config.head_dim} (hidden_size / num_heads) must be even and "
                  "at least 6 for the 3D RoPE")
  if not 0 <= config.dual_stream_depth <= config.depth:
    errors.append(f"model.dual_stream_depth={config.dual_stream_depth} must be between 0 and "
                  f"model.depth={config.depth}")
  if config.attention not in attention_lib.attention_implementations():
    errors.append(f"model.attention={config.attention!r} is not an attention implementation; "
                  f"choose one of {attention_lib.attention_implementations()}")
  elif config.attention == "cudnn" and not attention_lib.cudnn_supports(config.dtype,
                                                                        config.head_dim):
    errors.append(f"model.attention='cudnn' runs bfloat16 or float16 with head dims of at most "
                  f"128 in multiples of 8; got model.dtype={config.dtype!r} and head dim "
                  f"{config.head_dim}: set model.attention='auto' (cuDNN where it can run, our "
                  "kernel elsewhere) or change model.dtype")
  errors += _sparsity_errors(config)
  if config.remat not in remat_lib.REMAT_POLICIES:
    errors.append(f"model.remat={config.remat!r} is not a remat policy; choose one of "
                  f"{list(remat_lib.REMAT_POLICIES)}")
  if config.conditioning not in CONDITIONINGS:
    errors.append(f"model.conditioning={config.conditioning!r}; choose one of "
                  f"{list(CONDITIONINGS)}")
  if config.prediction not in PREDICTIONS:
    errors.append(f"model.prediction={config.prediction!r}; choose one of {list(PREDICTIONS)}")
  for field in ("dtype", "param_dtype"):
    if getattr(config, field) not in DTYPES:
      errors.append(f"model.{field}={getattr(config, field)!r}; choose one of {list(DTYPES)}")
  if len(config.patch_size) != 3 or any(p < 1 for p in config.patch_size):
    errors.append(f"model.patch_size={config.patch_size} must be three positive ints "
                  "(pt, ph, pw)")
  return errors


def _sparsity_errors(config: DiTConfig) -> list[str]:
  errors = []
  if config.sparse_pattern not in sparsity.PATTERNS:
    errors.append(f"model.sparse_pattern={config.sparse_pattern!r}; choose one of "
                  f"{list(sparsity.PATTERNS)}")
  elif (config.sparse_pattern != "full"
        and config.attention not in attention_lib.PATTERN_IMPLEMENTATIONS):
    errors.append(f"model.sparse_pattern={config.sparse_pattern!r} needs model.attention "
                  f"'auto', 'block_sparse' (the kernel) or 'xla' (a dense mask), not "
                  f"{config.attention!r}")
  window = config.sparse_window
  if len(window) != 3 or any(w is not None and int(w) < 0 for w in window):
    errors.append(f"model.sparse_window={window} must be three half-widths (dt, dh, dw) >= 0, "
                  "or None for a whole axis")
  block = config.sparse_block
  if block < 16 or block & (block - 1):
    errors.append(f"model.sparse_block={block} must be a power of two of at least 16")
  if config.sequence_parallel not in ("none",) + sequence_parallel_lib.KINDS:
    errors.append(f"model.sequence_parallel={config.sequence_parallel!r}; choose one of "
                  f"{['none', *sequence_parallel_lib.KINDS]}")
  elif config.sequence_parallel in ("ring", "usp") and (
      config.attention not in (attention_lib.AUTO, *ring.ATTENTION_WITH_LSE)
      or config.sparse_pattern != "full"):
    errors.append(f"model.sequence_parallel={config.sequence_parallel!r} runs model.attention "
                  f"in {[attention_lib.AUTO, *ring.ATTENTION_WITH_LSE]} with "
                  f"sparse_pattern='full'; got "
                  f"{config.attention!r}, {config.sparse_pattern!r} (Ulysses takes any)")
  if config.ulysses_degree < 0:
    errors.append(f"model.ulysses_degree={config.ulysses_degree} must be >= 0 (0: automatic)")
  return errors
