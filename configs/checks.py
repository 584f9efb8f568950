"""The checks of an experiment config: once per entry point (train.py, sample.py, python -m eval,
the benchmarks), after the command line's overrides, before any model is built or any step runs.
Each error says which field is wrong and what to set; code past this boundary trusts the config.

    model = validate_config(config)   # every section; returns the network's config: a
                                      # DiTConfig, or a VAEConfig when config.trains == "vae"
"""
import re

import jax
import ml_collections

from configs import common
from configs.stages import resolve_stages
from dit import attention as attention_lib
from dit.config import DiTConfig
from dit.vae.config import VAEConfig
from sharding import logical
from sharding import mesh as mesh_lib


def raise_if_any(section: str, errors: list[str]) -> None:
  if errors:
    raise ValueError(f"invalid {section} config:\n  " + "\n  ".join(errors))


def positive(section: str, config: ml_collections.ConfigDict, fields: tuple[str, ...]):
  return [f"{section}.{field}={config[field]} must be positive"
          for field in fields if not config[field] > 0]


# Every section an experiment has, with the builder that gives its fields (None: free-form, or
# checked field by field below).
SECTIONS = dict(model=None, flow=common.flow_config, optim=common.optim_config,
                sample=common.sample_config, train=common.train_config, data=None,
                text=common.text_config, eval=common.eval_config, mesh=None, sharding=None)


# A VAE experiment's sections (config.trains == "vae").
VAE_SECTIONS = dict(vae=common.vae_config, vae_loss=common.vae_loss_config,
                    optim=common.optim_config, train=common.train_config, data=None, mesh=None,
                    sharding=None)


def trains(config: ml_collections.ConfigDict) -> str:
  """What an experiment trains: config.trains, "dit" when a config has no such field."""
  return config.get("trains", "dit")


def schema_errors(config: ml_collections.ConfigDict) -> list[str]:
  """Sections and fields the config lacks (a config.json written by an older codebase, or a
  config file that dropped one): named, so the error says what to add."""
  sections = VAE_SECTIONS if trains(config) == "vae" else SECTIONS
  missing = [section for section in sections if section not in config]
  if missing:
    return [f"the config has no {missing} section(s): build them with configs/common.py"]
  errors = []
  for section, build in sections.items():
    if build is not None:
      errors += _missing_fields(section, config[section], build())
  return errors


def _missing_fields(path: str, config: ml_collections.ConfigDict,
                    defaults: ml_collections.ConfigDict) -> list[str]:
  missing = sorted(set(defaults.keys()) - set(config.keys()))
  errors = [f"{path} has no fields {missing}: add them (defaults in configs/common.py)"
            ] if missing else []
  for field in sorted(set(defaults.keys()) & set(config.keys())):
    if isinstance(defaults[field], ml_collections.ConfigDict):
      errors += _missing_fields(f"{path}.{field}", config[field], defaults[field])
  return errors


def validate_model_config(config: ml_collections.ConfigDict,
                          platform: str | None = None) -> DiTConfig:
  """config.model: the network's own checks (dit/config.py), and that its attention runs on
  `platform` (default: this machine's JAX backend); returns the DiTConfig."""
  model = DiTConfig.from_dict(config)
  platform = platform or jax.default_backend()
  errors = []
  if model.attention == "cudnn" and platform != "gpu":
    errors.append(f"model.attention='cudnn' runs on NVIDIA GPUs only and this machine's JAX "
                  f"backend is {platform!r}: set model.attention='auto' (sample.py and python "
                  "-m eval: --attention=auto)")
  if (model.sparse_pattern != "full" and platform == "tpu" and model.sparse_block % 128
      and attention_lib.pattern_implementation(model.attention, platform) == "block_sparse"):
    errors.append(f"model.sparse_block={model.sparse_block}: the TPU kernels take blocks of a "
                  "multiple of 128 tokens; set model.sparse_block=128")
  raise_if_any("model", errors)
  return model


def validate_flow_config(config: ml_collections.ConfigDict) -> None:
  """config.flow: dropout a probability, positive shift and timestep spread."""
  errors = positive("flow", config, ("shift", "logit_std"))
  if not 0 <= config.cond_dropout <= 1:
    errors.append(f"flow.cond_dropout={config.cond_dropout} must be a probability in [0, 1]")
  if config.shift_base_tokens < 0:
    errors.append(f"flow.shift_base_tokens={config.shift_base_tokens} must be >= 0 "
                  "(0 turns the resolution-dependent shift off)")
  levels = config.get("distill_timesteps", ())
  if not isinstance(levels, (tuple, list)) or not all(
      isinstance(t, (int, float)) and 0 < t <= 1 for t in levels):
    errors.append(f"flow.distill_timesteps={levels} must be noise levels in (0, 1], e.g. (1.0,)")
  if not 0.0 <= config.get("frame_timesteps", 0.0) <= 1.0:
    errors.append(f"flow.frame_timesteps={config.frame_timesteps} must be a probability in "
                  "[0, 1]")
  raise_if_any("flow", errors)


