"""Latent shards: a dataset's videos encoded once by a VAE, stored as ArrayRecord files with
their captions and labels, and read back as a data source.

    python -m data.encode_latents --config=configs/latent_quickstart.py --out=runs/latents
    python train.py --config=configs/latent_quickstart.py --workdir=runs/latent_dit \\
        --config.latents.shards=runs/latents

A folder of shards holds latents.json (what was encoded: the VAE and its checkpoint, the data
section and seed, the latent shape, the sizes) and latents-<k>-of-<n>.array_record, shard k
holding examples [k * shard_size, (k + 1) * shard_size) of the source in order. Each record is
a msgpack (flax.serialization) of the example with its video replaced by "latent": the VAE's
posterior mean, float32 [T', H', W', Z], not yet normalized (the DiT's step normalizes it with
the VAE's latent statistics, so re-measuring them does not make shards stale).
"""
import json
import os

import grain
import numpy as np
from flax import serialization

MANIFEST = "latents.json"
FORMAT = 1  # of the records and the manifest; bumped when either changes


def shard_name(index: int, count: int) -> str:
  return f"latents-{index:05d}-of-{count:05d}.array_record"


def shard_ranges(num_examples: int, shard_size: int) -> list[range]:
  """The example indices of each shard, in order."""
  return [range(start, min(start + shard_size, num_examples))
          for start in range(0, num_examples, shard_size)]


def to_record(example: dict, latent: np.ndarray) -> bytes:
  """An example of a data source, its video replaced by its latent, as bytes."""
  fields = {k: v for k, v in example.items() if k != "video"}
  return serialization.msgpack_serialize(
      dict(fields, latent=np.asarray(latent, np.float32)))


def from_record(record: bytes) -> dict:
  """A record as a data source's example: the latent is its "video", what the DiT consumes."""
  example = serialization.msgpack_restore(record)
  example["video"] = example.pop("latent")
  if "caption" in example:
    example["caption"] = str(example["caption"])
  return example


def read_manifest(folder: str) -> dict:
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{folder} holds no latent shards ({MANIFEST} is missing): encode a "
                            "dataset into it with python -m data.encode_latents --config=<the "
                            f"DiT's config> --out={folder}")
  return load_manifest(path, FORMAT, "encode the shards again into a new folder")


def load_manifest(path: str, expected_format: int, redo: str) -> dict:
  """A folder of shards' manifest (JSON), refused with `redo` (what to do) if its format is not
  the one this code reads."""
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") != expected_format:
    raise ValueError(f"{path} is format {manifest.get('format')}, this code reads format "
                     f"{expected_format}: {redo}")
  return manifest


def missing_shards(folder: str, manifest: dict, name=shard_name) -> list[str]:
  """The shards' file names (name(index, count)) the manifest lists that are not in folder."""
  count = manifest["shards"]
  return [name(k, count) for k in range(count)
          if not os.path.exists(os.path.join(folder, name(k, count)))]


class LatentShards:
  """A data source over a folder of latent shards: example i is the source's example i, its
  "video" the VAE's raw posterior mean [T', H', W', Z] (float32)."""

  def __init__(self, folder: str):
    self.folder = folder
    self.manifest = read_manifest(folder)
    missing = missing_shards(folder, self.manifest)
    if missing:
      raise FileNotFoundError(
          f"{folder} lacks {len(missing)} of its {self.manifest['shards']} shards (e.g. "
          f"{missing[0]}): its encoding did not finish; run python -m data.encode_latents "
          "again with the same arguments to finish it")
    count = self.manifest["shards"]
    paths = [os.path.join(folder, shard_name(k, count)) for k in range(count)]
    self._records = grain.sources.ArrayRecordDataSource(paths)
    if len(self._records) != self.manifest["examples"]:
      raise ValueError(f"{folder} holds {len(self._records)} records but its {MANIFEST} says "
                       f"{self.manifest['examples']}: encode it again into a new folder")

  def __len__(self) -> int:
    return len(self._records)

  def __repr__(self) -> str:
    return (f"LatentShards({self.folder!r}, n={len(self)}, "
            f"latent={tuple(self.manifest['latent_shape'])})")

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {self!r}")
    return from_record(self._records[index])


def claim_folder(out: str, manifest: dict, manifest_file: str = MANIFEST,
                 what: str = "latent shards") -> None:
  """Writes the manifest into a new folder, or checks an existing one's against it (a folder of
  shards of anything else is refused, and nothing in it changed)."""
  path = os.path.join(out, manifest_file)
  if os.path.exists(path):
    with open(path) as f:
      mismatches = manifest_mismatches(json.load(f), manifest)
    if mismatches:
      raise ValueError(f"{out} holds {what} of something else:\n  " + "\n  ".join(mismatches)
                       + "\nWrite into a new --out (or run with the arguments it was started "
                       "with). Nothing in it was changed.")
    return
  if os.path.isdir(out) and [n for n in os.listdir(out) if n != manifest_file + ".tmp"]:
    raise ValueError(f"{out} is not empty and holds no {manifest_file}: choose a new or empty "
                     "--out")
  os.makedirs(out, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(path + ".tmp", path)


def write_shard(path: str, records) -> None:
  """An ArrayRecord file of the records (bytes), written under a temporary name and renamed
  once complete, so a folder never holds a partial shard under a shard's name."""
  from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415
  temporary = path + ".tmp"
  writer = ArrayRecordWriter(temporary, "group_size:1")  # one record per chunk: random access
  try:
    for record in records:
      writer.write(record)
  finally:
    writer.close()
  os.replace(temporary, path)


def manifest_mismatches(manifest: dict, expected: dict) -> list[str]:
  """The fields of `expected` that the manifest records differently, as "field: in the shards
  -> expected" lines."""
  return [f"{k}: {manifest.get(k)!r} -> {v!r}" for k, v in expected.items()
          if _plain(manifest.get(k)) != _plain(v)]


def _plain(value):
  """JSON's view of a value (tuples are lists), so a manifest read back compares equal."""
  return json.loads(json.dumps(value))
