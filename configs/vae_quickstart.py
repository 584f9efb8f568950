"""The latent quick start's first half: a causal video VAE of moving digits, on a laptop CPU.

  python train.py --config=configs/vae_quickstart.py --workdir=runs/vae_quickstart

The VAE compresses moving digits (data/moving_digits.py, 64x64 grayscale) 4x in time and 8x in
height and width into 4 channels: the latent quick start's 17x64x64x1 videos become 5x8x8x4,
54x fewer values. It has Wan2.1's architecture (dit/vae) at a fraction of its width, and starts
as an image VAE inflated to video (dit/vae/layers.py). Its first 400 steps train on the videos'
first frames alone (vae_loss.image_steps: images, 9x fewer pixels a step, teach it digit shapes);
the rest on clips of 9 frames (1 + 8: both temporal downsamplings and their carries), which
cost half as much as 17 and code any 1 + 4k frames the same way, being causal and
convolutional. The digits move 2 pixels a frame, as the latent quick start's do.
On 2 CPU cores it trains in about 14 minutes (1.6 s a video step, 0.24 s an image step) to
27.0 dB PSNR and 0.932 SSIM on held-out 17-frame videos (`python -m eval.reconstruction
--vae=runs/vae_quickstart --frames=17 --num_videos=256`); `:steps=2000` (about 46 minutes)
reaches 30.2 dB and 0.960.
samples/step_<N>/ shows the first videos beside their reconstructions. The loss is the squared
error: on a digit over black, L1 sat at an empty frame (15 dB) for the first 150 steps where
the squared error reached 20 dB.

Variants, as `--config=configs/vae_quickstart.py:steps=1200`:
  steps         training steps, images and videos
  image_steps   of which the first train on images
  tiny          shrink everything to a seconds-long smoke run (the tests use it)
"""
import ml_collections

from configs.common import (data_config, mesh_config, optim_config, parse_arg, sharding_config,
                            train_config, vae_config, vae_loss_config)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, steps=820, image_steps=400, tiny=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.trains = "vae"
  config.vae = vae_config(in_channels=1, base_channels=8, channel_multipliers=(1, 2, 4, 4),
                          num_res_blocks=1, temporal_downsample=(False, True, True),
                          latent_channels=4)
  config.vae_loss = vae_loss_config(l1=0.0, l2=1.0, kl=1e-6, perceptual=0.0, reconstructions=4,
                                    image_steps=arg.image_steps)
  config.optim = optim_config(lr=1e-3, warmup_steps=min(50, arg.steps // 10),
                              decay_steps=arg.steps, final_lr_ratio=0.05, weight_decay=0.0)
  config.train = train_config(
      batch_size=8, num_steps=arg.steps, video_shape=(9, 64, 64), ema_decay=0.99,
      log_every=25, checkpoint_every=200, keep_checkpoints=2, sample_every=arg.steps)
  config.data = data_config("moving_digits", num_examples=100_000, num_frames=9, size=64,
                            digit_scale=3, speed=2)
  config.mesh = mesh_config()
  config.sharding = sharding_config()

  if arg.tiny:
    config.vae.update(channel_multipliers=(1, 2, 2), temporal_downsample=(True, True))
    config.vae_loss.update(reconstructions=2, image_steps=2)
    config.train.update(batch_size=8, num_steps=6, video_shape=(5, 16, 16), log_every=2,
                        checkpoint_every=3, sample_every=6)
    config.data.kwargs.update(num_examples=64, num_frames=5, size=16, digit_scale=1, speed=1)
    config.optim.update(warmup_steps=2, decay_steps=6)
  config.lock()
  return config