def validate_optim_config(config: ml_collections.ConfigDict) -> None:
  """config.optim: positive learning rate and clip, warmup within the decay."""
  errors = positive("optim", config, ("lr", "grad_clip", "decay_steps"))
  if not 0 <= config.warmup_steps < config.decay_steps:
    errors.append(f"optim.warmup_steps={config.warmup_steps} must be in [0, "
                  f"optim.decay_steps={config.decay_steps})")
  for field in ("b1", "b2", "final_lr_ratio"):
    if not 0 <= config[field] <= 1:
      errors.append(f"optim.{field}={config[field]} must be in [0, 1]")
  if config.weight_decay < 0:
    errors.append(f"optim.weight_decay={config.weight_decay} must be >= 0")
  raise_if_any("optim", errors)


def validate_sample_config(config: ml_collections.ConfigDict) -> None:
  """config.sample: a known sampler, at least one step, a positive shift if one is set, a
  guidance interval within [0, 1], and a valid sparse-attention schedule
  (diffusion/sparse_sampling.py)."""
  from diffusion.samplers import SAMPLERS, interval_errors  # noqa: PLC0415
  from diffusion.schedules import schedule_name_errors  # noqa: PLC0415
  from diffusion.sparse_sampling import sparse_config_errors  # noqa: PLC0415

  errors = positive("sample", config, ("num_steps",))
  if not isinstance(config.upscale, int) or config.upscale < 1:
    errors.append(f"sample.upscale={config.upscale} must be a positive integer")
  if config.sampler not in SAMPLERS:
    errors.append(f"sample.sampler={config.sampler!r}; choose one of {list(SAMPLERS)}")
  if config.shift is not None and not config.shift > 0:
    errors.append(f"sample.shift={config.shift} must be positive (or None: as in training)")
  errors += [f"sample.{error}" for error in interval_errors(config.guidance_interval)]
  errors += sparse_config_errors(config.sparse)
  errors += schedule_name_errors(config.schedule)
  if config.schedule and config.sparse.attention != "none":
    errors.append(f"sample.schedule={config.schedule!r} runs full attention; it cannot be combined "
                  f"with sample.sparse.attention={config.sparse.attention!r}")
  raise_if_any("sample", errors)


def validate_train_config(config: ml_collections.ConfigDict, patch_size=None) -> None:
  """config.train: positive sizes and intervals, videos that cut into whole patches (a DiT's
  `patch_size`; None: three sizes)."""
  errors = positive("train", config, ("batch_size", "num_steps", "grad_accum", "log_every",
                                      "checkpoint_every", "keep_checkpoints"))
  shape, patch = tuple(config.video_shape), tuple(patch_size or (1, 1, 1))
  if len(shape) != 3 or any(s < 1 for s in shape):
    errors.append(f"train.video_shape={shape} must be three positive sizes (T, H, W)")
  elif any(s % p for s, p in zip(shape, patch)):
    errors.append(f"train.video_shape={shape} (T, H, W) must be divisible by "
                  f"model.patch_size={patch}")
  if config.grad_accum > 0 and config.batch_size % config.grad_accum:
    errors.append(f"train.batch_size={config.batch_size} must be divisible by "
                  f"train.grad_accum={config.grad_accum}")
  if not 0 <= config.ema_decay < 1:
    errors.append(f"train.ema_decay={config.ema_decay} must be in [0, 1)")
  if config.sample_every < 0:
    errors.append(f"train.sample_every={config.sample_every} must be >= 0 (0: no samples)")
  raise_if_any("train", errors)


def validate_data_config(config: ml_collections.ConfigDict) -> None:
  from data.batching import BATCHINGS  # noqa: PLC0415  (data imports grain)
  from data.sources import SOURCES  # noqa: PLC0415

  errors = positive("data", config, ("num_threads",))
  if config.name not in SOURCES:
    errors.append(f"data.name={config.name!r}; choose one of {list(SOURCES)}")
  batching = config.get("batching", "fixed")
  if batching not in BATCHINGS:
    errors.append(f"data.batching={batching!r}; choose one of {list(BATCHINGS)}")
  elif batching == "buckets" and not config.tokens_per_device > 0:
    errors.append(f"data.batching='buckets' needs data.tokens_per_device > 0 (video tokens per "
                  f"device and step), got {config.tokens_per_device}")
  elif batching == "packing":
    errors += positive("data", config, ("max_slots",))  # row_tokens: validate_batching
  raise_if_any("data", errors)


