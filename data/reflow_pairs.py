"""Reflow pairs: (noise, video, caption) triples drawn from a trained run with its many-step
sampler, stored as ArrayRecord shards, and read back as a data source for reflow and
distillation (rectified flow, Liu et al. 2023; InstaFlow, Liu et al. 2024).

    python -m data.reflow_pairs --workdir=runs/quickstart --out=runs/quickstart_pairs \\
        --num_examples=2048
    python train.py --config=configs/reflow.py:teacher=runs/quickstart,pairs=runs/quickstart_pairs \\
        --workdir=runs/quickstart_reflow

Example i takes the caption (or label) of example i of the run's training data, noise made from
(--seed, i) alone, and the video the run's sampler (EMA weights, its config.sample: solver,
steps, guidance, shift; full attention) integrates that noise to. The result is deterministic
(the same arguments give the same bytes) and resumable; one process writes them: each shard is
written under a temporary name and renamed when complete, and running the command again writes
only the missing shards; a folder of pairs of anything else is refused, nothing in it changed.

pairs.json records the teacher (its workdir, checkpoint step and sample settings), the seed and
the sizes; a run trained on the pairs records the folder in its config.data.kwargs.
"""
import os
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx, serialization

from data import latent_shards
from data.sources import make_source
from diffusion.samplers import (guidance_interval, guided_velocity, integrate, sampling_shift,
                                sigma_schedule)
from dit.patchify import num_video_tokens

MANIFEST = "pairs.json"
FORMAT = 1


def shard_name(index: int, count: int) -> str:
  return f"pairs-{index:05d}-of-{count:05d}.array_record"


