"""The latent quick start's second half: a text-to-video DiT of moving digits in the latent
space of the VAE configs/vae_quickstart.py trains.

  python train.py --config=configs/vae_quickstart.py --workdir=runs/vae_quickstart
  python -m data.encode_latents --config=configs/latent_quickstart.py \
      --out=runs/latent_quickstart_shards --num_examples=4096
  python train.py --config=configs/latent_quickstart.py --workdir=runs/latent_quickstart

Videos are 17 frames of 64x64 grayscale pixels, encoded to 5x8x8x4 latents; in patches of 1x2x2
that is 80 tokens, fewer than the pixel quick start's 128 for 8x as many pixels. It trains on
latent shards encoded once (about 5x faster per step on a CPU than running the encoder in every
step); --config.latents.shards= (empty) encodes on the fly instead. Samples are decoded with
the VAE.

Variants, as `--config=configs/latent_quickstart.py:vae=runs/my_vae,steps=300`:
  vae     the VAE run's workdir (or Wan2.1's VAE weights, with a matching video size)
  shards  the folder of latent shards
  steps   training steps
  tiny    shrink everything to a seconds-long smoke run on configs/vae_quickstart.py:tiny's VAE,
          encoding on the fly
"""
import ml_collections

from configs.common import (data_config, eval_config, flow_config, latents_config, mesh_config,
                            model_config, optim_config, parse_arg, sample_config,
                            sharding_config, text_config, train_config)
from configs.quickstart import PROMPTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, vae="runs/vae_quickstart", shards="runs/latent_quickstart_shards",
                  steps=1400, tiny=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.trains = "dit"
  config.latents = latents_config(vae=arg.vae, shards="" if arg.tiny else arg.shards)
  config.model = model_config(
      "tiny", hidden_size=128, depth=4, num_heads=4, dual_stream_depth=2,
      patch_size=(1, 2, 2), in_channels=4, dtype="float32")
  config.flow = flow_config(shift=1.0, shift_base_tokens=0, cond_dropout=0.1)
  config.optim = optim_config(lr=2e-3, warmup_steps=min(100, arg.steps // 10),
                              decay_steps=arg.steps, final_lr_ratio=0.05, weight_decay=0.0)
  config.sample = sample_config(num_steps=25, sampler="heun", guidance_scale=3.0, upscale=1,
                                sparse=dict(block=16))
  config.train = train_config(
      batch_size=32, num_steps=arg.steps, video_shape=(5, 8, 8), ema_decay=0.995,
      log_every=25, checkpoint_every=250, keep_checkpoints=2, sample_every=500,
      sample_prompts=PROMPTS, sample_labels=(0, 1, 3, 5, 7, 8))
  config.data = data_config("moving_digits", num_examples=100_000, num_frames=17, size=64,
                            digit_scale=3, speed=2, styles_per_digit=16)
  config.text = text_config(encoder="minilm", max_length=16)
  config.eval = eval_config(num_videos=256, batch_size=64)
  config.mesh = mesh_config()
  config.sharding = sharding_config()

  if arg.tiny:  # the VAE of configs/vae_quickstart.py:tiny: 4x4x4, 5x16x16x1 -> 2x4x4x4
    config.text = text_config(encoder="hashed_words", max_length=16, vocab_size=1024)
    config.model.update(hidden_size=32, depth=2, num_heads=2, dual_stream_depth=1,
                        text_vocab_size=1024, text_dim=64)
    config.train.update(batch_size=8, num_steps=4, video_shape=(2, 4, 4), log_every=2,
                        checkpoint_every=2, sample_every=4, sample_prompts=PROMPTS[:2])
    config.data.kwargs.update(num_examples=64, num_frames=5, size=16, digit_scale=1, speed=1)
    config.optim.update(warmup_steps=1, decay_steps=4)
    config.sample.update(num_steps=3)
    config.eval.update(num_videos=8, batch_size=8, classifier_steps=60)
  config.lock()
  return config
