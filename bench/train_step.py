"""Training-step benchmark: step time, tokens/s and model FLOPs utilisation (MFU) of an experiment
config on the mesh it describes, with random inputs of the config's shapes.

    python -m bench.train_step       # on a GPU: the XL model, 16x64x64 videos = 16K tokens each
    python -m bench.train_step --config=configs/video_dit.py:size=XL \\
        --config.train.batch_size=2 --config.model.remat=dots_saveable --config.mesh.fsdp=-1 \\
        --config.mesh.data=1
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bench.train_step \\
        --config.mesh.seq=4 --config.model.sequence_parallel=usp

FLOPs are counted analytically (training/flops.py: every matmul, attention over the pairs its
pattern visits, 3x the forward for a step); MFU divides the model FLOP/s per device by the
device's dense bfloat16 peak (none on CPU). The data pipeline is not timed. Results go to
bench/results/train_step-<device>-<time>.json and .md with the device, versions and shapes.
"""
import pathlib
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bench import records
from configs.checks import validate_config
from data.random_batch import random_batch
from dit import attention as attention_lib
from dit.patchify import num_video_tokens
from rundir.logs import quiet_library_logs
from sharding.logical import use_mesh
from sharding.mesh import make_mesh
from training.flops import peak_flops, train_step_flops
from training.layout import (check_fits_mesh, global_batch, init_sharded_train_state,
                             jit_train_step, train_state_layout)
from training.optimizer import make_optimizer
from training.train_step import make_train_step

ON_ACCELERATOR = jax.default_backend() in ("gpu", "tpu")
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

config_flags.DEFINE_config_file(
    "config", str(CONFIGS / ("video_dit.py:size=XL" if ON_ACCELERATOR else "quickstart.py:tiny")),
    "Experiment config; its model, train.video_shape, train.batch_size and mesh are timed.",
    lock_config=True)
flags.DEFINE_integer("steps", 10 if ON_ACCELERATOR else 3, "timed steps (the median is reported)")
flags.DEFINE_integer("warmup", 2 if ON_ACCELERATOR else 1, "untimed steps first (compilation)")
flags.DEFINE_string("out", str(records.RESULTS), "results folder")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  quiet_library_logs()
  config = FLAGS.config
  model = validate_config(config)
  mesh = make_mesh(dict(config.mesh))
  check_fits_mesh(config, mesh)
  rules = config.sharding.rules
  with use_mesh(mesh, rules):
    graphdef, _, shardings = train_state_layout(model, config.optim, mesh, rules)
    state = init_sharded_train_state(model, config.optim, config.seed, shardings)
    step = jit_train_step(make_train_step(graphdef, make_optimizer(config.optim), config.flow,
                                          model.patch_size, grad_accum=config.train.grad_accum),
                          shardings, mesh)
    batch = global_batch(random_batch(config, seed=0), mesh)
    key = jax.random.key(0)
    times = []
    for i in range(FLAGS.warmup + FLAGS.steps):
      start = time.perf_counter()
      state, metrics = step(state, batch, jax.random.fold_in(key, i))
      loss = float(metrics["loss"])  # waits for the step
      if i >= FLAGS.warmup:
        times.append(time.perf_counter() - start)
  if not np.isfinite(loss):
    raise RuntimeError(f"the benchmark step gave a non-finite loss {loss}")

  seconds = statistics.median(times)
  video_tokens = num_video_tokens(config.train.video_shape, model.patch_size)
  text_length = config.text.max_length if model.uses_text else 0
  flops = train_step_flops(model, config.train.video_shape, config.train.batch_size,
                           text_length)
  device = jax.devices()[0]
  per_device = flops / seconds / jax.device_count()
  peak = peak_flops(device.device_kind)
  row = dict(step_ms=1e3 * seconds, tokens_per_s=config.train.batch_size * video_tokens / seconds,
             model_tflops_per_step=flops / 1e12, tflops_per_device=per_device / 1e12,
             mfu=None if peak is None else per_device / peak)
  memory = getattr(device, "memory_stats", lambda: None)() or {}
  if "peak_bytes_in_use" in memory:
    row["peak_gib_device0"] = memory["peak_bytes_in_use"] / 2**30
  write_results(config, mesh, video_tokens, text_length, row)


def write_results(config, mesh, video_tokens, text_length, row):
  meta = records.environment() | dict(
      processes=jax.process_count(), mesh=dict(mesh.shape), model=config.model.size,
      hidden=config.model.hidden_size, depth=config.model.depth, heads=config.model.num_heads,
      dtype=config.model.dtype, attention=config.model.attention,
      attention_runs=attention_lib.implementations_run(validate_config(config)),
      sparse_pattern=config.model.sparse_pattern,
      sequence_parallel=config.model.sequence_parallel, remat=config.model.remat,
      video_shape=list(config.train.video_shape), video_tokens=video_tokens,
      text_tokens=text_length, batch_size=config.train.batch_size,
      grad_accum=config.train.grad_accum, steps=FLAGS.steps)
  mfu = "n/a (no peak for this device)" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
  table = ("| step ms | tokens/s | model TFLOP/step | TFLOP/s per device | MFU |\n"
           "|---|---|---|---|---|\n"
           f"| {row['step_ms']:.1f} | {row['tokens_per_s']:.4g} | "
           f"{row['model_tflops_per_step']:.4g} | {row['tflops_per_device']:.4g} | {mfu} |")
  base = records.write("train_step", "Training-step benchmark", meta, dict(result=row), table,
                       FLAGS.out)
  print(table)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
