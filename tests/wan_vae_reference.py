"""Wan2.1 VAE weights and inputs for the reference check against diffusers (tests/test_wan_vae.py).

`random_wan_state` gives every tensor of a small Wan2.1-shaped VAE a value drawn from a generator
seeded by the tensor's diffusers name, in either layout, so the same numbers can be built here
and in a throwaway environment with torch and diffusers. `python tests/wan_vae_reference.py DIR`
writes them (DIR/diffusers.safetensors, DIR/original.npz, DIR/video.npy) for
tests/wan_vae_diffusers_check.py, which runs diffusers' AutoencoderKLWan on them and prints
the values pinned in tests/test_wan_vae.py.
"""
import os
import sys
import zlib

import numpy as np
from flax import nnx

from dit.vae.config import VAEConfig
from dit.vae.model import CausalVAE
from weights.wan_vae import wan_vae_names

# Wan2.1's shape (four levels, two residual blocks, 4x8x8) at an eighth of its width.
SMALL_WAN = VAEConfig(in_channels=3, base_channels=8, channel_multipliers=(1, 2, 4, 4),
                      num_res_blocks=2, temporal_downsample=(False, True, True),
                      latent_channels=4)
VIDEO_SHAPE = (1, 9, 24, 16, 3)  # [B, T, H, W, C]: 3 x 3 x 2 latents


def random_wan_state(config: VAEConfig, layout: str) -> dict[str, np.ndarray]:
  """Every tensor of a VAE of `config` in `layout`'s names and torch shapes, float32."""
  model = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))
  diffusers = wan_vae_names(model, "diffusers")
  state = {}
  for path, (name, shape) in wan_vae_names(model, layout).items():
    seed_name = diffusers[path][0]
    rng = np.random.default_rng(zlib.crc32(seed_name.encode()))
    if seed_name.endswith("gamma"):
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    elif seed_name.endswith("bias"):
      value = 0.1 * rng.standard_normal(shape)
    else:
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape) / np.sqrt(fan_in)
    state[name] = value.astype(np.float32)
  return state


def reference_video() -> np.ndarray:
  """[B, T, H, W, C] in [-1, 1], smooth enough to look like a video."""
  rng = np.random.default_rng(2026)
  t, h, w = np.meshgrid(*(np.linspace(0, 1, n) for n in VIDEO_SHAPE[1:4]), indexing="ij")
  channels = [np.sin(6 * h + 4 * t + c) * np.cos(5 * w - 3 * t * c) for c in range(3)]
  video = np.stack(channels, -1)[None] + 0.1 * rng.standard_normal(VIDEO_SHAPE)
  return np.clip(video, -1, 1).astype(np.float32)


if __name__ == "__main__":
  from safetensors.numpy import save_file
  out = sys.argv[1]
  os.makedirs(out, exist_ok=True)
  save_file(random_wan_state(SMALL_WAN, "diffusers"), os.path.join(out, "diffusers.safetensors"))
  np.savez(os.path.join(out, "original.npz"), **random_wan_state(SMALL_WAN, "original"))
  np.save(os.path.join(out, "video.npy"), reference_video())
