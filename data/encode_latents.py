"""Encodes a latent DiT experiment's dataset into latent shards once (data/latent_shards.py), so
training reads latents instead of running the VAE's encoder every step.

    python -m data.encode_latents --config=configs/latent_quickstart.py --out=runs/latents \\
        --num_examples=16384
    python train.py --config=configs/latent_quickstart.py --workdir=runs/latent_dit \\
        --config.latents.shards=runs/latents

The config's data section and seed give the videos (example i of the source, in order), its
latents.vae the VAE (Wan2.1's weights, or a VAE run's checkpoint latents.vae_step: its newest
when 0). Shard k holds examples
[k * shard_size, (k + 1) * shard_size). The result is deterministic: the same arguments give
the same bytes. It is resumable: each shard is written under a temporary name and renamed when
complete, so running the command again after an interruption encodes only the shards that are
missing; a folder that holds shards of anything else is refused, and nothing in it is changed.
"""
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from configs.checks import trains, validate_config
from configs.common import latent_vae, latent_vae_step
from data import latent_shards
from data.sources import make_source
from dit.vae import coding
from rundir.logs import quiet_library_logs
from rundir.open_vae import open_latent_vae, pin_latent_vae, pixel_shape, vae_version

FLAGS = flags.FLAGS


def shards_identity(config: ml_collections.ConfigDict) -> dict:
  """What a DiT experiment needs its latent shards to have been encoded from: its VAE (and that
  VAE's checkpoint), data section, seed and latent shape."""
  return dict(vae_version(latent_vae(config), latent_vae_step(config)),
              data={"name": config.data.name, "kwargs": config.data.kwargs.to_dict()},
              seed=config.seed,
              latent_shape=[*config.train.video_shape, config.model.in_channels])


def check_config(config: ml_collections.ConfigDict) -> None:
  validate_config(config)
  if trains(config) != "dit" or not latent_vae(config):
    raise ValueError("--config must be a DiT trained in a VAE's latent space (config.latents.vae "
                     "set), e.g. configs/latent_quickstart.py")


def encode_dataset(config: ml_collections.ConfigDict, out: str, num_examples: int = 0,
                   shard_size: int = 1024, batch_size: int = 16, tile: int = 0,
                   progress=print) -> dict:
  """Writes the shards of `config`'s first `num_examples` examples (0: all) into `out`, skipping
  shards already there; returns the manifest."""
  check_config(config)
  if shard_size < 1 or batch_size < 1 or tile < 0 or num_examples < 0:
    raise ValueError("--shard_size and --batch_size must be positive, --tile and "
                     "--num_examples at least 0")
  pin_latent_vae(config)  # one VAE checkpoint for the manifest and the encoding
  vae = open_latent_vae(config)
  factor = vae.config.spatial_factor
  overlap = coding.quarter_overlap(tile, factor)
  if tile and tile % factor:
    raise ValueError(f"--tile={tile} must be a multiple of the VAE's spatial factor {factor} "
                     f"(e.g. {max(factor, tile // factor * factor)})")
  source = make_source(config.data.name, seed=config.seed, **config.data.kwargs)
  count = min(num_examples or len(source), len(source))
  pixels = pixel_shape(vae.config, config.train.video_shape)
  if source[0]["video"].shape != pixels:
    raise ValueError(f"data {source!r} gives videos of shape {source[0]['video'].shape} but the "
                     f"VAE decodes train.video_shape={tuple(config.train.video_shape)} to "
                     f"{pixels}: make them agree")
  manifest = dict(shards_identity(config), format=latent_shards.FORMAT, examples=count,
                  shard_size=shard_size, shards=len(latent_shards.shard_ranges(count, shard_size)),
                  batch_size=batch_size, tile=tile, **({"overlap": overlap} if tile else {}))
  latent_shards.claim_folder(out, manifest)

  graphdef, state = nnx.split(vae)
  encode = jax.jit(lambda state, videos: coding.encode(nnx.merge(graphdef, state), videos,
                                                       tile=tile or None,
                                                       overlap=overlap)[0])
  ranges = latent_shards.shard_ranges(count, shard_size)
  todo = set(latent_shards.missing_shards(out, manifest))
  done, started = len(ranges) - len(todo), time.perf_counter()
  for k, indices in enumerate(ranges):
    name = latent_shards.shard_name(k, len(ranges))
    if name in todo:
      _write_shard(os.path.join(out, name), source, indices, encode, state, batch_size)
      done += 1
      progress(f"{name}: {len(indices)} examples; {done}/{len(ranges)} shards "
               f"({time.perf_counter() - started:.0f} s)")
  return manifest


def _write_shard(path: str, source, indices: range, encode, state, batch_size: int) -> None:
  def records():
    for start in range(0, len(indices), batch_size):
      examples = [source[i] for i in indices[start:start + batch_size]]
      videos = np.stack([e["video"] for e in examples])
      if len(examples) < batch_size:  # the last batch, padded: one compiled shape
        videos = np.concatenate([videos, np.repeat(videos[-1:], batch_size - len(videos), 0)])
      latents = np.asarray(encode(state, videos))
      for example, latent in zip(examples, latents):
        yield latent_shards.to_record(example, latent)

  latent_shards.write_shard(path, records())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  try:
    manifest = encode_dataset(FLAGS.config, FLAGS.out, FLAGS.num_examples, FLAGS.shard_size,
                              FLAGS.batch_size, FLAGS.tile)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"{manifest['examples']} examples in {manifest['shards']} shards under {FLAGS.out}; "
        f"train on them with --config.latents.shards={FLAGS.out}")


def define_flags() -> None:
  """The command's flags (defined only when run: --config is also train.py's)."""
  config_flags.DEFINE_config_file("config", None, "The latent DiT's config file (its data, "
                                  "seed, train.video_shape and latents.vae), e.g. "
                                  "configs/latent_quickstart.py.", lock_config=True)
  flags.DEFINE_string("out", None, "Folder of the shards (created; an unfinished one is "
                      "resumed).")
  flags.DEFINE_integer("num_examples", 0, "Examples to encode, the source's first ones (0: "
                       "all).")
  flags.DEFINE_integer("shard_size", 1024, "Examples per shard.")
  flags.DEFINE_integer("batch_size", 16, "Videos per call of the encoder.")
  flags.DEFINE_integer("tile", 0, "Encode in spatial tiles of this many pixels (0: whole "
                       "frames).")
  flags.mark_flags_as_required(["config", "out"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
