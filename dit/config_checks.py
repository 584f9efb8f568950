"""Checks that reject a bad config, saying which field is wrong and what to do, before any
model is built or any step runs. Each builder checks its own section (DiT the model config,
make_optimizer the optimizer config, ...); `validate_config` checks a whole experiment.
"""
import ml_collections

from dit import attention as attention_lib
from dit import remat as remat_lib
from dit import rope
from dit.samplers import SAMPLERS

CONDITIONINGS = ("text", "label")
DTYPES = ("float32", "bfloat16", "float16")


def raise_if_any(section: str, errors: list[str]) -> None:
  if errors:
    raise ValueError(f"invalid {section} config:\n  " + "\n  ".join(errors))


def positive(section: str, config: ml_collections.ConfigDict, fields: tuple[str, ...]):
  return [f"{section}.{field}={config[field]} must be positive"
          for field in fields if not config[field] > 0]


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """config.model: sizes, heads, RoPE split, attention and remat names, dtypes, patch size."""
  raise_if_any("model", positive("model", config, (
      "hidden_size", "num_heads", "depth", "in_channels", "text_dim", "num_classes",
      "mlp_ratio", "rope_theta")))
  errors = []
  if config.hidden_size % config.num_heads:
    errors.append(f"model.hidden_size={config.hidden_size} is not divisible by "
                  f"model.num_heads={config.num_heads}")
  else:
    head_dim = config.hidden_size // config.num_heads
    if head_dim % 2 or min(rope.rope_axes_dims(head_dim)) < 2:
      errors.append(f"head dimension {head_dim} (hidden_size / num_heads) must be even and at "
                    "least 6 for the 3D RoPE")
  if not 0 <= config.dual_stream_depth <= config.depth:
    errors.append(f"model.dual_stream_depth={config.dual_stream_depth} must be between 0 and "
                  f"model.depth={config.depth}")
  if config.attention not in attention_lib.attention_implementations():
    errors.append(f"model.attention={config.attention!r} is not an attention implementation; "
                  f"choose one of {attention_lib.attention_implementations()}")
  if config.remat not in remat_lib.REMAT_POLICIES:
    errors.append(f"model.remat={config.remat!r} is not a remat policy; choose one of "
                  f"{list(remat_lib.REMAT_POLICIES)}")
  if config.conditioning not in CONDITIONINGS:
    errors.append(f"model.conditioning={config.conditioning!r}; choose one of "
                  f"{list(CONDITIONINGS)}")
  for field in ("dtype", "param_dtype"):
    if config[field] not in DTYPES:
      errors.append(f"model.{field}={config[field]!r}; choose one of {list(DTYPES)}")
  if len(config.patch_size) != 3 or any(int(p) < 1 for p in config.patch_size):
    errors.append(f"model.patch_size={tuple(config.patch_size)} must be three positive ints "
                  "(pt, ph, pw)")
  raise_if_any("model", errors)


def validate_flow_config(config: ml_collections.ConfigDict) -> None:
  """config.flow: dropout a probability, positive shift and timestep spread."""
  errors = positive("flow", config, ("shift", "logit_std"))
  if not 0 <= config.cond_dropout <= 1:
    errors.append(f"flow.cond_dropout={config.cond_dropout} must be a probability in [0, 1]")
  if config.shift_base_tokens < 0:
    errors.append(f"flow.shift_base_tokens={config.shift_base_tokens} must be >= 0 "
                  "(0 turns the resolution-dependent shift off)")
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
  """config.sample: a known sampler, at least one step, a positive shift if one is set."""
  errors = positive("sample", config, ("num_steps",))
  if config.sampler not in SAMPLERS:
    errors.append(f"sample.sampler={config.sampler!r}; choose one of {list(SAMPLERS)}")
  if config.get("shift") is not None and not config.shift > 0:
    errors.append(f"sample.shift={config.shift} must be positive (or None: as in training)")
  raise_if_any("sample", errors)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Every section of an experiment config, and that its videos cut into whole patches."""
  validate_model_config(config.model)
  for section, check in (("flow", validate_flow_config), ("optim", validate_optim_config),
                         ("sample", validate_sample_config)):
    if section in config:
      check(config[section])
  if "train" in config:
    shape, patch = tuple(config.train.video_shape), tuple(config.model.patch_size)
    if len(shape) != 3 or any(s % p for s, p in zip(shape, patch)):
      raise ValueError(f"train.video_shape={shape} (T, H, W) must be divisible by "
                       f"model.patch_size={patch}")
    raise_if_any("train", positive("train", config.train, ("batch_size", "num_steps")))
