"""AdaSpa inside the DiT: each layer's block-sparse pattern, searched online from its exact
attention mass and reused across denoising steps (kernels/attention_search.py, kernels/adaspa.py).

A `SparseStep` is the attention object (dit.attention.LayerAttention) of one model call,
`model.with_attention(step, video, t, ...)`; it runs every layer in one mode (static):

  dense          no pattern at all (the warm-up steps), whatever model.sparse_pattern says
  static         a static pattern of dit.sparsity (e.g. "window"), chosen at sampling time
  fused_search   dense attention that also gives its float32 lse, then the block masses: a new
                 head-adaptive pattern per layer; the lse is cached
  cached_search  the block masses with the cached lse (one QK^T, no dense pass): a new pattern,
                 then sparse attention with it
  sparse         the patterns of the last search

The per-layer state (`LayerPatterns`) is stacked over layers like the blocks' parameters and
threaded through their scan; with_attention returns the searched ones beside the velocity.
The search and sparse passes (and static patterns) run our Pallas kernels on GPUs and TPUs
(model.attention "auto", "block_sparse" or "cudnn", which takes no pattern), and the XLA
references under "xla" or "auto" on CPU, where they are fastest. Text query blocks keep every
key block and text key blocks are kept by every query block.
"""
import dataclasses
import logging

import jax
import numpy as np

from dit import attention as attention_lib
from dit import sparsity as static_patterns
from dit.attention import AttentionContext
from dit.blocks import attention_options
from kernels import adaspa
from kernels import attention_search
from kernels.block_tables import PatternTables

ADAPTIVE_MODES = ("fused_search", "cached_search", "sparse")
MODES = ("dense", "static") + ADAPTIVE_MODES


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerPatterns:
  """One layer's AdaSpa state; the arrays carry a leading layer axis when stacked."""
  tables: PatternTables  # [B, H, nQ, Kmax]: the pattern the sparse steps use
  lse: jax.Array         # float32 [B, H, L]: log-sum-exp of the last fused (dense) search
  recall: jax.Array      # float32 [B, H]: attention mass the pattern kept, at its search
  sparsity: jax.Array    # float32 [B, H]: fraction of the video key blocks each head drops


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseStep:
  """How a model call attends: the mode and settings are static, the patterns traced.

  patterns: {"dual": LayerPatterns, "single": LayerPatterns} stacked over each kind of block;
  needed by cached_search and sparse, ignored otherwise. A call in a search mode outputs the new
  patterns per layer; dense, static and sparse calls output none.
  """
  mode: str = dataclasses.field(metadata=dict(static=True))
  sparsity: float = dataclasses.field(default=0.5, metadata=dict(static=True))
  block: int = dataclasses.field(default=128, metadata=dict(static=True))
  static_pattern: str = dataclasses.field(default="full", metadata=dict(static=True))
  threshold: float = dataclasses.field(default=adaspa.RECALL_THRESHOLD,
                                       metadata=dict(static=True))
  patterns: dict | None = None

  @property
  def adaptive(self) -> bool:
    return self.mode in ADAPTIVE_MODES

  def replace(self, **changes) -> "SparseStep":
    return dataclasses.replace(self, **changes)

  def layer_inputs(self, kind: str) -> LayerPatterns | None:
    """The patterns the layers of `kind` read (cached_search, sparse), stacked over layers."""
    if self.mode not in MODES:
      raise ValueError(f"unknown attention mode {self.mode!r}; choose one of {list(MODES)}")
    if self.mode not in ("cached_search", "sparse"):
      return None
    if self.patterns is None:
      raise ValueError(f"mode {self.mode!r} reuses the patterns of a search: pass patterns")
    return self.patterns[kind]

  def __call__(self, q, k, v, *, segment_ids, context: AttentionContext, layer_input):
    """One layer's attention in this step's mode: q, k, v [B, L, H, D] -> (out, the layer's
    new LayerPatterns in a search mode, else None)."""
    config = context.config
    options = attention_options(config)
    if self.mode == "dense":
      return attention_lib.dot_product_attention(q, k, v, segment_ids=segment_ids,
                                                 **options), None
    options["implementation"] = sparse_implementation(config)
    if self.mode == "static":
      pattern = static_patterns.pattern_of(self.static_pattern, config, context.grid,
                                           context.num_text, block=self.block)
      return attention_lib.dot_product_attention(q, k, v, segment_ids=segment_ids,
                                                 pattern=pattern, **options), None
    out, found = layer_attention(self, layer_input, q, k, v, segment_ids=segment_ids,
                                 implementation=options["implementation"],
                                 num_video=context.num_video)
    return out, (None if self.mode == "sparse" else found)


