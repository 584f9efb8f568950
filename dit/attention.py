"""The one attention entry point: implementations registered by name, chosen by the config.

Every implementation takes q [B, Lq, H, D], k and v [B, Lk, H, D] and returns [B, Lq, H, D].
`segment_ids` int32 [B, L] restricts each token to the tokens with the same id (padding, packed
sequences). `pattern` (kernels.block_tables.PatternTables) restricts each query block to its
listed key blocks: the pattern is part of what attention computes, so "xla" applies it as a dense
mask (the reference) and "block_sparse" skips the unlisted blocks (the fast path); both give the
same result. Other implementations (splash, sequence-parallel wrappers) register themselves with
`register_attention` from their own modules.

"auto" (the default of model.attention) picks per call what this machine runs best
(resolve_implementation): on NVIDIA GPUs cuDNN's flash attention for dense bfloat16/float16
attention and our Pallas kernel for everything else (patterns, segment ids, float32, ring
attention); on TPUs our Pallas TPU kernel; on CPU the XLA reference. An explicit name always
runs as named.
"""
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from kernels import block_sparse_attention as block_sparse_lib
from kernels.block_tables import PatternTables
from kernels.reference import token_mask
from sharding import sequence_parallel as sequence_parallel_lib


class AttentionFn(Protocol):

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *,
               segment_ids: jax.Array | None = None,
               kv_segment_ids: jax.Array | None = None,
               scale: float | None = None,
               pattern: PatternTables | None = None) -> jax.Array:
    ...


@dataclasses.dataclass(frozen=True)
class AttentionContext:
  """What a block's attention knows of the call it is in: the network's config and the joint
  sequence [video | text]: a video of `grid` (nT, nH, nW) patches = num_video tokens, then
  num_text text tokens."""
  config: Any  # dit.config.DiTConfig
  grid: tuple[int, int, int]
  num_video: int
  num_text: int


class LayerAttention(Protocol):
  """Attention that replaces the configured one in every block of one call, with state per
  layer, built outside the network (AdaSpa's searched patterns: diffusion/sparse_attention.py).
  DiT.with_attention threads it through the block scan."""

  def layer_inputs(self, kind: str) -> Any:
    """This call's per-layer inputs for the blocks of `kind` ("dual" or "single"), stacked on a
    leading layer axis (a pytree), or None."""
    ...

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *,
               segment_ids: jax.Array | None, context: AttentionContext,
               layer_input: Any) -> tuple[jax.Array, Any]:
    """q, k, v [B, L, H, D] -> (out [B, L, H, D], this layer's output state or None)."""
    ...


_IMPLEMENTATIONS: dict[str, AttentionFn] = {}


def register_attention(name: str) -> Callable[[AttentionFn], AttentionFn]:
  """Decorator adding an implementation under `name` (the value of model.attention)."""

  def add(fn: AttentionFn) -> AttentionFn:
    if name in _IMPLEMENTATIONS and _IMPLEMENTATIONS[name] is not fn:
      raise ValueError(f"attention implementation {name!r} is already registered")
    _IMPLEMENTATIONS[name] = fn
    return fn

  return add


def attention_implementations() -> list[str]:
  return sorted(_IMPLEMENTATIONS)


def get_attention(name: str) -> AttentionFn:
  if name not in _IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {name!r}; set model.attention to one "
                     f"of {attention_implementations()}")
  return _IMPLEMENTATIONS[name]


AUTO = "auto"
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
PATTERN_IMPLEMENTATIONS = (AUTO, "xla", "block_sparse")  # those that take a block pattern


def cudnn_supports(dtype, head_dim: int) -> bool:
  """Whether cuDNN's flash attention runs this dtype and head dim (on every GPU generation it
  supports: head dims of at most 128 in multiples of 8, bfloat16 or float16)."""
  return jnp.dtype(dtype) in CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= 128


def pattern_implementation(name: str, platform: str) -> str:
  """What runs attention with a block pattern under model.attention=`name`: the XLA reference
  (a dense mask) for "xla", and for "auto" on CPU, where it is fastest; otherwise our kernel
  (cuDNN takes no pattern)."""
  if name == "xla" or (name == AUTO and platform == "cpu"):
    return "xla"
  return "block_sparse"


def resolve_implementation(name: str, *, platform: str, dtype, head_dim: int,
                           pattern: bool = False, segments: bool = False,
                           needs_lse: bool = False) -> str:
  """The implementation that runs for model.attention=`name`: `name` itself, or for "auto" the
  best this platform ("cpu", "gpu", "tpu") has for a call with these properties.

  needs_lse: the caller merges partial results by log-sum-exp (ring attention), which cuDNN
  does not return here. With segment ids cuDNN would take them as a dense [B, 1, L, L] mask, so
  auto uses our kernel, which reads the ids per block.
  """
  if name != AUTO:
    return name
  if pattern:
    return pattern_implementation(name, platform)
  if platform == "gpu":
    if needs_lse or segments or not cudnn_supports(dtype, head_dim):
      return "block_sparse"
    return "cudnn"
  return "block_sparse" if platform == "tpu" else "xla"


