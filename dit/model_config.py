"""Model sizes and the checks that reject a bad model config before anything is built.

A model config is an ml_collections.ConfigDict (config.model in an experiment file); the sizes
here are the S/B/L/XL classes of DiT, a tiny quick-start model and a 7B model at the scale of
Seaweed-7B. `python -m dit.count_params` prints the parameter count of each.
"""
import ml_collections

from dit import attention as attention_lib
from dit import remat as remat_lib
from dit import rope

# Only what differs between sizes; everything else comes from `model_config`'s defaults.
MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=4, num_heads=4, dual_stream_depth=2),
    "S": dict(hidden_size=384, depth=12, num_heads=6, dual_stream_depth=4),
    "B": dict(hidden_size=768, depth=12, num_heads=12, dual_stream_depth=4),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, dual_stream_depth=8),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16, dual_stream_depth=8),
    # 7B: head dim 128, SwiGLU width 8192, the first 9 of 32 blocks dual-stream.
    "7B": dict(hidden_size=3072, depth=32, num_heads=24, dual_stream_depth=9,
               text_dim=4096),
}

CONDITIONINGS = ("text", "label")
DTYPES = ("float32", "bfloat16", "float16")


def model_config(size: str = "B", **overrides) -> ml_collections.ConfigDict:
  """The model config of a named size, with `overrides` applied (unknown keys are errors)."""
  if size not in MODEL_SIZES:
    raise ValueError(f"unknown model size {size!r}; choose one of {list(MODEL_SIZES)}")
  config = ml_collections.ConfigDict(dict(
      size=size,
      patch_size=(1, 2, 2),       # (pt, ph, pw) over latent (T, H, W)
      in_channels=16,             # latent channels (3 for pixel-space models)
      mlp_ratio=4.0,              # SwiGLU width = 2/3 * mlp_ratio * hidden, rounded up to 64
      conditioning="text",        # "text": hybrid-stream text tokens; "label": class labels
      text_dim=384,               # width of the text encoder's token states
      num_classes=10,             # for conditioning="label"; index num_classes is the null label
      attention="xla",            # name of an implementation in dit.attention
      remat="none",               # name in dit.remat.REMAT_POLICIES
      scan_layers=True,           # lax.scan over blocks: compile one block, not `depth`
      dtype="bfloat16",           # compute dtype
      param_dtype="float32",
      rope_theta=10_000.0,
  ))
  config.update(MODEL_SIZES[size])
  config.lock()  # a misspelt field is an error, not a silently new field
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def mlp_hidden_size(config: ml_collections.ConfigDict) -> int:
  width = int(2 * config.mlp_ratio * config.hidden_size / 3)
  return -(-width // 64) * 64


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field and what to do, for any invalid model config value."""
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
  for field in ("depth", "in_channels", "text_dim", "num_classes"):
    if config[field] < 1:
      errors.append(f"model.{field}={config[field]} must be positive")
  if errors:
    raise ValueError("invalid model config:\n  " + "\n  ".join(errors))