def sparse_implementation(model_config) -> str:
  """What runs the patterns on this machine: "xla" (the references) or "block_sparse" (our
  kernels), as dit.attention.pattern_implementation picks for model.attention."""
  return attention_lib.pattern_implementation(model_config.attention, jax.default_backend())


def forced_blocks(length: int, num_video: int, block: int) -> np.ndarray:
  """bool [nK]: the blocks of the joint sequence that hold a text token (kept as keys, dense as
  queries)."""
  ends = np.minimum((np.arange(-(-length // block)) + 1) * block, length)
  return ends > num_video


def layer_attention(step: SparseStep, layer: LayerPatterns | None, q, k, v, *, segment_ids,
                    implementation: str, num_video: int):
  """One layer's attention in an adaptive mode: q, k, v [B, L, H, D] -> (out, LayerPatterns)."""
  length = q.shape[1]
  reference = implementation == "xla"
  search = dict(block_q=step.block, block_k=step.block, segment_ids=segment_ids)
  if step.mode == "sparse":
    return _sparse(q, k, v, layer.tables, segment_ids, implementation), layer
  if step.mode == "fused_search":
    fused = (attention_search.fused_search_reference if reference
             else attention_search.fused_search)
    out, lse, masses = fused(q, k, v, **search)
  else:  # cached_search
    cached = (attention_search.cached_search_reference if reference
              else attention_search.cached_search)
    lse = layer.lse
    masses = cached(q, k, lse, **search)
  text_blocks = forced_blocks(length, num_video, step.block)
  chosen = adaspa.select_pattern(masses, step.sparsity, block_q=step.block, block_k=step.block,
                                 forced_blocks=text_blocks, dense_rows=text_blocks,
                                 threshold=step.threshold)
  if step.mode == "cached_search":
    out = _sparse(q, k, v, chosen.tables, segment_ids, implementation)
  return out.astype(q.dtype), LayerPatterns(chosen.tables, lse, chosen.recall, chosen.sparsity)


def _sparse(q, k, v, tables, segment_ids, implementation):
  return attention_lib.dot_product_attention(q, k, v, implementation=implementation,
                                             segment_ids=segment_ids, pattern=tables)


def check_supported(step: SparseStep, model_config, num_video: int, num_text: int) -> None:
  """Errors for settings the step's mode cannot run with, before any tracing or sampling."""
  if step.mode == "dense":
    return
  implementation = sparse_implementation(model_config)
  if model_config.sequence_parallel not in ("none", "ulysses") or (
      step.adaptive and model_config.sequence_parallel != "none"):
    raise ValueError(f"{'AdaSpa' if step.adaptive else 'a static pattern'} does not run under "
                     f"model.sequence_parallel={model_config.sequence_parallel!r} yet: sample on "
                     "a mesh without a seq axis (--mesh=data=-1)")
  if implementation == "block_sparse" and step.block < 16:
    raise ValueError(f"sample.sparse.block={step.block}: the Pallas kernels take blocks of 16 "
                     "tokens or more (blocks of 8 run with the XLA references: "
                     "model.attention='xla', or 'auto' on a CPU)")
  if implementation == "block_sparse" and jax.default_backend() == "tpu" and step.block % 128:
    raise ValueError(f"sample.sparse.block={step.block}: the TPU kernels take blocks of a "
                     "multiple of 128 tokens; set sample.sparse.block=128")
  if implementation == "xla" and jax.default_backend() != "cpu":
    logging.warning("model.attention='xla': %s runs the XLA references, with [L, L] logits, on "
                    "this %s; --attention=auto runs the Pallas kernels", step.mode,
                    jax.default_backend())
  length = num_video + num_text
  if step.adaptive and forced_blocks(length, num_video, step.block).all():
    raise ValueError(f"sample.sparse.block={step.block} puts every one of the {length} tokens "
                     f"({num_video} video) in a block with text: nothing is left to select; set "
                     "a smaller sample.sparse.block")
