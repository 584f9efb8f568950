"""The quick start: a text-to-video DiT of moving digits, trained on a laptop CPU in minutes.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python sample.py --workdir=runs/quickstart --prompt="the digit 3 moves up"

Videos are 4 frames of 32x32 grayscale pixels (data/moving_digits.py), captions are encoded
by the bundled MiniLM sentence encoder, and the model is a small hybrid-stream DiT whose tokens
are 4x8x8 patches (an 8x8 square of all 4 frames: 16 video tokens of 256 values each). The
recipe was chosen by ablations at equal CPU time (issue 20's notes):
  - the final layer predicts the clean video, not the velocity (model.prediction="data", JiT):
    with patches of 256 values it reads as many digits as 4x4x4 velocity patches at 64 tokens,
    at half the digit-feature Frechet distance, in fewer FLOPs a step;
  - batch 16 and a learning rate of 4e-3 learn more per CPU second than batch 32 at 2e-3;
  - a timestep shift of 3 towards noise (4 frames of one moving digit are redundant, so noise
    hides less of it; 1 and 5 read fewer digits);
  - guidance 2 reads as many digits as 2.5 and 3, much closer to the real videos' features.

Variants, as `--config=configs/quickstart.py:steps=300,text=hashed_words`:
  steps   training steps (the default trains in about 7 minutes on 2 CPU cores)
  text    minilm | hashed_words   (hashed_words: a learned word embedding, no encoder weights)
  tiny    shrink everything to a seconds-long smoke run (the tests use it)
  patch_t frames per token (default 4: all of them). patch_t=1 gives tokens of one frame
          (1x8x8 patches, 64 video tokens), so each frame can take its own noise level: the
          teacher of configs/frame_timesteps.py (image-to-video, extension, keyframes)
"""
import ml_collections

from configs.common import (data_config, eval_config, flow_config, mesh_config, model_config,
                            optim_config, parse_arg, sample_config, sharding_config,
                            text_config, train_config)

PROMPTS = (
    "the digit 0 moves to the right",
    "the digit 1 moves up",
    "the digit 3 moves down and to the left",
    "the digit 5 moves to the left",
    "the digit 7 moves down",
    "the digit 8 moves up and to the right",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, steps=3200, text="minilm", tiny=False, patch_t=4)
  if arg.patch_t not in (1, 2, 4):
    raise ValueError(f"configs/quickstart.py: patch_t={arg.patch_t} must divide the 4 frames "
                     "(1, 2 or 4)")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(
      "tiny", hidden_size=192, depth=4, num_heads=4, dual_stream_depth=2,
      patch_size=(arg.patch_t, 8, 8), in_channels=1, prediction="data",
      dtype="float32")  # 16 video tokens of 256 values (patch_t=4); f32 is fastest on CPU
  config.flow = flow_config(shift=3.0, shift_base_tokens=0, cond_dropout=0.1)
  config.optim = optim_config(lr=4e-3, warmup_steps=min(100, arg.steps // 10),
                              decay_steps=arg.steps,
                              final_lr_ratio=0.05, weight_decay=0.0)
  # Videos written 2x larger, to be seen; sparse attention (off by default) in blocks of 16
  # tokens: the 16 video tokens are one block and the text another.
  config.sample = sample_config(num_steps=25, sampler="heun", guidance_scale=2.0, upscale=2,
                                sparse=dict(block=16))
  config.train = train_config(
      batch_size=16, num_steps=arg.steps, video_shape=(4, 32, 32), ema_decay=0.995,
      log_every=50, checkpoint_every=400, keep_checkpoints=2, sample_every=800,
      sample_prompts=PROMPTS, sample_labels=(0, 1, 3, 5, 7, 8))
  # 16 handwriting styles per digit: a narrower distribution the small model learns in minutes
  # (--config.data.kwargs.styles_per_digit=None trains on all ~140 per digit).
  config.data = data_config("moving_digits", num_examples=100_000, num_frames=4, size=32,
                            digit_scale=2, speed=4, styles_per_digit=16)
  if arg.text == "minilm":
    config.text = text_config(encoder="minilm", max_length=16)
  else:
    config.text = text_config(encoder="hashed_words", max_length=16, vocab_size=1024)
    config.model.update(text_vocab_size=1024, text_dim=64)
  # python -m eval: FVD, and the digit classifier's accuracy of the prompted digit and motion
  config.eval = eval_config(num_videos=256, batch_size=64)

  config.mesh = mesh_config()  # every device data parallel; e.g. --config.mesh.seq=4
  config.sharding = sharding_config()

  if arg.tiny:  # patch_t=1: 4 frames, so there are frames to give and frames to sample
    frames = 4 if arg.patch_t == 1 else 2
    config.model.update(hidden_size=32, depth=2, num_heads=2, dual_stream_depth=1,
                        patch_size=(1 if arg.patch_t == 1 else 2, 4, 4))
    config.train.update(batch_size=8, num_steps=6, video_shape=(frames, 16, 16), log_every=2,
                        checkpoint_every=3, sample_every=6, sample_prompts=PROMPTS[:2])
    config.data.kwargs.update(num_examples=64, num_frames=frames, size=16, digit_scale=1,
                              speed=4 if frames == 2 else 2)
    config.optim.update(warmup_steps=2, decay_steps=6)
    config.sample.update(num_steps=3)
    config.eval.update(num_videos=8, batch_size=8, classifier_steps=60)
  config.lock()  # overriding a field that does not exist is an error
  return config