def validate_batching(config: ml_collections.ConfigDict, model: DiTConfig) -> None:
  """What data.batching "buckets" or "packing" needs of the rest of the experiment."""
  batching = config.data.get("batching", "fixed")
  errors = []
  if batching != "fixed" and common.latent_vae(config):
    errors.append(f"data.batching={batching!r} trains in pixel space for now (latents of "
                  "varied shapes are not encoded yet): set data.batching='fixed' or train "
                  "without latents.vae")
  if batching != "fixed" and config.train.grad_accum != 1:
    errors.append(f"data.batching={batching!r} takes train.grad_accum=1 (buckets size each "
                  "batch by its tokens; packed rows average the loss per example over the "
                  "whole batch): raise data.tokens_per_device or train.batch_size instead")
  pairs = config.data.name == "reflow_pairs" or tuple(config.flow.get("distill_timesteps", ()))
  if batching != "fixed" and pairs:
    errors.append(f"reflow pairs and flow.distill_timesteps train with data.batching='fixed' "
                  f"(the batch's noise and the distillation levels do not reach "
                  f"{batching!r} batches): set data.batching='fixed'")
  if batching != "fixed" and config.flow.get("frame_timesteps", 0.0) > 0:
    errors.append(f"flow.frame_timesteps trains with data.batching='fixed' for now (packed rows "
                  f"take one noise level per example): set data.batching='fixed' or "
                  f"flow.frame_timesteps=0")
  if pairs and common.latent_vae(config):
    errors.append("reflow pairs are drawn in pixel space only so far: train without "
                  "latents.vae")
  if batching == "fixed" and (config.data.name == "mixture"
                              or len(config.data.kwargs.get("shapes") or ()) > 1):
    errors.append(f"data.name={config.data.name!r} gives examples of several shapes: set "
                  "data.batching='buckets' or 'packing' (with their sizes)")
  adaptive = config.sharding.get("sequence_parallel_plan", "static") == "adaptive"
  if batching == "packing" and not adaptive and not config.data.row_tokens > 0:
    errors.append(f"data.row_tokens={config.data.row_tokens} must be positive (video tokens "
                  "per row of data.batching='packing')")
  if batching == "packing" and model.sparse_pattern != "full":
    errors.append(f"model.sparse_pattern={model.sparse_pattern!r} is drawn on one video's "
                  "patch grid; data.batching='packing' needs 'full'")
  raise_if_any("data", errors)
  validate_sequence_parallel_plan(config, model)


def validate_sequence_parallel_plan(config: ml_collections.ConfigDict, model: DiTConfig) -> None:
  """config.sharding.sequence_parallel_plan and what "adaptive" needs of the rest."""
  from sharding.sp_cost import PUBLISHED  # noqa: PLC0415
  from data.planned_batches import PLANNERS  # noqa: PLC0415

  sharding = config.sharding
  plan = sharding.get("sequence_parallel_plan", "static")
  errors = []
  if plan not in ("static", "adaptive"):
    errors.append(f"sharding.sequence_parallel_plan={plan!r}; choose 'static' or 'adaptive'")
  if plan == "adaptive":
    if sharding.sp_hardware != "measure" and sharding.sp_hardware not in PUBLISHED:
      errors.append(f"sharding.sp_hardware={sharding.sp_hardware!r}; choose 'measure' or one "
                    f"of {sorted(PUBLISHED)}")
    if sharding.sp_planner not in PLANNERS:
      errors.append(f"sharding.sp_planner={sharding.sp_planner!r}; choose one of "
                    f"{list(PLANNERS)}")
    if sharding.sp_memory_gib < 0:
      errors.append(f"sharding.sp_memory_gib={sharding.sp_memory_gib} must be >= 0 (0: the "
                    "device's memory)")
    packing = config.data.get("batching", "fixed") == "packing"
    if packing and (config.data.tokens_per_device <= 0 or config.data.max_slots <= 0):
      errors.append("sharding.sequence_parallel_plan='adaptive' takes data.tokens_per_device "
                    "(video and text tokens a device holds) and data.max_slots (examples per device) > 0")
    mesh = dict(config.mesh)
    others = {axis: mesh.get(axis, 1) for axis in ("fsdp", "seq", "tensor")}
    if any(size != 1 for size in others.values()):
      errors.append(f"sharding.sequence_parallel_plan='adaptive' makes its own groups of "
                    f"devices and keeps the parameters whole on each: set mesh {others} to 1 "
                    "(every device on data)")
    if model.sequence_parallel != "none" or model.ulysses_degree:
      errors.append("sharding.sequence_parallel_plan='adaptive' picks each group's sequence "
                    "parallelism: leave model.sequence_parallel='none' and "
                    "model.ulysses_degree=0")
  raise_if_any("sharding", errors)


