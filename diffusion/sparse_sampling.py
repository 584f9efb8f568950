"""Sparse attention while sampling: a schedule of attention modes over the denoising steps.

config.sample.sparse (configs/common.py:sparse_config) picks it:

  attention  "none": the model as configured (dense unless model.sparse_pattern says otherwise);
             "adaspa": AdaSpa, per-layer head-adaptive patterns searched online and reused;
             a static pattern of dit/sparsity.py ("window", "temporal", "spatial",
             "spatial_temporal") for every step after the warm-up.
  sparsity   AdaSpa's average fraction of the video key blocks dropped per query block.
  warmup     the fraction of the steps run with full attention first.
  searches   AdaSpa's search steps out of `searches_of` (default 10 and 30 of 50), scaled to the
             number of steps. The first search after the warm-up (there is always one) is the
             fused search (dense pass, lse cached); later ones are lse-cached searches. Every
             other step reuses the patterns of the last search.
  block      block size of the patterns in tokens (0: model.sparse_block).
  recall_threshold  AdaSpa's hierarchy: heads keeping more of their mass at s than this move
             sparser, as many of the lowest denser (kernels/adaspa.py).

Each segment of steps with one mode runs in its own fori_loop; a search step is unrolled, since
it changes the patterns the next steps read.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import samplers
from diffusion.sparse_attention import SparseStep, check_supported
from dit.sparsity import PATTERNS

SPARSE_ATTENTION = ("none", "adaspa") + tuple(p for p in PATTERNS if p != "full")


def sparse_config_errors(config: ml_collections.ConfigDict) -> list[str]:
  """Errors in config.sample.sparse, as messages that say what to set."""
  errors = []
  if config.attention not in SPARSE_ATTENTION:
    errors.append(f"sample.sparse.attention={config.attention!r}; choose one of "
                  f"{list(SPARSE_ATTENTION)}")
  if not 0 <= config.sparsity < 1:
    errors.append(f"sample.sparse.sparsity={config.sparsity} must be in [0, 1): the fraction "
                  "of key blocks dropped")
  if not 0 <= config.warmup < 1:
    errors.append(f"sample.sparse.warmup={config.warmup} must be in [0, 1): the fraction of "
                  "steps with full attention")
  if not config.searches_of >= 1 or any(not 0 <= s < config.searches_of
                                        for s in config.searches):
    errors.append(f"sample.sparse.searches={tuple(config.searches)} must be steps in [0, "
                  f"sample.sparse.searches_of={config.searches_of})")
  if config.block < 0 or (config.block & (config.block - 1)) or 0 < config.block < 8:
    errors.append(f"sample.sparse.block={config.block} must be 0 (model.sparse_block) or a "
                  "power of two >= 8")
  if not 0 < config.recall_threshold <= 1:
    errors.append(f"sample.sparse.recall_threshold={config.recall_threshold} must be in (0, 1]")
  return errors


@dataclasses.dataclass(frozen=True)
class Segment:
  """Steps start .. stop-1: the first runs in mode `first` (a search), the others in `rest`."""
  start: int
  stop: int
  first: str
  rest: str


def schedule(num_steps: int, config: ml_collections.ConfigDict) -> list[Segment]:
  """The segments of a sampling run of num_steps steps (none for attention "none").

  Steps scale with halves rounded up; a later search on the last step would find a pattern no
  step reuses, so there is none there.
  """
  if config.attention == "none":
    return []
  warm = min(num_steps, _round(config.warmup * num_steps))
  segments = [Segment(0, warm, "dense", "dense")] if warm else []
  if warm == num_steps:
    return segments
  if config.attention != "adaspa":
    return segments + [Segment(warm, num_steps, "static", "static")]
  scaled = {_round(s * num_steps / config.searches_of) for s in config.searches}
  searches = [warm] + sorted(s for s in scaled if warm < s < num_steps - 1)
  for j, start in enumerate(searches):
    stop = searches[j + 1] if j + 1 < len(searches) else num_steps
    segments.append(Segment(start, stop, "fused_search" if j == 0 else "cached_search",
                            "sparse"))
  return segments


def _round(x: float) -> int:
  return math.floor(x + 0.5)


def search_steps(num_steps: int, config: ml_collections.ConfigDict) -> list[int]:
  return [s.start for s in schedule(num_steps, config) if s.first.endswith("search")]


def sparse_step(config: ml_collections.ConfigDict, model_config) -> SparseStep:
  """The static settings of the model calls (mode "dense" until a segment sets it)."""
  pattern = config.attention if config.attention not in ("none", "adaspa") else "full"
  return SparseStep(mode="dense", sparsity=float(config.sparsity),
                    block=int(config.block or model_config.sparse_block),
                    static_pattern=pattern, threshold=float(config.recall_threshold))


def check_schedule(config: ml_collections.ConfigDict, model_config, num_video: int,
                   num_text: int) -> None:
  """Errors for a schedule the model cannot run, before any sampling (see check_supported)."""
  if config.attention == "none":
    return
  mode = "fused_search" if config.attention == "adaspa" else "static"
  check_supported(sparse_step(config, model_config).replace(mode=mode), model_config, num_video,
                  num_text)


def sample_scheduled(model, key: jax.Array, shape: tuple[int, ...], cond: dict, *,
                     config: ml_collections.ConfigDict, num_steps: int = 50,
                     method: str = "euler", guidance_scale: float = 1.0,
                     guidance_interval: tuple[float, float] = samplers.FULL_INTERVAL,
                     shift: float = 1.0):
  """Videos float32 `shape` from noise made from `key` (as samplers.sample), attention following
  the schedule of sample.sparse `config`; -> (videos, searches): for each search step, the
  recall and sparsity of every layer's pattern, float32 [layers, B', H] (B' the model's batch,
  doubled by guidance); attention "none" is samplers.sample, with no searches."""
  if config.attention == "none":
    return samplers.sample(model, key, shape, cond, num_steps=num_steps, method=method,
                           guidance_scale=guidance_scale, guidance_interval=guidance_interval,
                           shift=shift), []
  sigmas = samplers.sigma_schedule(num_steps, shift)
  x = jax.random.normal(key, shape, jnp.float32)
  settings = sparse_step(config, model.config)

  def velocity(mode, patterns=None, with_state=False):
    step = settings.replace(mode=mode, patterns=patterns)
    fn = samplers.guided(lambda x, t, drop, cond: model.with_attention(step, x, t, drop_cond=drop,
                                                                        **cond),
                         cond, guidance_scale, guidance_interval)
    return fn if with_state else (lambda x, sigma: fn(x, sigma)[0])

  patterns, searches = None, []
  for segment in schedule(num_steps, config):
    start = segment.start
    if segment.first != segment.rest:
      x, patterns = samplers.step_with_state(
          velocity(segment.first, patterns, with_state=True),
          lambda found, rest=segment.rest: velocity(rest, found), x, sigmas, start, method)
      searches.append(_layer_stats(patterns))
      start += 1
    x = samplers.integrate(velocity(segment.rest, patterns), x, sigmas, method, start,
                           segment.stop)
  return x, searches


def _layer_stats(patterns: dict) -> dict:
  """{"recall", "sparsity"}: float32 [layers, B, H], dual-stream layers first."""
  kinds = [patterns[k] for k in ("dual", "single") if k in patterns]
  return {field: jnp.concatenate([getattr(p, field) for p in kinds])
          for field in ("recall", "sparsity")}


def search_report(searches: list[dict], steps: list[int]) -> dict:
  """Per search step: the mean recall and sparsity of each layer (over the heads and the samples
  of the model's batch, both halves of a guided one) and overall; plain Python numbers for JSON.
  The recall is the share of the video queries' attention mass the patterns keep (text queries
  keep everything), as measured by the search: with the lse cached at the fused search, a later
  search's is an estimate."""
  report = {"searches": []}
  for step, stats in zip(steps, searches):
    recall, sparsity = (np.asarray(stats[f], np.float64) for f in ("recall", "sparsity"))
    report["searches"].append(dict(
        step=step, recall=float(recall.mean()), sparsity=float(sparsity.mean()),
        recall_per_layer=[round(float(r), 5) for r in recall.mean(axis=(1, 2))],
        sparsity_per_layer=[round(float(s), 5) for s in sparsity.mean(axis=(1, 2))]))
  if searches:
    report["recall"] = float(np.mean([s["recall"] for s in report["searches"]]))
    report["sparsity"] = float(np.mean([s["sparsity"] for s in report["searches"]]))
  return report
