"""Block-sparse attention benchmark: checks correctness, then times side by side cuDNN attention,
XLA attention and our Pallas kernel at several densities, forward and forward+backward.

    python -m bench.attention                      # on a GPU: B=1, H=24, D=128, L=16K/32K/64K
    python -m bench.attention --lengths=4096 --densities=1.0,0.1 --kernel_configs=128:64:4:3

Patterns are random with the same number of key blocks in every row (density x nK, at least
one), fresh per head, defined on 128-token blocks. A kernel config
"fwd_q:fwd_k:bwd_q:bwd_k:warps:stages" runs the same pattern on forward and backward tiles that
divide 128 (sparse_attention's forward_blocks and backward_blocks), with the given warps and
software-pipelining stages (0: the default). TFLOP/s count the blocks visited (dense implementations:
all of them); forward+backward counts 3.5x the forward (the backward's five matmuls, as in the
FlashAttention papers). Speedups are over cuDNN's dense attention at the same length and mode.

On a machine without a GPU it runs small shapes with the kernels interpreted, so it always runs
(those times say nothing about speed). Results go to bench/results/attention-<device>-<time>.json
and .md, with the device, versions and shapes.
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bench import records
from kernels.block_sparse_attention import sparse_attention
from kernels.block_tables import PatternTables
from kernels.reference import block_sparse_attention_reference
from rundir.logs import quiet_library_logs

ON_GPU = jax.default_backend() == "gpu"
PATTERN_BLOCK = 128

flags.DEFINE_list("lengths", ["16384", "32768", "65536"] if ON_GPU else ["1024"],
                  "sequence lengths L (queries = keys)")
flags.DEFINE_list("densities", ["1.0", "0.5", "0.2", "0.1"], "fractions of key blocks per row")
flags.DEFINE_integer("batch", 1, "B")
flags.DEFINE_integer("heads", 24 if ON_GPU else 2, "H")
flags.DEFINE_integer("head_dim", 128 if ON_GPU else 64, "D")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16", "float32"], "q, k, v dtype")
flags.DEFINE_list("modes", ["fwd", "fwd_bwd"], "fwd and/or fwd_bwd")
flags.DEFINE_list("impls", ["cudnn", "xla", "block_sparse"], "implementations to time")
flags.DEFINE_list("kernel_configs",
                  ["128:128:128:128:8:2", "128:64:64:128:4:3", "128:128:64:64:4:2"] if ON_GPU
                  else ["64:64:64:64:0:0"],
                  "our kernel's fwd_q:fwd_k:bwd_q:bwd_k:num_warps:num_stages (0: the default)")
flags.DEFINE_integer("iters", 20 if ON_GPU else 2, "timed calls (the median is reported)")
flags.DEFINE_integer("warmup", 3 if ON_GPU else 1, "untimed calls first")
flags.DEFINE_float("xla_memory_gb", 20.0, "skip XLA where its float32 logits need more")
flags.DEFINE_integer("seed", 0, "random inputs and patterns")
flags.DEFINE_string("out", str(records.RESULTS), "results folder")
FLAGS = flags.FLAGS


def random_pattern(rng, heads, num_blocks, density):
  """bool [1, H, n, n]: each row keeps round(density * n) >= 1 random key blocks."""
  keep = max(1, round(density * num_blocks))
  scores = rng.random((1, heads, num_blocks, num_blocks))
  threshold = np.sort(scores, axis=-1)[..., -keep][..., None]
  return scores >= threshold


def parse_config(text):
  fwd_q, fwd_k, bwd_q, bwd_k, warps, stages = (int(x) for x in text.split(":"))
  return dict(forward_blocks=(fwd_q, fwd_k), backward_blocks=(bwd_q, bwd_k),
              num_warps=warps or None, num_stages=stages or None)


def make_kernel(mask, tuning):
  pattern = PatternTables.from_mask(mask, block_q=PATTERN_BLOCK, block_k=PATTERN_BLOCK)
  return lambda q, k, v: sparse_attention(q, k, v, pattern, **tuning), pattern


def dense(implementation):
  return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=implementation)


def with_backward(attention):
  """(q, k, v, d_out) -> (dq, dk, dv): the forward and the backward."""
  def run(q, k, v, d_out):
    _, pullback = jax.vjp(attention, q, k, v)
    return pullback(d_out)
  return run


def median_ms(fn, args):
  for _ in range(FLAGS.warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def check_correctness(rng, dtype):
  """Kernel vs the float32 reference at a small shape: forward and gradients, every config."""
  length, heads, dim = 1024 if ON_GPU else 256, 4, FLAGS.head_dim
  keys = jax.random.split(jax.random.key(FLAGS.seed), 4)
  q, k, v, d_out = (jax.random.normal(x, (1, length, heads, dim), jnp.float32).astype(dtype)
                    for x in keys)
  mask = random_pattern(rng, heads, length // PATTERN_BLOCK, 0.3)
  mask[0, 0, 1] = False  # an empty row
  rows = []
  for text in FLAGS.kernel_configs:
    config = parse_config(text)
    kernel, pattern = make_kernel(mask, config)
    blocks = dict(block_q=pattern.block_q, block_k=pattern.block_k)
    reference = lambda q, k, v: block_sparse_attention_reference(  # noqa: E731
        q, k, v, pattern.kv_indices, pattern.kv_counts, **blocks)[0]
    got = jax.jit(with_backward(kernel))(q, k, v, d_out)
    want = jax.jit(with_backward(reference))(q, k, v, d_out)
    errors = dict(out=relative_error(jax.jit(kernel)(q, k, v), reference(q, k, v)))
    errors.update({name: relative_error(g, w) for name, g, w in zip(("dq", "dk", "dv"), got,
                                                                       want)})
    rows.append(dict(config=text, **errors))
    print(f"correctness {text}: " + ", ".join(f"{n} {e:.2e}" for n, e in errors.items()))
  bound = 2e-2 if dtype != jnp.float32 else 1e-4
  if any(e > bound for row in rows for n, e in row.items() if n != "config"):
    raise SystemExit(f"correctness check failed (relative error above {bound}); not timing")
  return rows


def attention_flops(batch, heads, pairs, block_q, block_k, dim, mode):
  forward = 4.0 * batch * heads * pairs * block_q * block_k * dim
  return forward * (3.5 if mode == "fwd_bwd" else 1.0)


def main(argv):
  del argv
  quiet_library_logs()
  dtype = jnp.dtype(FLAGS.dtype)
  rng = np.random.default_rng(FLAGS.seed)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}); jax {jax.__version__}")
  checks = check_correctness(rng, dtype)
  rows = []
  for length in (int(x) for x in FLAGS.lengths):
    if length % PATTERN_BLOCK:
      raise SystemExit(f"--lengths: {length} is not a multiple of {PATTERN_BLOCK}")
    shape = (FLAGS.batch, length, FLAGS.heads, FLAGS.head_dim)
    keys = jax.random.split(jax.random.key(FLAGS.seed + length), 4)
    q, k, v, d_out = (jax.random.normal(x, shape, jnp.float32).astype(dtype) for x in keys)
    dense_pairs = (length // PATTERN_BLOCK) ** 2
    for mode in FLAGS.modes:
      args = (q, k, v) if mode == "fwd" else (q, k, v, d_out)
      baseline = None
      for impl in ("cudnn", "xla"):
        if impl not in FLAGS.impls:
          continue
        logits_gb = 4 * FLAGS.batch * FLAGS.heads * length**2 / 1e9
        if impl == "cudnn" and not ON_GPU:
          rows.append(dict(length=length, mode=mode, impl=impl, skipped="needs an NVIDIA GPU"))
          continue
        if impl == "xla" and logits_gb > FLAGS.xla_memory_gb:
          rows.append(dict(length=length, mode=mode, impl=impl,
                           skipped=f"logits need {logits_gb:.0f} GB"))
          continue
        fn = dense(impl) if mode == "fwd" else with_backward(dense(impl))
        ms = median_ms(jax.jit(fn), args)
        flops = attention_flops(FLAGS.batch, FLAGS.heads, dense_pairs, PATTERN_BLOCK,
                                PATTERN_BLOCK, FLAGS.head_dim, mode)
        rows.append(dict(length=length, mode=mode, impl=impl, density=1.0, visited=1.0, ms=ms,
                         tflops=flops / ms / 1e9))
        baseline = ms if impl == "cudnn" else baseline
      if "block_sparse" not in FLAGS.impls:
        continue
      for density in (float(x) for x in FLAGS.densities):
        mask = random_pattern(rng, FLAGS.heads, length // PATTERN_BLOCK, density)
        for text in FLAGS.kernel_configs:
          kernel, pattern = make_kernel(mask, parse_config(text))
          fn = kernel if mode == "fwd" else with_backward(kernel)
          ms = median_ms(jax.jit(fn), args)
          pairs = int(pattern.kv_counts.sum()) / FLAGS.heads
          flops = attention_flops(FLAGS.batch, FLAGS.heads, pairs, pattern.block_q,
                                  pattern.block_k, FLAGS.head_dim, mode)
          rows.append(dict(length=length, mode=mode, impl="block_sparse", config=text,
                           density=density, visited=float(mask.mean()), ms=ms, tflops=flops / ms / 1e9,
                           speedup_vs_cudnn=None if baseline is None else baseline / ms))
        print(f"L={length} {mode} density {density}: done")
  write_results(dtype, checks, rows)


def format_table(rows):
  lines = ["| L | mode | impl | config | density (visited) | ms | TFLOP/s | vs cuDNN |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "skipped" in r:
      lines.append(f"| {r['length']} | {r['mode']} | {r['impl']} | | | skipped: {r['skipped']}"
                   " | | |")
      continue
    speedup = r.get("speedup_vs_cudnn")
    lines.append(f"| {r['length']} | {r['mode']} | {r['impl']} | {r.get('config', '')} | "
                 f"{r['density']:.2f} ({r['visited']:.3f}) | {r['ms']:.3f} | {r['tflops']:.3g} | "
                 f"{'' if speedup is None else f'{speedup:.2f}x'} |")
  return "\n".join(lines)


def write_results(dtype, checks, rows):
  meta = records.environment() | dict(
      interpreted=not ON_GPU, lowering="pallas triton" if ON_GPU else "pallas interpreter (CPU)",
      batch=FLAGS.batch, heads=FLAGS.heads, head_dim=FLAGS.head_dim, dtype=dtype.name,
      pattern_block=PATTERN_BLOCK, iters=FLAGS.iters)
  table = format_table(rows)
  checks_text = "\n".join(f"- {c}" for c in checks)
  base = records.write("attention", "Attention benchmark", meta,
                       dict(correctness=checks, rows=rows),
                       "Correctness (relative error vs float32 reference):\n"
                       f"{checks_text}\n\n{table}", FLAGS.out)
  print(table)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
