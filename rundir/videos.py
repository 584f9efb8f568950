"""Generated videos written into a run's folder: <i>.mp4 and <i>.gif per video, grid.png (one
row of frames per video) and prompts.txt (what each was sampled for). A folder written again
holds only the new call's files: the files an earlier call wrote (listed in its .written_videos)
are removed first; files it did not write are never touched."""
import os

import numpy as np

from data import video_io


MANIFEST = ".written_videos"  # the names of the files the last call wrote, one per line


def write_videos(videos: np.ndarray, prompts: list[str], out_dir: str, *, fps: int = 8,
                 upscale: int = 1) -> list[str]:
  """Writes videos float32 [N, T, H, W, C] in [-1, 1], `upscale` times larger (nearest
  neighbour: small videos are written to be seen, not only stored); returns the video paths."""
  os.makedirs(out_dir, exist_ok=True)
  manifest = os.path.join(out_dir, MANIFEST)
  if os.path.exists(manifest):  # an earlier call's files, so none is mistaken for this one's
    with open(manifest) as f:
      for name in f.read().split("\n"):
        if name and os.path.basename(name) == name and os.path.isfile(os.path.join(out_dir, name)):
          os.remove(os.path.join(out_dir, name))
  videos = video_io.to_uint8(videos)  # [N, T, H, W, C]
  videos = videos.repeat(upscale, axis=2).repeat(upscale, axis=3)
  paths = []
  for i, video in enumerate(videos):
    for ext, write in (("mp4", video_io.write_mp4), ("gif", video_io.write_gif)):
      path = os.path.join(out_dir, f"{i}.{ext}")
      write(path, video, fps=fps)
      paths.append(path)
  video_io.write_frame_grid_png(os.path.join(out_dir, "grid.png"), videos)
  with open(os.path.join(out_dir, "prompts.txt"), "w") as f:
    f.write("".join(f"{i}: {p}\n" for i, p in enumerate(prompts)))
  with open(manifest, "w") as f:
    f.write("".join(os.path.basename(p) + "\n" for p in [*paths, "grid.png", "prompts.txt"]))
  return paths
