"""Text-to-video (or class-to-video) DiT trained with flow matching on latent videos.

Variants, as `--config=configs/video_dit.py:size=B,cond=text,runlocal`:
  size      tiny | S | B | L | XL | 7B   (dit.model_config.MODEL_SIZES)
  cond      text | label
  runlocal  shrink everything (tiny model unless size is given, small videos, short run) so
            the experiment runs on a laptop CPU.
"""
import ml_collections

from configs.common import parse_arg
from dit.config_checks import validate_config
from dit.flow_matching import flow_config
from dit.model_config import model_config
from dit.train_step import optim_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, size="", cond="text", runlocal=False)
  size = arg.size or ("tiny" if arg.runlocal else "B")

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(size, conditioning=arg.cond)
  config.flow = flow_config(shift=3.0, shift_base_tokens=4096)
  config.optim = optim_config(lr=1e-4, warmup_steps=1000, decay_steps=200_000)
  # shift None: the training shift at the sampled resolution (dit.samplers.sampling_shift).
  config.sample = dict(num_steps=50, sampler="euler", guidance_scale=5.0, shift=None)
  # Latent videos [T, H, W] (C = model.in_channels) and the global batch size.
  config.train = dict(batch_size=64, num_steps=200_000, video_shape=(16, 32, 32),
                      text_length=64)

  if arg.runlocal:
    config.train.update(batch_size=2, num_steps=10, video_shape=(2, 8, 8), text_length=8)
    config.optim.update(warmup_steps=2, decay_steps=10)
    config.sample.update(num_steps=4)
  validate_config(config)  # command-line overrides are checked again where they are used
  config.lock()  # overriding a field that does not exist is an error
  return config
