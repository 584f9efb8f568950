"""Opening a VAE for latent training and sampling: a VAE run of train.py, or Wan2.1's weights.

    vae = open_vae("runs/vae_quickstart")      # its EMA weights and latent statistics
    vae = open_vae("Wan2.1_VAE.pth")            # or diffusers' .safetensors: dit.vae.WAN21

A VAE run's latent statistics (the per-channel mean and std of the posterior means over the
training data, what makes the DiT's latents zero-mean and unit-variance) are measured when its
training ends and written to latent_statistics.json beside its checkpoints;
`write_latent_statistics` measures them again (e.g. for an earlier checkpoint).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit.vae import coding
from dit.vae.config import WAN21, VAEConfig
from dit.vae.model import CausalVAE
from rundir.config_file import load_config
from training import checkpoints
from training.train_state import abstract_train_state

STATISTICS_FILE = "latent_statistics.json"


def is_weights_file(path: str) -> bool:
  return os.path.splitext(path)[1] in (".safetensors", ".pth", ".pt")


def vae_config_of(path: str) -> VAEConfig:
  """The VAEConfig of a VAE run (its config.json) or of Wan2.1's weights."""
  if is_weights_file(path):
    return WAN21
  config = load_config(path)
  if config.get("trains") != "vae":
    raise ValueError(f"{path} is not a VAE run (its config.trains is "
                     f"{config.get('trains', 'dit')!r}); train one with "
                     "configs/vae_quickstart.py, or give Wan2.1's VAE weights")
  return VAEConfig.from_dict(config.vae)


def open_vae(path: str, statistics=True, step: int | None = None) -> CausalVAE:
  """The VAE at `path`, on this process's first device: a VAE run's workdir (the EMA parameters
  of its checkpoint `step`, the newest when None) or a Wan2.1 weights file. Its latent
  statistics are its own (statistics=True: a VAE run's latent_statistics.json, Wan2.1's
  published ones), left unset for a VAE run (False), or the given (mean, std) per channel (what
  a latent DiT pinned; they replace Wan2.1's too)."""
  if is_weights_file(path):
    from weights.wan_vae import load_wan_vae  # noqa: PLC0415
    vae = load_wan_vae(path)
  else:
    if statistics is True:
      measured = read_latent_statistics(path)
      statistics = measured["mean"], measured["std"]
    vae = _restore(path, vae_config_of(path), step)
  if statistics is not True and statistics:
    mean, std = statistics
    channels = vae.config.latent_channels
    if len(mean) != channels or len(std) != channels:
      raise ValueError(f"latent statistics of {len(mean)} and {len(std)} channels for the VAE "
                       f"{path} of {channels}: give one mean and std per latent channel")
    vae.latents_mean.set_value(jnp.asarray(mean, jnp.float32))
    vae.latents_std.set_value(jnp.asarray(std, jnp.float32))
  return vae


def read_latent_statistics(path: str) -> dict:
  """A VAE run's latent_statistics.json: {"mean", "std", "videos", "step"}."""
  statistics = os.path.join(path, STATISTICS_FILE)
  if not os.path.exists(statistics):
    raise FileNotFoundError(f"{statistics} not found: the VAE run writes it when its training "
                            "ends (finish the run, or call rundir.open_vae."
                            "write_latent_statistics)")
  with open(statistics) as f:
    return json.load(f)


def open_latent_vae(config):
  """The VAE config.latents names (None in pixel space), after checking that the DiT takes its
  latents: model.in_channels its latent channels."""
  from configs.common import latent_statistics, latent_vae, latent_vae_step  # noqa: PLC0415
  path = latent_vae(config)
  if not path:
    return None
  if not os.path.exists(path):
    hint = ("download Wan2.1's VAE weights there" if is_weights_file(path) else
            f"train the VAE first (python train.py --config=configs/vae_quickstart.py "
            f"--workdir={path})")
    raise FileNotFoundError(f"config.latents.vae={path!r} does not exist: {hint}, or point it "
                            "at a VAE run or at Wan2.1's VAE weights")
  vae = open_vae(path, statistics=latent_statistics(config) or True,
                 step=latent_vae_step(config))
  if config.model.in_channels != vae.config.latent_channels:
    raise ValueError(f"model.in_channels={config.model.in_channels} but the VAE {path} has "
                     f"{vae.config.latent_channels} latent channels: make them agree")
  return vae


