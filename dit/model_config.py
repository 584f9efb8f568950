"""Model sizes: the S/B/L/XL DiT classes, a tiny quick-start model and a 7B model.

A model config is an ml_collections.ConfigDict (config.model in an experiment file); the sizes
here are the S/B/L/XL classes of DiT, a tiny quick-start model and a 7B model at the scale of
Seaweed-7B. `python -m dit.count_params` prints the parameter count of each.
"""
import ml_collections

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
      text_vocab_size=0,          # > 0: text is token ids embedded by a learned [vocab, text_dim]
                                  # table (dit.text_encoder.HashedWordEncoder), not states
      num_classes=10,             # for conditioning="label"; index num_classes is the null label
      attention="xla",            # name of an implementation in dit.attention
      sparse_pattern="full",      # static block-sparsity pattern (dit.sparsity.PATTERNS); any
                                  # pattern but "full" needs attention "xla" or "block_sparse"
      sparse_window=(1, 4, 4),    # "window": half-widths (dt, dh, dw) in patches
      sparse_block=128,           # block size of the pattern (query and key blocks)
      sequence_parallel="none",   # "ulysses", "ring" or "usp" (Ulysses x ring): attention with
                                  # the sequence split over the mesh's "seq" axis
                                  # (sharding/sequence_parallel.py)
      ulysses_degree=0,           # usp: Ulysses group size, ring degree = seq / it; 0: the largest
                                  # that divides model.num_heads and the seq degree
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
