"""The reference check of our Wan2.1 VAE against diffusers' AutoencoderKLWan; not a test.

Run once in a throwaway environment (torch and diffusers are not project dependencies):

    python tests/wan_vae_reference.py /tmp/ref          # here: weights and a video
    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0+cpu diffusers
    /tmp/refenv/bin/python tests/wan_vae_diffusers_check.py /tmp/ref

It loads the diffusers-layout weights with strict=True, checks that diffusers' own converter
turns the original layout into exactly those tensors, encodes the video (the posterior's mean
and log-variance) and decodes the mean, and writes DIR/diffusers_out.npz; tests/test_wan_vae.py
pins what it printed.
"""
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file

folder = sys.argv[1]
state = load_file(os.path.join(folder, "diffusers.safetensors"))
original = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(folder, "original.npz")).items()}
converted = convert_wan_vae_to_diffusers(original)
assert set(converted) == set(state), sorted(set(converted) ^ set(state))
assert all(torch.equal(converted[k], state[k]) for k in state)

vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                       temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                       latents_std=[1.0] * 4)
vae.load_state_dict(state, strict=True)
vae.eval()
video = torch.from_numpy(np.load(os.path.join(folder, "video.npy"))).permute(0, 4, 1, 2, 3)
with torch.no_grad():
  posterior = vae.encode(video).latent_dist
  decoded = vae.decode(posterior.mean).sample
to_ours = lambda t: t.permute(0, 2, 3, 4, 1).numpy()  # [B, C, T, H, W] -> [B, T, H, W, C]
mean, logvar, decoded = to_ours(posterior.mean), to_ours(posterior.logvar), to_ours(decoded)
np.savez(os.path.join(folder, "diffusers_out.npz"), mean=mean, logvar=logvar, decoded=decoded)
np.set_printoptions(precision=6, suppress=True)
print("mean", mean.shape, "abs sum", np.abs(mean).sum(), "\n", mean[0, :, 0, 0])
print("logvar abs sum", np.abs(logvar).sum(), "\n", logvar[0, :, 1, 1])
print("decoded", decoded.shape, "abs sum", np.abs(decoded).sum(), "\n", decoded[0, :, 5, 7])
