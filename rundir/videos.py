"""Generated videos written into a run's folder: <i>.mp4 and <i>.gif per video, grid.png (one
row of frames per video) and prompts.txt (what each was sampled for). A folder written again
holds only the new call's files: its earlier ones are removed first, other files are left."""
import os
import re

import numpy as np

from data import video_io


OWN_FILES = re.compile(r"\d+\.(mp4|gif)|grid\.png|prompts\.txt")


def write_videos(videos: np.ndarray, prompts: list[str], out_dir: str, *, fps: int = 8,
                 upscale: int = 1) -> list[str]:
  """Writes videos float32 [N, T, H, W, C] in [-1, 1], `upscale` times larger (nearest
  neighbour: small videos are written to be seen, not only stored); returns the video paths."""
  os.makedirs(out_dir, exist_ok=True)
  for name in os.listdir(out_dir):  # an earlier call's files, so none is mistaken for this one's
    if OWN_FILES.fullmatch(name):
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
  return paths
