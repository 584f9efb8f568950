"""How well a VAE reconstructs held-out videos: PSNR, SSIM and the compression ratio.

    python -m eval.reconstruction --vae=runs/vae_quickstart            # 64 test-split videos
    python -m eval.reconstruction --vae=runs/vae_quickstart --frames=17 --num_videos=256
    python -m eval.reconstruction --vae=runs/vae_quickstart --size=64   # another frame size

The videos come from the VAE run's data source with split="test" (moving digits keep their
test digits apart; slower when --frames would carry a digit off the canvas), with --frames
frames of --size pixels (a VAE is convolutional: one trained on small frames codes larger
ones), are encoded to posterior means and decoded a chunk at a time (dit/vae/coding.py), and
compared in [-1, 1] (training/reconstruction_metrics.py). The results are printed and written
to <vae>/eval/reconstruction_<frames>f[_<size>px].json, with the PSNR of each frame position
(psnr_by_frame, each frame's PSNR averaged over the videos: where in a latent frame's span the
VAE loses detail; frame 0 is coded alone).
"""
import json
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags

flags.DEFINE_string("vae", None, "a VAE run's workdir (train.py with config.trains='vae')")
flags.DEFINE_integer("frames", 17, "frames per video (1 + 4k)")
flags.DEFINE_integer("num_videos", 64, "held-out videos")
flags.DEFINE_integer("size", 0, "frame height and width of moving digits (0: the VAE run's)")
flags.DEFINE_integer("batch_size", 8, "videos per call")
flags.DEFINE_integer("tile", 0, "code in tiles of this many pixels (0: whole frames)")
FLAGS = flags.FLAGS


def evaluate(workdir: str, frames: int, num_videos: int, batch_size: int = 8,
             tile: int = 0, size: int = 0) -> dict:
  from data.sources import make_source  # noqa: PLC0415
  from dit.vae import coding  # noqa: PLC0415
  from rundir.config_file import load_config  # noqa: PLC0415
  from rundir.open_vae import open_vae  # noqa: PLC0415
  from training.reconstruction_metrics import psnr, ssim  # noqa: PLC0415

  config = load_config(workdir)
  vae = open_vae(workdir, statistics=False)
  kwargs = dict(config.data.kwargs, num_frames=frames, num_examples=num_videos)
  if size:
    if config.data.name != "moving_digits":
      raise ValueError(f"--size={size} sets the frame size of moving digits; {workdir} trained "
                       f"on {config.data.name!r}")
    kwargs["size"] = size
  if config.data.name == "moving_digits":  # held-out digits, slowed to stay on the canvas
    kwargs["split"] = "test"
    room = kwargs.get("size", 32) - 8 * kwargs.get("digit_scale", 2)
    kwargs["speed"] = max(1, min(kwargs.get("speed", 2), room // max(frames - 1, 1)))
  source = make_source(config.data.name, seed=config.seed + 1, **kwargs)
  scores = {"psnr": [], "ssim": [], "psnr_by_frame": []}
  tiling = dict(tile=tile, overlap=coding.quarter_overlap(tile, vae.config.spatial_factor)
                ) if tile else {}
  for start in range(0, num_videos, batch_size):
    video = jnp.asarray(np.stack([source[i]["video"] for i in range(
        start, min(start + batch_size, num_videos))]))
    mean, _ = coding.encode(vae, video, **tiling)
    recon = coding.decode(vae, mean, **tiling)
    scores["psnr"] += np.asarray(psnr(recon, video)).tolist()
    scores["ssim"] += np.asarray(ssim(recon, video)).tolist()
    batch, frames_ = video.shape[:2]
    by_frame = psnr(recon.reshape(batch * frames_, 1, *video.shape[2:]),
                    video.reshape(batch * frames_, 1, *video.shape[2:]))  # [B * T]
    scores["psnr_by_frame"] += np.asarray(by_frame).reshape(batch, frames_).tolist()
  shape = tuple(source[0]["video"].shape)
  return dict(vae=os.path.abspath(workdir), videos=num_videos, video_shape=list(shape),
              latent_shape=list(vae.config.latent_shape(shape)),
              compression=vae.config.compression(shape[:3]), tile=tile,
              psnr=float(np.mean(scores["psnr"])), ssim=float(np.mean(scores["ssim"])),
              psnr_by_frame=np.mean(scores["psnr_by_frame"], axis=0).round(2).tolist())


def main(argv):
  from rundir.logs import quiet_library_logs  # noqa: PLC0415
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  results = evaluate(FLAGS.vae, FLAGS.frames, FLAGS.num_videos, FLAGS.batch_size, FLAGS.tile,
                     FLAGS.size)
  out = os.path.join(FLAGS.vae, "eval", f"reconstruction_{FLAGS.frames}f"
                     + (f"_{FLAGS.size}px" if FLAGS.size else "")
                     + (f"_tile{FLAGS.tile}" if FLAGS.tile else "") + ".json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"{results['videos']} held-out videos {tuple(results['video_shape'])} -> latents "
        f"{tuple(results['latent_shape'])} ({results['compression']:.1f}x): PSNR "
        f"{results['psnr']:.2f} dB, SSIM {results['ssim']:.4f}; written to {out}\n"
        f"PSNR by frame: {' '.join(f'{v:.1f}' for v in results['psnr_by_frame'])}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["vae"])
  app.run(main)
