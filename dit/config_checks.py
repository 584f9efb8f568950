"""Checks that reject a bad config, saying which field is wrong and what to do, before any
model is built or any step runs. Each builder checks its own section (DiT the model config,
make_optimizer the optimizer config, ...); `validate_config` checks a whole experiment.
"""
import ml_collections

from dit import attention as attention_lib
from dit import sparsity
from sharding import logical, ring
from sharding import mesh as mesh_lib
from sharding import sequence_parallel as sequence_parallel_lib
from dit import remat as remat_lib
from dit import rope
from dit.samplers import SAMPLERS
from dit.sparse_sampling import validate_sparse_config

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
  if config.text_vocab_size < 0:
    errors.append(f"model.text_vocab_size={config.text_vocab_size} must be >= 0 (0: the text is "
                  "encoder states)")
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
  errors += _sparsity_errors(config)
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


def _sparsity_errors(config: ml_collections.ConfigDict) -> list[str]:
  errors = []
  if config.sparse_pattern not in sparsity.PATTERNS:
    errors.append(f"model.sparse_pattern={config.sparse_pattern!r}; choose one of "
                  f"{list(sparsity.PATTERNS)}")
  elif config.sparse_pattern != "full" and config.attention not in ("xla", "block_sparse"):
    errors.append(f"model.sparse_pattern={config.sparse_pattern!r} needs model.attention "
                  f"'block_sparse' (the kernel) or 'xla' (a dense mask), not "
                  f"{config.attention!r}")
  window = tuple(config.sparse_window)
  if len(window) != 3 or any(w is not None and int(w) < 0 for w in window):
    errors.append(f"model.sparse_window={window} must be three half-widths (dt, dh, dw) >= 0, "
                  "or None for a whole axis")
  block = config.sparse_block
  if block < 16 or block & (block - 1):
    errors.append(f"model.sparse_block={block} must be a power of two of at least 16")
  if config.sequence_parallel not in ("none",) + sequence_parallel_lib.KINDS:
    errors.append(f"model.sequence_parallel={config.sequence_parallel!r}; choose one of "
                  f"{['none', *sequence_parallel_lib.KINDS]}")
  elif config.sequence_parallel in ("ring", "usp") and (
      config.attention not in ring.ATTENTION_WITH_LSE or config.sparse_pattern != "full"):
    errors.append(f"model.sequence_parallel={config.sequence_parallel!r} runs model.attention "
                  f"in {list(ring.ATTENTION_WITH_LSE)} with sparse_pattern='full'; got "
                  f"{config.attention!r}, {config.sparse_pattern!r} (Ulysses takes any)")
  if config.ulysses_degree < 0:
    errors.append(f"model.ulysses_degree={config.ulysses_degree} must be >= 0 (0: automatic)")
  return errors


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
  """config.sample: a known sampler, at least one step, a positive shift if one is set, and a
  valid sparse-attention schedule (dit/sparse_sampling.py)."""
  errors = positive("sample", config, ("num_steps",))
  upscale = config.get("upscale", 1)
  if not isinstance(upscale, int) or upscale < 1:
    errors.append(f"sample.upscale={upscale} must be a positive integer")
  if config.sampler not in SAMPLERS:
    errors.append(f"sample.sampler={config.sampler!r}; choose one of {list(SAMPLERS)}")
  if config.get("shift") is not None and not config.shift > 0:
    errors.append(f"sample.shift={config.shift} must be positive (or None: as in training)")
  if config.get("sparse") is not None:
    errors += validate_sparse_config(config.sparse)
  raise_if_any("sample", errors)


def validate_train_config(config: ml_collections.ConfigDict, patch_size) -> None:
  """config.train: positive sizes and intervals, videos that cut into whole patches."""
  errors = positive("train", config, ("batch_size", "num_steps", "grad_accum", "log_every",
                                      "checkpoint_every", "keep_checkpoints"))
  shape, patch = tuple(config.video_shape), tuple(patch_size)
  if len(shape) != 3 or any(s % p for s, p in zip(shape, patch)):
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
  from data.sources import SOURCES  # Deferred: data imports grain.

  errors = positive("data", config, ("num_threads",))
  if config.name not in SOURCES:
    errors.append(f"data.name={config.name!r}; choose one of {list(SOURCES)}")
  raise_if_any("data", errors)


def validate_text_config(config: ml_collections.ConfigDict) -> None:
  from dit.text_encoder import TEXT_ENCODERS

  errors = positive("text", config, ("max_length", "vocab_size"))
  if config.encoder not in TEXT_ENCODERS:
    errors.append(f"text.encoder={config.encoder!r}; choose one of {list(TEXT_ENCODERS)}")
  raise_if_any("text", errors)


def validate_mesh_config(config: ml_collections.ConfigDict) -> None:
  """config.mesh and config.sharding: known mesh axes, sizes positive or -1, sound rules."""
  errors = []
  mesh = dict(config.get("mesh") or {})
  unknown = sorted(set(mesh) - set(mesh_lib.MESH_AXES))
  if unknown:
    errors.append(f"mesh axes {unknown} are unknown; the axes are {list(mesh_lib.MESH_AXES)}")
  for axis, size in mesh.items():
    if not isinstance(size, int) or not (size == -1 or size > 0):
      errors.append(f"mesh.{axis}={size!r} must be a positive int, or -1 for the devices left")
  if sum(size == -1 for size in mesh.values()) > 1:
    errors.append("at most one mesh axis may be -1")
  if config.get("sharding") is not None:
    errors += logical.check_rules(config.sharding.rules, mesh_lib.MESH_AXES)
  raise_if_any("mesh/sharding", errors)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Every section of an experiment config, and that its videos cut into whole patches."""
  validate_model_config(config.model)
  validate_mesh_config(config)
  for section, check in (("flow", validate_flow_config), ("optim", validate_optim_config),
                         ("sample", validate_sample_config), ("data", validate_data_config),
                         ("text", validate_text_config)):
    if section in config:
      check(config[section])
  if "train" in config:
    validate_train_config(config.train, config.model.patch_size)
