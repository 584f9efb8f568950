"""Text-to-video (or class-to-video) DiT trained with flow matching on a folder of videos.

Variants, as `--config=configs/video_dit.py:size=B,cond=text,runlocal`:
  size      tiny | S | B | L | XL | 7B   (configs/common.py:MODEL_SIZES)
  cond      text | label
  runlocal  shrink everything (tiny model unless size is given, small moving-digit videos, a
            hashed-word text embedding, a short run) so the experiment runs on a laptop CPU.

Without runlocal it reads RGB videos from --config.data.kwargs.root=/path/to/videos, in pixel
space until the causal VAE lands (then: latents with model.in_channels=16).
"""
import ml_collections

from configs.common import (CONDITIONINGS, data_config, eval_config, flow_config, mesh_config,
                            model_config, optim_config, parse_arg, sample_config,
                            sharding_config, text_config, train_config)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, size="", cond="text", runlocal=False)
  if arg.cond not in CONDITIONINGS:
    raise ValueError(f"model.conditioning={arg.cond!r} (variant cond); choose one of "
                     f"{list(CONDITIONINGS)}")
  size = arg.size or ("tiny" if arg.runlocal else "B")

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(size, conditioning=arg.cond, in_channels=3)
  config.flow = flow_config(shift=3.0, shift_base_tokens=4096)
  config.optim = optim_config(lr=1e-4, warmup_steps=1000, decay_steps=200_000)
  # shift None: the training shift at the sampled resolution (diffusion/samplers.py).
  # sparse: e.g. --config.sample.sparse.attention=adaspa (diffusion/sparse_sampling.py).
  config.sample = sample_config(num_steps=50, sampler="euler", guidance_scale=5.0)
  config.train = train_config(batch_size=64, num_steps=200_000, video_shape=(16, 64, 64))
  config.data = data_config("video_folder", root="", num_frames=16, size=(64, 64), stride=2)
  config.text = text_config(encoder="minilm", max_length=64)
  config.eval = eval_config(num_videos=2048, batch_size=16)  # FVD's usual 2048 videos

  config.mesh = mesh_config()  # every device data parallel; e.g. --config.mesh.fsdp=8
  config.sharding = sharding_config()

  if arg.runlocal:
    config.train.update(batch_size=8, num_steps=10, video_shape=(4, 16, 16), log_every=2,
                        checkpoint_every=5, sample_every=10,
                        sample_prompts=("the digit 1 moves up",), sample_labels=(1,))
    config.data = data_config("moving_digits", num_examples=1000, num_frames=4, size=16,
                              digit_scale=1, speed=2)
    config.text = text_config(encoder="hashed_words", max_length=12, vocab_size=512)
    config.model.update(in_channels=1, text_vocab_size=512, text_dim=64)
    config.optim.update(warmup_steps=2, decay_steps=10)
    config.sample.update(num_steps=4)
  config.lock()  # overriding a field that does not exist is an error; the entry points check
  return config  # the config once, after the command line's overrides (configs/checks.py)