def vae_version(path: str, step: int | None = None) -> dict:
  """What identifies the weights open_vae(path, step=step) gives: a VAE run's checkpoint step
  (the newest when None), or a weights file's size (recorded with latent shards, so shards of
  other weights are refused)."""
  path = os.path.abspath(path)
  if is_weights_file(path):
    return {"vae": path, "vae_checkpoint": os.path.getsize(path)}
  return {"vae": path, "vae_checkpoint": step or max(checkpoints.saved_steps(path), default=None)}


def pin_latent_vae(config, workdir: str | None = None) -> None:
  """Records in config.latents the VAE run checkpoint (vae_step) and latent statistics
  (latents_mean, latents_std) a latent DiT run trains and decodes with: those its saved config
  names when it resumes, else the VAE run's newest checkpoint and latent_statistics.json. What
  the config sets already is kept. Process 0 decides for all. Wan2.1's weights (their
  statistics are built in) and pixel-space runs are left alone."""
  from configs.common import latent_statistics, latent_vae, latent_vae_step  # noqa: PLC0415
  path = latent_vae(config)
  if not path or is_weights_file(path) or not os.path.isdir(path):
    return
  step, statistics = latent_vae_step(config), latent_statistics(config)
  if step and statistics:
    return
  saved = _saved_latents(workdir, path)
  step = step or saved.get("vae_step") or max(checkpoints.saved_steps(path), default=0)
  if not statistics and saved.get("latents_std"):
    statistics = saved["latents_mean"], saved["latents_std"]
  if not statistics and step:
    measured = read_latent_statistics(path)
    if measured.get("step") not in (None, step):
      print(f"note: {path}'s latent statistics were measured at its step {measured['step']}; "
            f"the DiT uses its checkpoint {step} and normalizes its latents by them")
    statistics = measured["mean"], measured["std"]
  if jax.process_count() > 1:  # a VAE run that saves meanwhile must not split the processes
    step, statistics = _from_process_0(config.model.in_channels, step, statistics)
  with config.unlocked():
    config.latents.vae_step = step
    if statistics:
      config.latents.latents_mean = tuple(float(v) for v in statistics[0])
      config.latents.latents_std = tuple(float(v) for v in statistics[1])


def _from_process_0(channels: int, step: int, statistics) -> tuple:
  """(step, (mean, std) or None) as process 0 has them, sent bit for bit: float64 values
  travel as uint32 pairs, since JAX without x64 would round them."""
  from jax.experimental import multihost_utils  # noqa: PLC0415
  if statistics and not len(statistics[0]) == len(statistics[1]) == channels:
    raise ValueError(f"the VAE's latent statistics have {len(statistics[0])} channels but "
                     f"model.in_channels={channels}: make them agree")
  values = np.zeros(2 + 2 * channels, np.float64)
  values[0], values[1] = step, bool(statistics)
  if statistics:
    values[2:] = [*statistics[0], *statistics[1]]
  values = np.asarray(multihost_utils.broadcast_one_to_all(values.view(np.uint32)),
                      np.uint32).view(np.float64)
  if not values[1]:
    return int(values[0]), None
  return int(values[0]), (tuple(values[2:2 + channels]), tuple(values[2 + channels:]))


def _saved_latents(workdir: str | None, vae_path: str) -> dict:
  """The config.latents a saved DiT run in `workdir` trained with, if it trained (has
  checkpoints) with the VAE at `vae_path`; else {}."""
  if not workdir or not (os.path.exists(os.path.join(workdir, "config.json"))
          and checkpoints.saved_steps(workdir)):
    return {}
  latents = load_config(workdir).get("latents")
  if latents is None or latents.get("vae") != vae_path:
    return {}
  return latents.to_dict()


