"""Videos and images of several shapes in one run, trained in stages: still digits first, then
moving digits of two durations and two aspect ratios packed together with still ones.

  python train.py --config=configs/mixed_shapes.py --workdir=runs/mixed_shapes
  python sample.py --workdir=runs/mixed_shapes --shape=8,32,32 --prompt="the digit 3 moves up"
  python -m eval --workdir=runs/mixed_shapes      # digit metrics at every trained shape

The shapes (T, H, W), each a part of a data.name="mixture" (data/mixture.py):
  images  (1, 32, 32)   16 tokens    "the digit 3"
  square  (4, 32, 32)   64 tokens    "the digit 3 moves up", 4 px a frame
  wide    (4, 32, 48)   96 tokens    the same motions on a wider canvas
  long    (8, 32, 32)  128 tokens    twice the duration, 2 px a frame

Stage "images" trains on the still digits alone, in plain batches (Seaweed-7B's image stage: the
network learns shapes before motion is asked of it). Stage "videos" packs all four shapes into
rows of 256 video tokens (data.batching="packing": one compiled step for every mix), restarting
the optimizer with its own warmup. The network is the quick start's with patches of one frame
(1x8x8: an image is one frame of patches).

Variants, as `--config=configs/mixed_shapes.py:tiny`:
  image_steps, video_steps   the stages' lengths
  tiny      a seconds-long smoke run of both stages (the tests use it)
  adaptive  the video stage under adaptive sequence parallelism (FlexSP,
            sharding.sequence_parallel_plan="adaptive"): each step splits the devices into
            groups sized for its videos, 64 tokens (video and text) and 2 examples per device.
            Made for 8 devices (on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8); a
            long video (128 + 16 text tokens) needs a group of 4.
"""
import ml_collections

from configs.common import (data_config, eval_config, flow_config, mesh_config, model_config,
                            optim_config, parse_arg, sample_config, sharding_config,
                            stage_config, text_config, train_config)
from configs.quickstart import PROMPTS  # the quick start's, as videos

STILL_PROMPTS = ("the digit 0", "the digit 1", "the digit 3", "the digit 5", "the digit 7",
                 "the digit 8")


def digits(num_frames: int, size, speed: int, num_examples: int = 100_000) -> dict:
  """A mixture part: moving digits of one shape (16 handwriting styles per digit)."""
  return dict(name="moving_digits", kwargs=dict(
      num_examples=num_examples, num_frames=num_frames, size=size, digit_scale=2, speed=speed,
      styles_per_digit=16))


# (name, part, weight in examples): the stage-2 mixture.
PARTS = (
    ("images", digits(1, 32, 0), 20_000),
    ("square", digits(4, 32, 4), 40_000),
    ("wide", digits(4, (32, 48), 4), 20_000),
    ("long", digits(8, 32, 2), 20_000),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, image_steps=400, video_steps=2400, tiny=False, adaptive=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(
      "tiny", hidden_size=192, depth=4, num_heads=4, dual_stream_depth=2,
      patch_size=(1, 8, 8), in_channels=1, prediction="data", dtype="float32")
  config.flow = flow_config(shift=3.0, shift_base_tokens=0, cond_dropout=0.1)
  config.optim = optim_config(lr=4e-3, warmup_steps=50, decay_steps=arg.image_steps,
                              final_lr_ratio=0.05)
  config.sample = sample_config(num_steps=25, sampler="heun", guidance_scale=2.0, upscale=2)
  total = arg.image_steps + arg.video_steps
  config.train = train_config(
      batch_size=16, num_steps=total, video_shape=(4, 32, 32), ema_decay=0.995, log_every=50,
      checkpoint_every=400, keep_checkpoints=2, sample_every=800, sample_prompts=PROMPTS,
      sample_labels=(0, 1, 3, 5, 7, 8))
  config.data = data_config("moving_digits", **digits(1, 32, 0)["kwargs"])
  config.text = text_config(encoder="minilm", max_length=16)
  config.eval = eval_config(num_videos=256, batch_size=64)
  config.mesh = mesh_config()
  config.sharding = sharding_config()
  mixture = data_config("mixture", parts=tuple(
      dict(part, kwargs=dict(part["kwargs"], num_examples=count)) for _, part, count in PARTS))
  config.stages = (
      stage_config("images", arg.image_steps,
                   train=dict(video_shape=(1, 32, 32), batch_size=32,
                              sample_prompts=STILL_PROMPTS)),
      stage_config("videos", arg.video_steps, optimizer="reset",
                   data=dict(name="mixture", kwargs=mixture.kwargs.to_dict(),
                             batching="packing", row_tokens=256, max_slots=8),
                   train=dict(batch_size=4),
                   optim=dict(warmup_steps=50, decay_steps=arg.video_steps)),
  )

  if arg.tiny:
    config.model.update(hidden_size=32, depth=2, num_heads=2, dual_stream_depth=1,
                        patch_size=(1, 8, 8))
    config.text = text_config(encoder="hashed_words", max_length=8, vocab_size=256)
    config.model.update(text_vocab_size=256, text_dim=32)
    config.train.update(num_steps=12, log_every=2, checkpoint_every=3, sample_every=0)
    config.optim.update(warmup_steps=1, decay_steps=4)
    config.sample.update(num_steps=3)
    config.eval.update(num_videos=8, batch_size=8, classifier_steps=60)
    config.data.kwargs.update(num_examples=64)
    images, videos = config.stages
    parts = tuple(dict(p, kwargs=dict(p["kwargs"], num_examples=16))
                  for p in videos["data"]["kwargs"]["parts"])
    config.stages = (
        dict(images, num_steps=4, train=dict(images["train"], batch_size=8)),
        dict(videos, num_steps=8, data=dict(videos["data"], kwargs=dict(parts=parts)),
             train=dict(batch_size=8), optim=dict(warmup_steps=1, decay_steps=8)),
    )
  if arg.adaptive:
    config.sharding.sequence_parallel_plan = "adaptive"
    videos = dict(config.stages[1])
    videos["data"] = dict(videos["data"], tokens_per_device=64, max_slots=2)
    config.stages = (config.stages[0], videos)
  config.lock()
  return config
