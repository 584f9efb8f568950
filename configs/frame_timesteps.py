"""Fine-tune a trained text-to-video run for vectorized timesteps (Pusa): one noise level per
latent frame, so the same model then samples image-to-video, extension and keyframes.

  python train.py --config=configs/quickstart.py:patch_t=1 --workdir=runs/quickstart_p1
  python train.py --config=configs/frame_timesteps.py --workdir=runs/quickstart_frames

The student starts from the run's EMA weights (train.init_from, pinned) on the run's own data;
a share of its videos (flow.frame_timesteps) trains with an independent noise level per latent
frame, the rest with one level for all frames as before (Pusa's vectorized timestep adaptation:
the synchronized share keeps text-to-video). Everything else is the run's config.

Variants, as `--config=configs/frame_timesteps.py:teacher=runs/x,steps=1200,share=0.5`:
  teacher  the text-to-video run to fine-tune (default runs/quickstart_p1: the quick start with
           tokens of one frame; the default quick start's tokens hold all 4 frames, so its
           frames cannot take levels of their own)
  steps    training steps (default 1200)
  share    the share of videos with independent per-frame levels (default 0.5)
  lr       learning rate, constant after a short warm-up (default 3e-4)
"""
import os

import ml_collections

from configs.common import parse_arg
from configs.saved_run import load_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, teacher="runs/quickstart_p1", steps=1200, share=0.5, lr=3e-4)
  if not os.path.exists(os.path.join(arg.teacher, "config.json")):
    raise FileNotFoundError(f"configs/frame_timesteps.py: teacher={arg.teacher} is not a "
                            "train.py run (no config.json); train it first or pass "
                            "teacher=<its workdir>")
  config = load_config(arg.teacher)
  frames = config.train.video_shape[0] // config.model.patch_size[0]
  if frames < 2:
    raise ValueError(f"configs/frame_timesteps.py: teacher={arg.teacher} codes its videos in one "
                     f"latent frame (train.video_shape {tuple(config.train.video_shape)}, "
                     f"patch_size {tuple(config.model.patch_size)}): there are no frames to "
                     "give levels of their own; fine-tune a run with tokens of fewer frames, "
                     "e.g. configs/quickstart.py:patch_t=1")
  config.train.update(init_from=arg.teacher, init_step=0, num_steps=arg.steps,
                      checkpoint_every=min(400, arg.steps), sample_every=0)
  config.optim.update(lr=arg.lr, warmup_steps=min(50, arg.steps // 10), decay_steps=arg.steps,
                      final_lr_ratio=1.0)
  config.flow.frame_timesteps = arg.share
  return config