def pair_noise(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
  """The noise of pair `index`: float32 `shape`, from (seed, index) alone."""
  key = jax.random.fold_in(jax.random.key(seed), index)
  return np.asarray(jax.random.normal(key, shape, jnp.float32))


def teacher_of(run) -> dict:
  """What pairs drawn from an opened run (rundir.open_run.Run) depend on."""
  sample = run.config.sample
  shape = tuple(run.config.train.video_shape)
  return dict(teacher=os.path.abspath(run.workdir), teacher_step=run.step,
              num_steps=sample.num_steps, sampler=sample.sampler,
              guidance_scale=float(sample.guidance_scale),
              guidance_interval=list(guidance_interval(sample)),
              shift=sampling_shift(run.config, num_video_tokens(shape,
                                                               run.config.model.patch_size)),
              video_shape=[*shape, run.config.model.in_channels],
              data={"name": run.config.data.name, "kwargs": run.config.data.kwargs.to_dict()},
              data_seed=run.config.seed)


def write_pairs(run, out: str, num_examples: int, shard_size: int = 512, batch_size: int = 32,
                seed: int = 0, progress=print) -> dict:
  """Writes the pairs of the run's first `num_examples` training examples into `out`, skipping
  shards already there; returns the manifest."""
  if num_examples < 1 or shard_size < 1 or batch_size < 1:
    raise ValueError("--num_examples, --shard_size and --batch_size must be positive")
  config = run.config
  if config.get("latents", {}).get("vae"):
    raise ValueError(f"{run.workdir} is a latent DiT: reflow pairs are drawn in pixel space "
                     "only so far")
  if config.data.batching != "fixed":
    raise ValueError(f"{run.workdir} trained on data.batching={config.data.batching!r}: reflow "
                     "pairs are drawn at the one train.video_shape ('fixed' batching)")
  source = make_source(config.data.name, seed=config.seed, **config.data.kwargs)
  count = min(num_examples, len(source))
  ranges = latent_shards.shard_ranges(count, shard_size)
  manifest = dict(teacher_of(run), format=FORMAT, seed=seed, examples=count,
                  shard_size=shard_size, shards=len(ranges), batch_size=batch_size)
  latent_shards.claim_folder(out, manifest, MANIFEST, "reflow pairs")
  shape = tuple(manifest["video_shape"])
  sample = config.sample
  sigmas = sigma_schedule(sample.num_steps, manifest["shift"])
  sampler = run.sampler(prompts=["-"] * batch_size if config.model.conditioning == "text"
                        else None, labels=None if config.model.conditioning == "text"
                        else [0] * batch_size)

  @jax.jit
  def teacher(params, noise, cond):
    model = nnx.merge(run.graphdef, params, run.model_state)
    velocity = guided_velocity(model, cond, sample.guidance_scale, guidance_interval(sample))
    return integrate(velocity, noise, sigmas, sample.sampler)

  def records(indices):
    for start in range(0, len(indices), batch_size):
      chunk = list(indices[start:start + batch_size])
      examples = [source[i] for i in chunk]
      noise = np.stack([pair_noise(seed, i, shape) for i in chunk])
      prompts = ([str(e["caption"]) for e in examples] if config.model.conditioning == "text"
                 else [int(e["label"]) for e in examples])
      real = len(chunk)
      padded = batch_size - real  # the last batch, padded: one compiled shape
      _, cond = sampler.condition(prompts + prompts[-1:] * padded)
      noise_in = np.concatenate([noise, np.repeat(noise[-1:], padded, 0)])
      videos = np.asarray(teacher(run.params, noise_in, cond))[:real]
      for example, n, video in zip(examples, noise, videos):
        yield serialization.msgpack_serialize(dict(
            noise=n, video=video.astype(np.float32), caption=str(example.get("caption", "")),
            label=np.int32(example.get("label", 0))))

  todo = set(latent_shards.missing_shards(out, manifest, shard_name))
  done, started = len(ranges) - len(todo), time.perf_counter()
  for k, indices in enumerate(ranges):
    name = shard_name(k, len(ranges))
    if name in todo:
      latent_shards.write_shard(os.path.join(out, name), records(indices))
      done += 1
      progress(f"{name}: {len(indices)} pairs; {done}/{len(ranges)} shards "
               f"({time.perf_counter() - started:.0f} s)")
  return manifest


def with_real_data(config):
  """The config python -m eval judges a run by: for a run trained on reflow pairs, a copy whose
  data section is the data the pairs' teacher trained on (the real videos, and the digit
  classifier's data); any other config as it is."""
  if config.data.name != "reflow_pairs":
    return config
  data = config.data.to_dict()
  while data["name"] == "reflow_pairs":  # pairs of a student of pairs: back to real data
    data = ReflowPairs(data["kwargs"]["folder"]).manifest["data"]
  config = config.copy_and_resolve_references()
  config.data.update(name=data["name"])
  config.data.kwargs = data["kwargs"]
  return config


class ReflowPairs:
  """A data source over a folder of reflow pairs: example i is {"video": the teacher's sample,
  "noise": the noise it was drawn from, both float32 [T, H, W, C], "caption", "label"}.
  seed is unused (the pairs are fixed); the pipeline shuffles them with the run's seed."""

  def __init__(self, folder: str, seed: int = 0):
    del seed
    self.folder = folder
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{folder} holds no reflow pairs ({MANIFEST} is missing): draw "
                              "them with python -m data.reflow_pairs --workdir=<teacher run> "
                              f"--out={folder}")
    self.manifest = latent_shards.load_manifest(path, FORMAT,
                                                "draw the pairs again into a new folder")
    count = self.manifest["shards"]
    missing = latent_shards.missing_shards(folder, self.manifest, shard_name)
    if missing:
      raise FileNotFoundError(f"{folder} lacks {len(missing)} of its {count} shards (e.g. "
                              f"{missing[0]}): run python -m data.reflow_pairs again with the "
                              "same arguments to finish it")
    self._records = grain.sources.ArrayRecordDataSource(
        [os.path.join(folder, shard_name(k, count)) for k in range(count)])

  def __len__(self) -> int:
    return len(self._records)

  def __repr__(self) -> str:
    return f"ReflowPairs({self.folder!r}, n={len(self)}, teacher={self.manifest['teacher']!r})"

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {self!r}")
    example = serialization.msgpack_restore(self._records[index])
    example["caption"] = str(example["caption"])
    return example


def main(argv):
  from rundir.logs import quiet_library_logs  # noqa: PLC0415
  from rundir.open_run import open_run  # noqa: PLC0415

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  FLAGS = flags.FLAGS
  try:
    with open_run(FLAGS.workdir, step=FLAGS.step) as run:
      manifest = write_pairs(run, FLAGS.out, FLAGS.num_examples, FLAGS.shard_size,
                             FLAGS.batch_size, FLAGS.seed)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"{manifest['examples']} pairs of {manifest['teacher']} (step "
        f"{manifest['teacher_step']}, {manifest['num_steps']} {manifest['sampler']} steps) in "
        f"{manifest['shards']} shards under {FLAGS.out}")


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The teacher: a train.py run (its EMA weights).")
  flags.DEFINE_integer("step", None, "The teacher's checkpoint (default: the latest).")
  flags.DEFINE_string("out", None, "Folder of the pairs (created; an unfinished one is "
                      "resumed).")
  flags.DEFINE_integer("num_examples", 2048, "Pairs to draw, for the first training examples' "
                       "captions.")
  flags.DEFINE_integer("shard_size", 512, "Pairs per shard.")
  flags.DEFINE_integer("batch_size", 32, "Videos per call of the teacher's sampler.")
  flags.DEFINE_integer("seed", 0, "Seed of the noise.")
  flags.mark_flags_as_required(["workdir", "out"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