def implementations_run(config, platform: str | None = None) -> dict[str, str]:
  """What a DiT of `config` (a DiTConfig) runs on `platform` (default: this machine's) for its
  kinds of attention call: without segment ids (label models; text without padding or
  guidance), with them (padded text, classifier-free guidance), and with a block pattern. For
  benchmark records, where "auto" alone does not say."""
  platform = platform or jax.default_backend()
  resolve = lambda **call: resolve_implementation(
      config.attention, platform=platform, dtype=config.dtype, head_dim=config.head_dim,
      needs_lse=config.sequence_parallel in ("ring", "usp"), **call)
  return dict(dense=resolve(), segments=resolve(segments=True), pattern=resolve(pattern=True))


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          implementation: str = "xla",
                          segment_ids: jax.Array | None = None,
                          kv_segment_ids: jax.Array | None = None,
                          scale: float | None = None,
                          pattern: PatternTables | None = None,
                          sequence_parallel: str = "none",
                          ulysses_degree: int = 0) -> jax.Array:
  """Attention through the implementation named `implementation`; layout [B, L, H, D].

  sequence_parallel "ulysses", "ring" or "usp" splits the sequence over the "seq" axis of the
  mesh in context (jax.set_mesh), with `implementation` running on each device; ulysses_degree
  is USP's Ulysses group size (0: the largest that divides heads and seq degree).
  """
  if implementation == AUTO:
    implementation = resolve_implementation(
        AUTO, platform=jax.default_backend(), dtype=q.dtype, head_dim=q.shape[-1],
        pattern=pattern is not None, segments=segment_ids is not None,
        needs_lse=sequence_parallel in ("ring", "usp"))
  if sequence_parallel != "none":
    return _sequence_parallel(q, k, v, implementation, sequence_parallel, segment_ids=segment_ids,
                              kv_segment_ids=kv_segment_ids, scale=scale, pattern=pattern,
                              ulysses_degree=ulysses_degree)
  return get_attention(implementation)(q, k, v, segment_ids=segment_ids,
                                       kv_segment_ids=kv_segment_ids, scale=scale,
                                       pattern=pattern)


def _sequence_parallel(q, k, v, implementation, kind, *, pattern, **kwargs):
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "seq" not in mesh.axis_names:
    raise ValueError(f"sequence_parallel={kind!r} needs a mesh with a 'seq' axis in context: run "
                     "under jax.set_mesh(sharding.mesh.make_mesh(config.mesh))")
  if kind != "ulysses" and pattern is not None:
    raise ValueError(f"{kind} attention does not take a block-sparsity pattern yet: use "
                     "Ulysses, or model.sparse_pattern='full'")
  return sequence_parallel_lib.sequence_parallel_attention(
      q, k, v, mesh=mesh, kind=kind, inner=implementation,
      attention=get_attention(implementation), pattern=pattern, **kwargs)


def segment_mask(segment_ids: jax.Array, kv_segment_ids: jax.Array | None = None) -> jax.Array:
  """bool [B, 1, Lq, Lk]: True where query and key share a segment id."""
  if kv_segment_ids is None:
    kv_segment_ids = segment_ids
  return segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


@register_attention(AUTO)
def auto_attention(q, k, v, *, segment_ids=None, kv_segment_ids=None, scale=None, pattern=None):
  """What resolve_implementation picks for this call on this machine (jax.default_backend())."""
  name = resolve_implementation(AUTO, platform=jax.default_backend(), dtype=q.dtype,
                                head_dim=q.shape[-1], pattern=pattern is not None,
                                segments=segment_ids is not None)
  return get_attention(name)(q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                             scale=scale, pattern=pattern)


@register_attention("xla")
def xla_attention(q, k, v, *, segment_ids=None, kv_segment_ids=None, scale=None, pattern=None):
  """The reference: jax.nn.dot_product_attention lowered by XLA (logits in float32); a pattern
  becomes a dense [B, H, Lq, Lk] mask."""
  mask = None if segment_ids is None else segment_mask(segment_ids, kv_segment_ids)
  if pattern is not None:
    blocks = token_mask(pattern.kv_indices, pattern.kv_counts, block_q=pattern.block_q,
                        block_k=pattern.block_k, q_len=q.shape[1], kv_len=k.shape[1])
    mask = blocks if mask is None else mask & blocks
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
  if pattern is None:
    return out
  # A row with no key at all gives zeros, as in the kernels (softmax over nothing is not 1/L).
  sees_something = mask.any(-1)  # [B, H, Lq]
  return jnp.where(jnp.swapaxes(sees_something, 1, 2)[..., None], out, 0).astype(out.dtype)


@register_attention("cudnn")
def cudnn_attention(q, k, v, *, segment_ids=None, kv_segment_ids=None, scale=None,
                    pattern=None):
  """cuDNN's fused flash attention (NVIDIA GPUs, bfloat16/float16) through jax.nn; segment ids
  become a dense [B, 1, Lq, Lk] mask. Dense only: the config checks give it no pattern."""
  del pattern
  if jax.default_backend() != "gpu":
    raise ValueError(f"model.attention='cudnn' runs on NVIDIA GPUs only; this machine's JAX "
                     f"backend is {jax.default_backend()!r}: set model.attention='auto'")
  mask = None if segment_ids is None else segment_mask(segment_ids, kv_segment_ids)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")


@register_attention("block_sparse")
def block_sparse_attention(q, k, v, *, segment_ids=None, kv_segment_ids=None, scale=None,
                           pattern=None):
  """Our Pallas kernel (kernels/block_sparse_attention.py): GPU, TPU, or interpreted on CPU.

  Without a pattern every block is listed, with blocks of 128 (less for short sequences).
  """
  if pattern is None:
    pattern = block_sparse_lib.full_pattern(q.shape[1], k.shape[1])
  return block_sparse_lib.sparse_attention(q, k, v, pattern, scale=scale,
                                           segment_ids=segment_ids,
                                           kv_segment_ids=kv_segment_ids)