def validate_text_config(config: ml_collections.ConfigDict) -> None:
  from text_encoders.encoders import TEXT_ENCODERS  # noqa: PLC0415

  errors = positive("text", config, ("max_length", "vocab_size"))
  if config.encoder not in TEXT_ENCODERS:
    errors.append(f"text.encoder={config.encoder!r}; choose one of {list(TEXT_ENCODERS)}")
  raise_if_any("text", errors)


def validate_mesh_config(config: ml_collections.ConfigDict) -> None:
  """config.mesh and config.sharding: known mesh axes, sizes positive or -1, sound rules."""
  errors = []
  mesh = dict(config.mesh)
  unknown = sorted(set(mesh) - set(mesh_lib.MESH_AXES))
  if unknown:
    errors.append(f"mesh axes {unknown} are unknown; the axes are {list(mesh_lib.MESH_AXES)}")
  for axis, size in mesh.items():
    if not isinstance(size, int) or not (size == -1 or size > 0):
      errors.append(f"mesh.{axis}={size!r} must be a positive int, or -1 for the devices left")
  if sum(size == -1 for size in mesh.values()) > 1:
    errors.append("at most one mesh axis may be -1")
  errors += logical.check_rules(config.sharding.rules, mesh_lib.MESH_AXES)
  raise_if_any("mesh/sharding", errors)


def validate_eval_config(config: ml_collections.ConfigDict) -> None:
  """config.eval: known metrics, enough videos, I3D's shortest clip."""
  from eval.evaluate import METRICS  # noqa: PLC0415

  errors = positive("eval", config, ("num_videos", "batch_size", "feature_batch_size",
                                     "classifier_steps"))
  unknown = [m for m in config.metrics if m not in METRICS]
  if unknown:
    errors.append(f"eval.metrics has unknown {unknown}; choose from {list(METRICS)}")
  if config.num_videos < 2:
    errors.append(f"eval.num_videos={config.num_videos} must be at least 2 (the distances "
                  "compare sets)")
  if config.fvd_frames < 9:
    errors.append(f"eval.fvd_frames={config.fvd_frames} must be at least 9 (I3D's shortest "
                  "clip)")
  raise_if_any("eval", errors)


def validate_vae_loss_config(config: ml_collections.ConfigDict, vae: VAEConfig) -> None:
  """config.vae_loss: non-negative weights, something to reconstruct with, I3D layers, a
  discriminator for an adversarial weight."""
  from eval.i3d import FEATURE_LAYERS  # noqa: PLC0415

  errors = [f"vae_loss.{field}={config[field]} must be >= 0"
            for field in ("l1", "l2", "kl", "perceptual", "reconstructions", "adversarial",
                          "adversarial_start", "image_steps")
            if config[field] < 0]
  if config.adversarial > 0 and not vae.discriminator_channels:
    errors.append(f"vae_loss.adversarial={config.adversarial} needs a discriminator: set "
                  "vae.discriminator_channels (e.g. 32)")
  if not (config.l1 > 0 or config.l2 > 0 or config.perceptual > 0):
    errors.append("vae_loss.l1, l2 or perceptual must be positive: nothing else asks for a "
                  "reconstruction")
  unknown = [layer for layer in config.perceptual_layers if layer not in FEATURE_LAYERS]
  if unknown or not config.perceptual_layers:
    errors.append(f"vae_loss.perceptual_layers={tuple(config.perceptual_layers)}: choose one "
                  f"or more of I3D's {list(FEATURE_LAYERS)}")
  raise_if_any("vae_loss", errors)


