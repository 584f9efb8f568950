"""End-to-end sampling benchmark: dense attention vs AdaSpa (diffusion/sparse_sampling.py), and the
share of AdaSpa's time its searches take.

    python -m bench.sampling      # on a GPU: randomly initialised XL, 32x64x64 latents = 32K
                                  # tokens per video, 50 Euler steps with guidance (batch 2)
    python -m bench.sampling --sparsity=0.5,0.8,0.9 --config.sample.num_steps=20

Both variants sample from the same noise with the same model config: the dense one with
model.attention at every step (the record's attention_runs says what ran); AdaSpa with it for
the warm-up steps, then our Pallas kernels (fused search, lse-cached search, block-sparse
attention; the XLA references on CPU) by the schedule of
config.sample.sparse. The search overhead is what the search steps cost beyond a sparse step
(each single model call is timed alone), as a share of AdaSpa's sampling time. Results go to
bench/results/sampling-<device>-<time>.json and .md with the device, versions and shapes.
"""
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from bench import records
from configs.checks import validate_config, validate_sample_config
from data.random_batch import random_batch
from diffusion import samplers
from diffusion.flow_matching import condition_inputs
from diffusion.sparse_sampling import (sample_scheduled, schedule, search_report, search_steps,
                                       sparse_step)
from dit import attention as attention_lib
from dit.model import DiT
from dit.patchify import num_video_tokens
from rundir.logs import quiet_library_logs

ON_ACCELERATOR = jax.default_backend() in ("gpu", "tpu")
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

config_flags.DEFINE_config_file(
    "config", str(CONFIGS / ("video_dit.py:size=XL" if ON_ACCELERATOR else "quickstart.py:tiny")),
    "Experiment config: its model, sample settings and train.video_shape (overridden below on a "
    "GPU) are benchmarked.", lock_config=False)
flags.DEFINE_list("video_shape", ["32", "64", "64"] if ON_ACCELERATOR else [],
                  "T,H,W of the sampled latents (default: the config's train.video_shape).")
flags.DEFINE_list("sparsity", ["0.8", "0.9"], "AdaSpa sparsities to time.")
flags.DEFINE_string("attention", None,
                    "model.attention (dit/attention.py; default: the config's, auto): on a GPU "
                    "auto runs our kernel for the dense steps (guidance gives segment ids, which "
                    "cuDNN would take as a dense mask) and for AdaSpa's passes; cudnn runs the "
                    "dense steps through cuDNN; on CPU auto runs the XLA references.")
flags.DEFINE_integer("repeats", 1, "timed runs of each variant after a compiling one (median)")
flags.DEFINE_integer("call_repeats", 3, "timed runs of each single model call (median)")
flags.DEFINE_string("out", str(records.RESULTS), "results folder")
FLAGS = flags.FLAGS


def timed(fn, repeats: int):
  """(median seconds of fn() after one untimed, compiling call; fn's last result)."""
  result = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), result


