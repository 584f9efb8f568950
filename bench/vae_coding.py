"""Causal VAE coding benchmark: peak memory and time of decoding (and encoding) a video whole
against a chunk at a time (dit/vae/coding.py), as the video grows.

    python -m bench.vae_coding                        # the quick-start VAE, 17 / 65 / 257 frames
                                                      # of 64x64 (random weights: the cost of
                                                      # coding does not depend on them)
    python -m bench.vae_coding --vae=wan21 --size=480,832 --frames=81 --encode   # on a GPU

Memory is XLA's compiled estimate for one call: the temporary buffers (what grows when a decode
runs out of memory) and the output. Time is the median of --repeats calls after a compiling one
(--time=false: memory only, which needs no run). Results go to
bench/results/vae_coding-<device>-<time>.json and .md with the device, versions and shapes.
"""
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from bench import records
from configs.vae_quickstart import get_config
from dit.vae import coding
from dit.vae.config import WAN21, VAEConfig
from dit.vae.model import CausalVAE
from rundir.logs import quiet_library_logs

flags.DEFINE_enum("vae", "quickstart", ["quickstart", "wan21"], "the VAE's configuration")
flags.DEFINE_list("frames", ["17", "65", "257"], "video lengths (1 + 4k)")
flags.DEFINE_list("size", ["64", "64"], "H,W of the frames")
flags.DEFINE_integer("batch", 1, "videos per call")
flags.DEFINE_bool("encode", False, "also benchmark encoding")
flags.DEFINE_bool("time", True, "time the calls (else memory only: compile, no run)")
flags.DEFINE_integer("repeats", 3, "timed calls per variant after a compiling one (median)")
flags.DEFINE_string("dtype", "float32", "compute dtype")
flags.DEFINE_string("out", str(records.RESULTS), "results folder")
FLAGS = flags.FLAGS


def _measure(fn, x):
  compiled = jax.jit(fn).lower(x).compile()
  memory = compiled.memory_analysis()
  row = dict(temp_mib=memory.temp_size_in_bytes / 2**20,
             output_mib=memory.output_size_in_bytes / 2**20)
  if FLAGS.time:
    jax.block_until_ready(compiled(x))
    times = []
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(x))
      times.append(time.perf_counter() - start)
    row["seconds"] = statistics.median(times)
  return row


def main(argv):
  del argv
  quiet_library_logs()
  config = WAN21 if FLAGS.vae == "wan21" else VAEConfig.from_dict(get_config().vae)
  config = config.replace(dtype=FLAGS.dtype)
  vae = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(vae)
  state = jax.tree.map(lambda s: 0.02 * jax.random.normal(jax.random.key(0), s.shape, s.dtype),
                       state)
  height, width = (int(s) for s in FLAGS.size)
  rows = []
  for frames in (int(f) for f in FLAGS.frames):
    latent = config.latent_shape((frames, height, width))
    z = jax.random.normal(jax.random.key(1), (FLAGS.batch, *latent), jnp.float32)
    for variant, fn in (("chunked", lambda z: coding.decode_in_chunks(graphdef, state, z, 1)),
                        ("whole", lambda z: nnx.merge(graphdef, state).decode(z)[0])):
      rows.append(dict(op="decode", frames=frames, variant=variant, **_measure(fn, z)))
      print(rows[-1], flush=True)
    if FLAGS.encode:
      video = jax.random.uniform(jax.random.key(2), (FLAGS.batch, frames, height, width,
                                                     config.in_channels), minval=-1, maxval=1)
      for variant, fn in (("chunked", lambda v: coding.encode_in_chunks(graphdef, state, v, 1)),
                          ("whole", lambda v: nnx.merge(graphdef, state).encode(v)[0][0])):
        rows.append(dict(op="encode", frames=frames, variant=variant, **_measure(fn, video)))
        print(rows[-1], flush=True)
  write_results(config, (height, width), rows)


def write_results(config: VAEConfig, size, rows):
  meta = records.environment() | dict(
      vae=FLAGS.vae, base_channels=config.base_channels,
      channel_multipliers=list(config.channel_multipliers),
      latent_channels=config.latent_channels, dtype=config.dtype, size=list(size),
      batch=FLAGS.batch, repeats=FLAGS.repeats)
  lines = ["| op | frames | variant | temp MiB | output MiB | seconds |", "|---|---|---|---|---|---|"]
  for row in rows:
    seconds = f"{row['seconds']:.3f}" if "seconds" in row else "-"
    lines.append(f"| {row['op']} | {row['frames']} | {row['variant']} | {row['temp_mib']:.1f} | "
                 f"{row['output_mib']:.1f} | {seconds} |")
  table = "\n".join(lines)
  base = records.write("vae_coding", "Causal VAE coding: whole vs chunked", meta,
                       dict(results=rows), table, FLAGS.out)
  print(table)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