def validate_vae_experiment(config: ml_collections.ConfigDict) -> VAEConfig:
  """A VAE experiment's sections; the videos must code whole (1 + 4k frames, sizes a multiple
  of the spatial factor, the VAE's channels). Returns the VAEConfig."""
  try:
    vae = VAEConfig.from_dict(config.vae)
  except ValueError as e:
    raise ValueError(str(e).replace("invalid VAE config", "invalid vae config")) from None
  validate_mesh_config(config)
  validate_optim_config(config.optim)
  validate_train_config(config.train)
  shape = (*config.train.video_shape, vae.in_channels)
  raise_if_any("train", [e.replace("video has", "train.video_shape has").replace(
      "video is", "train.video_shape is") for e in vae.video_shape_errors(shape)
      if "channels" not in e])
  validate_vae_loss_config(config.vae_loss, vae)
  if config.vae_loss.image_steps >= config.train.num_steps:
    raise_if_any("vae_loss", [
        f"vae_loss.image_steps={config.vae_loss.image_steps} leaves none of the "
        f"train.num_steps={config.train.num_steps} steps to videos: the VAE would never learn "
        "motion; make it smaller"])
  if vae.discriminator_channels:
    cell = 2 ** vae.discriminator_layers
    _, height, width = config.train.video_shape
    if height % cell or width % cell:
      raise_if_any("vae", [
          f"vae.discriminator_layers={vae.discriminator_layers} halves the frames that many "
          f"times, so train.video_shape's height and width must be multiples of {cell}, got "
          f"{height}x{width}: use fewer discriminator layers or another size"])
  validate_data_config(config.data)
  return vae


def validate_latents_config(config: ml_collections.ConfigDict) -> None:
  """config.latents (a DiT in a VAE's latent space): shards need a VAE; pinned statistics give
  a mean and a positive std per latent channel."""
  latents = config.get("latents")
  if latents is None:
    return
  errors = []
  if latents.get("shards") and not latents.vae:
    errors.append(f"latents.shards={latents.shards!r} needs latents.vae, the VAE they were "
                  "encoded with (or set --config.latents.shards= to train in pixel space)")
  mean, std = tuple(latents.get("latents_mean") or ()), tuple(latents.get("latents_std") or ())
  if len(mean) != len(std):  # their count is checked against the VAE's when it is opened
    errors.append(f"latents.latents_mean and latents_std give {len(mean)} and {len(std)} "
                  "values: give one of each per latent channel, or neither (the VAE run's are "
                  "taken)")
  if any(not v > 0 for v in std):
    errors.append(f"latents.latents_std={std} must be positive")
  if latents.get("vae_step", 0) < 0:
    errors.append(f"latents.vae_step={latents.vae_step} must be >= 0 (0: the newest)")
  raise_if_any("latents", errors)


def validate_config(config: ml_collections.ConfigDict) -> DiTConfig | VAEConfig:
  """Every section of an experiment config, and that its videos cut into whole patches (or
  code whole, for a VAE); returns the network's config (config.model as a DiTConfig, or
  config.vae as a VAEConfig), checked once here."""
  if trains(config) not in common.TRAINS:
    raise ValueError(f"config.trains={trains(config)!r}; choose one of {list(common.TRAINS)}")
  raise_if_any("experiment", schema_errors(config))
  if trains(config) == "vae":
    if config.get("stages"):
      raise ValueError("config.stages trains a DiT in stages; a VAE experiment has none (use "
                       "vae_loss.image_steps for images first)")
    return validate_vae_experiment(config)
  model = validate_model_config(config.model)
  validate_mesh_config(config)
  validate_text_config(config.text)
  validate_eval_config(config.eval)
  validate_latents_config(config)
  validate_lora_config(config)
  stages = resolve_stages(config)
  for stage in stages:
    try:
      validate_stage(stage.config, model)
    except ValueError as e:
      if len(stages) == 1:
        raise
      raise ValueError(f"stage {stage.index} ({stage.name!r}): {e}") from None
  return model


def validate_lora_config(config: ml_collections.ConfigDict) -> None:
  """config.lora, where there is one of rank > 0, with what LoRA training cannot combine."""
  if not common.uses_lora(config):
    return
  lora, errors = config.lora, []
  if not config.train.get("init_from"):
    errors.append("lora.rank > 0 fine-tunes a trained run: set train.init_from to its workdir")
  if not lora.alpha > 0:
    errors.append(f"lora.alpha={lora.alpha} must be positive")
  try:
    re.compile(lora.layers)
  except re.error as e:
    errors.append(f"lora.layers={lora.layers!r} is not a regular expression: {e}")
  if config.data.get("batching", "fixed") == "packing":
    errors.append("LoRA runs the model's __call__; data.batching='packing' runs DiT.packed: use "
                  "fixed or buckets")
  if config.get("stages"):
    errors.append("a LoRA run has no stages: drop config.stages")
  raise_if_any("lora", errors)


def validate_stage(config: ml_collections.ConfigDict, model: DiTConfig) -> None:
  """The sections a stage may change (configs/stages.py), as that stage runs them."""
  validate_flow_config(config.flow)
  validate_optim_config(config.optim)
  validate_sample_config(config.sample)
  validate_train_config(config.train, model.patch_size)
  validate_data_config(config.data)
  validate_batching(config, model)
