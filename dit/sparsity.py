"""The DiT's static attention pattern, from its config (DiTConfig or config.model): which key
blocks each query block of the [video | text] sequence attends to (kernels/video_patterns.py
builds the masks).

  full              every block (no pattern)
  window            3D local window of half-widths model.sparse_window (dt, dh, dw) patches
  temporal          the same spatial position in every frame
  spatial           the whole frame
  spatial_temporal  even heads spatial, odd heads temporal

Text blocks are always kept. The same pattern serves every layer and every denoising step.
"""
import functools

from kernels import video_patterns
from kernels.block_tables import PatternTables

PATTERNS = ("full", "window", "temporal", "spatial", "spatial_temporal")


def attention_pattern(config, grid: tuple[int, int, int],
                      num_text: int) -> PatternTables | None:
  """PatternTables [1, 1 or H, nQ, Kmax] for a video of `grid` patches and num_text text tokens;
  None for "full"."""
  if config.sparse_pattern == "full":
    return None
  return pattern_of(config.sparse_pattern, config, grid, num_text)


def pattern_of(kind: str, config, grid: tuple[int, int, int],
               num_text: int, block: int | None = None) -> PatternTables:
  """The pattern `kind` (not "full") with the window and heads of model `config`; blocks of
  `block` tokens (default model.sparse_block)."""
  return _pattern(kind, tuple(config.sparse_window), block or config.sparse_block,
                  config.num_heads, tuple(grid), num_text)


@functools.lru_cache(maxsize=32)
def _pattern(kind, window, block, num_heads, grid, num_text) -> PatternTables:
  """Built once per shape, in numpy: the tables are constants of the jitted step."""
  blocks = dict(block_q=block, block_k=block, num_text=num_text)
  if kind == "window":
    mask = video_patterns.window_block_mask(grid, window, **blocks)
  elif kind == "temporal":
    mask = video_patterns.temporal_block_mask(grid, **blocks)
  elif kind == "spatial":
    mask = video_patterns.spatial_block_mask(grid, **blocks)
  elif kind == "spatial_temporal":
    mask = video_patterns.spatial_temporal_heads(grid, num_heads, **blocks)
  else:
    raise ValueError(f"model.sparse_pattern={kind!r}; choose one of {list(PATTERNS)}")
  # Numpy masks give numpy tables: concrete even when first built inside a trace.
  return PatternTables.from_mask(mask, block_q=block, block_k=block)