def main(argv):
  del argv
  quiet_library_logs()
  config = FLAGS.config
  if FLAGS.attention is not None:
    config.model.attention = FLAGS.attention
  if FLAGS.video_shape:
    config.train.video_shape = tuple(int(n) for n in FLAGS.video_shape)
  sparsities = [float(s) for s in FLAGS.sparsity]
  config.sample.sparse.attention = "adaspa"
  model_config = validate_config(config)
  for s in sparsities:  # each sparsity checked before any work
    config.sample.sparse.sparsity = s
    validate_sample_config(config.sample)
  sample_cfg = config.sample
  shape = (1, *config.train.video_shape, config.model.in_channels)
  video_tokens = num_video_tokens(config.train.video_shape, config.model.patch_size)
  text_tokens = config.text.max_length if config.model.conditioning == "text" else 0
  model = DiT(model_config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  cond = {name: jnp.asarray(value) for name, value in condition_inputs(
      random_batch(config, seed=0, batch_size=shape[0])).items() if name != "video"}
  key = jax.random.key(0)
  options = dict(num_steps=sample_cfg.num_steps, method=sample_cfg.sampler,
                 guidance_scale=sample_cfg.guidance_scale,
                 shift=samplers.sampling_shift(config, video_tokens))

  dense_fn = jax.jit(lambda params: samplers.sample(nnx.merge(graphdef, params), key, shape,
                                                    cond, **options))
  rows = [dict(variant="dense", sparsity=0.0,
               seconds=timed(lambda: dense_fn(params), FLAGS.repeats)[0])]
  dense_step = ModelCalls(graphdef, params, shape, cond, config,
                          config.sample.sparse).seconds("dense")
  for s in sparsities:
    sparse_cfg = config.sample.sparse.copy_and_resolve_references()
    sparse_cfg.sparsity = s
    adaspa_fn = jax.jit(lambda params, c=sparse_cfg: sample_scheduled(
        nnx.merge(graphdef, params), key, shape, cond, config=c, **options))
    seconds, (_, searches) = timed(lambda: adaspa_fn(params), FLAGS.repeats)
    report = search_report(jax.device_get(searches), search_steps(options["num_steps"],
                                                                  sparse_cfg))
    model_calls = ModelCalls(graphdef, params, shape, cond, config, sparse_cfg)
    calls = {mode: model_calls.seconds(mode) for mode in ("fused_search", "cached_search",
                                                          "sparse")}
    searches_run = [seg.first for seg in schedule(options["num_steps"], sparse_cfg)
                    if seg.first.endswith("search")]
    overhead = sum(calls[mode] - calls["sparse"] for mode in searches_run)
    rows.append(dict(variant="adaspa", sparsity=s, seconds=seconds,
                     speedup=rows[0]["seconds"] / seconds, search_overhead_s=overhead,
                     search_overhead_share=overhead / seconds, recall=report.get("recall"),
                     call_ms={"dense": 1e3 * dense_step} | {m: 1e3 * t for m, t in calls.items()}))
  write_results(config, video_tokens, text_tokens, options, rows)


class ModelCalls:
  """Times single guided model evaluations, one per mode; the patterns of one fused search feed
  the modes that reuse them."""

  def __init__(self, graphdef, params, shape, cond, config, sparse_cfg):
    self.params = params
    self.settings = sparse_step(sparse_cfg, config.model)
    x = jax.random.normal(jax.random.key(1), shape)
    guidance = config.sample.guidance_scale

    def call(params, mode, patterns):
      model = nnx.merge(graphdef, params)
      step = self.settings.replace(mode=mode, patterns=patterns)
      return samplers.guided(lambda x, t, drop, cond: model.with_attention(
          step, x, t, drop_cond=drop, **cond), cond, guidance)(x, 0.5)

    self.call = jax.jit(call, static_argnums=1)
    self.patterns = None

  def seconds(self, mode: str) -> float:
    if mode in ("cached_search", "sparse") and self.patterns is None:
      _, self.patterns = self.call(self.params, "fused_search", None)
    patterns = self.patterns if mode in ("cached_search", "sparse") else None
    return timed(lambda: self.call(self.params, mode, patterns), FLAGS.call_repeats)[0]


def write_results(config, video_tokens, text_tokens, options, rows):
  sparse = config.sample.sparse
  meta = records.environment() | dict(
      model=config.model.size, hidden=config.model.hidden_size, depth=config.model.depth,
      heads=config.model.num_heads, dtype=config.model.dtype, attention=config.model.attention,
      attention_runs=attention_lib.implementations_run(validate_config(config)),
      video_shape=list(config.train.video_shape), video_tokens=video_tokens,
      text_tokens=text_tokens, model_batch=1 if options["guidance_scale"] == 1 else 2,  # 1 video
      **options, block=sparse.block or config.model.sparse_block, warmup=sparse.warmup,
      searches=list(search_steps(options["num_steps"], sparse)), repeats=FLAGS.repeats)
  lines = ["| variant | sparsity | sampling s | speedup vs dense | search overhead | recall |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    if row["variant"] == "dense":
      lines.append(f"| dense | 0 | {row['seconds']:.3f} | 1.00x | - | 1 |")
    else:
      lines.append(f"| adaspa | {row['sparsity']} | {row['seconds']:.3f} | "
                   f"{row['speedup']:.2f}x | {100 * row['search_overhead_share']:.1f}% | "
                   f"{row['recall']:.3f} |")
  calls = ["", "Single guided model calls, ms:", ""] + [
      f"- s={row['sparsity']}: " + ", ".join(f"{m} {t:.1f}" for m, t in row["call_ms"].items())
      for row in rows[1:]]
  table = "\n".join(lines + calls)
  base = records.write("sampling", "Sampling benchmark: dense vs AdaSpa", meta,
                       dict(results=rows), table, FLAGS.out)
  print(table)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
