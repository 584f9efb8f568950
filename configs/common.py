"""Helpers shared by the experiment files in configs/ (big_vision style)."""
import ml_collections

from sharding.logical import DEFAULT_RULES


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'size=B,runlocal' -> ConfigDict(size='B', runlocal=True), typed by the defaults.

  A bare name is a flag set to True; an unknown key is an error that lists the known ones.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config variant {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      truth = {"": True, "true": True, "1": True, "false": False, "0": False}
      if value.lower() not in truth:
        raise ValueError(f"config variant {key}={value!r} must be true or false")
      parsed[key] = truth[value.lower()]
    elif value == "":
      raise ValueError(f"config variant {key!r} needs a value, as in {key}=...")
    else:
      try:
        parsed[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config variant {key}={value!r} must be a "
                         f"{type(default).__name__}") from None
  return parsed


def data_config(name: str = "moving_digits", **kwargs) -> ml_collections.ConfigDict:
  """config.data: a source from data.sources.SOURCES by name, and its keyword arguments."""
  return ml_collections.ConfigDict(dict(name=name, kwargs=kwargs, num_threads=2))


def text_config(**overrides) -> ml_collections.ConfigDict:
  """config.text: the caption encoder (dit.text_encoder) for conditioning="text"."""
  config = ml_collections.ConfigDict(dict(encoder="minilm", max_length=16, vocab_size=4096))
  config.update(overrides)
  return config


def train_config(**overrides) -> ml_collections.ConfigDict:
  """config.train: the loop of train.py."""
  config = ml_collections.ConfigDict(dict(
      batch_size=64,            # global, over all processes and microbatches
      grad_accum=1,             # microbatches per step, for batches larger than memory
      num_steps=200_000,
      video_shape=(16, 32, 32),  # (T, H, W) of the model's input (C = model.in_channels)
      ema_decay=0.9999,
      log_every=100,
      checkpoint_every=2000,
      keep_checkpoints=3,
      sample_every=10_000,      # 0: no samples during training
      sample_prompts=("the digit 0 moves up",),
      sample_labels=(0,),
  ))
  config.update(overrides)
  return config


def eval_config(**overrides) -> ml_collections.ConfigDict:
  """config.eval: what python -m eval computes (eval/evaluate.py)."""
  config = ml_collections.ConfigDict(dict(
      num_videos=256,          # generated videos, compared with as many real ones
      batch_size=32,           # videos sampled per call of the compiled sampler
      seed=0,                  # the sampling noise and the draw of real videos
      # fvd: I3D (Kinetics-400) Frechet distance; fid: InceptionV3 over frames (needs
      # inception_weights); digits: the quick-start classifier's accuracies and distances
      # (moving_digits only). A metric that cannot run is skipped and says why.
      metrics=("fvd", "fid", "digits"),
      fvd_frames=16,           # clip length for I3D: longer videos are cut, shorter repeat frames
      inception_weights="",    # FID's InceptionV3 weights (.pth, .safetensors, .npz); "": no FID
      feature_batch_size=8,    # videos (I3D) or 8x frames (Inception) per feature batch
      classifier_steps=1000,   # training steps of the digit classifier (cached in the workdir)
  ))
  config.update(overrides)
  return config


def mesh_config(**sizes) -> ml_collections.ConfigDict:
  """config.mesh: devices per mesh axis (sharding/mesh.py); -1 takes the devices left over.

  data: data parallel; fsdp: data parallel with parameters, gradients, optimizer state and EMA
  sharded (FSDP); seq: each video's tokens split (model.sequence_parallel picks Ulysses, ring or
  USP for attention); tensor: the MLP and attention heads split (by the sharding rules).
  """
  config = ml_collections.ConfigDict(dict(data=-1, fsdp=1, seq=1, tensor=1))
  config.update(sizes)
  return config


def sharding_config() -> ml_collections.ConfigDict:
  """config.sharding: the rules from logical axis names to mesh axes (sharding/logical.py)."""
  return ml_collections.ConfigDict(dict(rules=DEFAULT_RULES))