def _restore(workdir: str, vae_config: VAEConfig, step: int | None = None) -> CausalVAE:
  config = load_config(workdir)
  graphdef, abstract = abstract_train_state(vae_config, config.optim)
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
                          abstract)
  if step is not None and step not in checkpoints.saved_steps(workdir):
    raise FileNotFoundError(f"the VAE run {workdir} has no checkpoint {step} (it has "
                            f"{checkpoints.saved_steps(workdir)}): a latent DiT trained with "
                            "that one (its config.latents.vae_step) decodes only with it; "
                            "restore it, or train a new DiT (--config.latents.vae_step=0 takes "
                            "the newest)")
  params, model_state, _ = checkpoints.restore_params(workdir, abstract, use_ema=True, step=step)
  return nnx.merge(graphdef, params, model_state)


def pixel_shape(vae_config: VAEConfig, latent_shape) -> tuple[int, int, int, int]:
  """(T, H, W, C) of the videos whose latents are `latent_shape` (T', H', W')."""
  frames, height, width = latent_shape
  return (1 + vae_config.temporal_factor * (frames - 1), height * vae_config.spatial_factor,
          width * vae_config.spatial_factor, vae_config.in_channels)


def video_shape(config) -> tuple[int, int, int, int]:
  """(T, H, W, C) of the videos a DiT experiment makes: its train.video_shape and
  model.in_channels in pixel space, what its VAE decodes those latents to otherwise."""
  from configs.common import latent_vae  # noqa: PLC0415
  if not latent_vae(config):
    return (*config.train.video_shape, config.model.in_channels)
  return pixel_shape(vae_config_of(latent_vae(config)), config.train.video_shape)


def measure_latent_statistics(vae: CausalVAE, videos) -> dict:
  """Per latent channel, the mean and std of the posterior means of `videos` (an iterable of
  [B, T, H, W, C] batches)."""
  total, total_sq, count = 0.0, 0.0, 0
  for batch in videos:
    mean, _ = coding.encode(vae, jnp.asarray(batch))
    mean = np.asarray(mean, np.float64).reshape(-1, mean.shape[-1])
    total, total_sq, count = total + mean.sum(0), total_sq + (mean ** 2).sum(0), count + len(mean)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
  return {"mean": mean.tolist(), "std": std.tolist()}


def write_latent_statistics(workdir: str, vae: CausalVAE, source, num_videos: int = 256,
                            batch_size: int = 8, step: int | None = None,
                            write: bool = True) -> dict:
  """Measures the latent statistics on the first `num_videos` videos of `source` and writes
  them to <workdir>/latent_statistics.json (unless `write=False`: every process of a multi-host
  run measures, one writes); returns them."""
  count = min(num_videos, len(source))
  batches = (np.stack([source[i]["video"] for i in range(start, min(start + batch_size, count))])
             for start in range(0, count, batch_size))
  measured = dict(measure_latent_statistics(vae, batches), videos=count, step=step)
  if not write:
    return measured
  path = os.path.join(workdir, STATISTICS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(measured, f, indent=2)
  os.replace(path + ".tmp", path)
  return measured


def latent_encoder(vae: CausalVAE):
  """videos [B, T, H, W, C] in [-1, 1] -> the DiT's latents: normalized posterior means. Pure
  and jit-able (the VAE's weights are constants of it)."""
  graphdef, state = nnx.split(vae)

  def encode(videos):
    model = nnx.merge(graphdef, state)
    (mean, _), _ = model.encode(videos)
    return model.normalize(mean)

  return encode


def latent_normalizer(vae: CausalVAE):
  """Raw posterior means [B, T', H', W', Z] (latent shards) -> the DiT's latents. Pure and
  jit-able."""
  graphdef, state = nnx.split(vae)
  return lambda mean: nnx.merge(graphdef, state).normalize(mean)


def latent_decoder(vae: CausalVAE):
  """The DiT's latents [B, T', H', W', Z] -> videos [B, T, H, W, C] in [-1, 1], decoded in
  chunks (dit/vae/coding.py). Pure and jit-able."""
  graphdef, state = nnx.split(vae)

  def decode(latents):
    z = nnx.merge(graphdef, state).denormalize(latents.astype(jnp.float32))
    return coding.decode_in_chunks(graphdef, state, z, 1)

  return decode
