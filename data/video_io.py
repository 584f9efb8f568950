"""Reading and writing video files: ffmpeg (through imageio-ffmpeg) for mp4, webm, mov, avi and
mkv, Pillow for gif; plus the uint8 conversions and frame grids that sample videos need.

Frames are uint8 [T, H, W, C] with C = 3 (RGB) or 1 (grayscale, written as RGB where the
format needs it). A file that cannot be decoded raises UnreadableVideo, so that a data source
can skip it.
"""

import os
import subprocess
import warnings

import numpy as np

# ffmpeg runs as a subprocess (fork, then exec at once), which JAX warns about needlessly.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)

GIF_EXTENSIONS = (".gif",)
# Still images, read as one-frame videos (Pillow, like GIFs).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PILLOW_EXTENSIONS = GIF_EXTENSIONS + IMAGE_EXTENSIONS


class UnreadableVideo(Exception):
  """A video file that could not be opened or decoded (corrupt, empty, unknown codec)."""

  def __init__(self, path: str, reason: str):
    super().__init__(path, reason)  # args kept, so the exception pickles across processes
    self.path = str(path)
    self.reason = reason

  def __str__(self) -> str:
    return f"cannot decode video {self.path}: {self.reason}"


def _reason(error: Exception) -> str:
  """A one-line reason: ffmpeg's messages end with the useful line, after its banner."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  last = lines[-1] if lines else ""
  return f"{type(error).__name__}: {last[:200]}"


def _read_gif(path: str) -> np.ndarray:
  import imageio.v3 as iio

  frames = iio.imread(path, plugin="pillow", index=None, mode="RGB")
  return frames if frames.ndim == 4 else frames[None]  # a still GIF decodes as [H, W, 3]


def _read_pillow(path: str) -> np.ndarray:
  """A GIF's or an image's frames, uint8 [T, H, W, 3]; UnreadableVideo when there are none."""
  try:
    frames = _read_gif(path)
  except Exception as e:  # Pillow and imageio raise OSError, ValueError, EOFError, ...
    raise UnreadableVideo(path, _reason(e)) from e
  if len(frames) == 0:
    raise UnreadableVideo(path, "no frames")
  return frames


def _frame_indices(total: int, num_frames: int, stride: int, start: int | None,
                   rng: np.random.Generator | None) -> np.ndarray:
  span = (num_frames - 1) * stride + 1
  if start is None:
    start = 0 if rng is None else int(rng.integers(0, max(total - span, 0) + 1))
  # A video shorter than the span is padded by repeating its last frame: the clip then ends
  # on a still frame rather than jumping back to the start as a loop would.
  return np.minimum(start + stride * np.arange(num_frames), total - 1)


def read_video_frames(path: str, num_frames: int, stride: int = 1, start: int | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
  """Reads `num_frames` frames `stride` apart: uint8 [num_frames, H, W, 3].

  The first frame is `start` if given, else drawn uniformly with `rng` among the starts whose
  frames all lie inside the video (0 when the video is too short), else 0. Frames past the
  end of the video repeat its last frame. Raises UnreadableVideo when the file cannot be
  decoded, ValueError for bad arguments.
  """
  if num_frames < 1 or stride < 1:
    raise ValueError(f"num_frames and stride must be positive, got {num_frames} and {stride}")
  if start is not None and rng is not None:
    raise ValueError("pass either start (a fixed first frame) or rng (a random one), not both")
  if start is not None and start < 0:
    raise ValueError(f"start must be a frame index >= 0, got {start}")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UnreadableVideo(path, "no such file")
  if path.lower().endswith(PILLOW_EXTENSIONS):
    frames = _read_pillow(path)
    return frames[_frame_indices(len(frames), num_frames, stride, start, rng)]
  return _read_ffmpeg(path, num_frames, stride, start, rng)


def probe_video(path: str) -> tuple[int, int, int]:
  """(frames, height, width) of a video file, without decoding its frames (a GIF is decoded:
  Pillow does not count frames otherwise). Raises UnreadableVideo when it cannot be read."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UnreadableVideo(path, "no such file")
  if path.lower().endswith(PILLOW_EXTENSIONS):
    frames = _read_pillow(path)
    return len(frames), frames.shape[1], frames.shape[2]
  import imageio.v2 as iio

  try:
    reader = iio.get_reader(path, format="FFMPEG")
  except Exception as e:  # ffmpeg's errors arrive as OSError or RuntimeError
    raise UnreadableVideo(path, _reason(e)) from e
  try:
    width, height = reader.get_meta_data()["size"]
    total = _count_frames(reader, path)
  finally:
    reader.close()
  if total < 1:
    raise UnreadableVideo(path, "no frames")
  return total, int(height), int(width)


def _count_frames(reader, path: str, retry: bool = True) -> int:
  """The frame count (ffmpeg counts packets without decoding, so it is fast).

  imageio-ffmpeg runs this count's ffmpeg in our process group, so a Ctrl-C meant for the
  training job (which saves and exits) kills it too: a count killed by a signal says nothing
  about the file, so it is counted again, and a second kill is raised as itself, never as an
  unreadable video.
  """
  try:
    return reader.count_frames()
  except Exception as e:
    if not _killed_by_signal(e):
      raise UnreadableVideo(path, _reason(e)) from e
    if not retry:
      raise
  return _count_frames(reader, path, retry=False)


def _killed_by_signal(error: BaseException | None) -> bool:
  """Whether a subprocess in error's chain of causes ended by a signal (a negative return code)."""
  while error is not None:
    if isinstance(error, subprocess.CalledProcessError) and error.returncode < 0:
      return True
    error = error.__cause__ or error.__context__
  return False


def _read_ffmpeg(path: str, num_frames: int, stride: int, start: int | None,
                 rng: np.random.Generator | None) -> np.ndarray:
  import imageio.v2 as iio

  try:
    reader = iio.get_reader(path, format="FFMPEG")
  except Exception as e:  # ffmpeg's errors arrive as OSError or RuntimeError
    raise UnreadableVideo(path, _reason(e)) from e
  try:
    total = _count_frames(reader, path)
    if total < 1:
      raise UnreadableVideo(path, "no frames")
    frames = []
    for index in _frame_indices(total, num_frames, stride, start, rng):
      try:
        # Forward reads decode on from the last frame; a far jump re-seeks by time.
        frames.append(reader.get_data(int(index)))
      except IndexError:  # fewer frames decode than the container counted (a truncated file)
        if not frames:
          raise UnreadableVideo(path, f"frame {index} of {total} does not decode") from None
        frames.append(frames[-1])
      except Exception as e:
        raise UnreadableVideo(path, _reason(e)) from e
  finally:
    reader.close()
  return np.stack(frames)


def resize_and_center_crop(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes uint8 [T, H, W, C] so it covers size = (h, w), keeping its aspect, then crops the
  center: uint8 [T, h, w, C]. Pillow's bilinear filter widens when shrinking, so downscaling
  averages like an area filter instead of aliasing."""
  from PIL import Image

  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4) or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [T, H, W, C] with C in (1, 3, 4), got "
                     f"{frames.dtype} {frames.shape}")
  h, w = size
  if h < 1 or w < 1:
    raise ValueError(f"size must be positive (h, w), got {size}")
  num, height, width, channels = frames.shape
  if (height, width) == (h, w):
    return frames
  scale = max(h / height, w / width)
  # Rounding, then at least the target, so the crop below always fits.
  new_h, new_w = max(h, round(height * scale)), max(w, round(width * scale))
  top, left = (new_h - h) // 2, (new_w - w) // 2
  out = np.empty((num, h, w, channels), np.uint8)
  for i, frame in enumerate(frames):
    image = Image.fromarray(frame[..., 0] if channels == 1 else frame)
    image = image.resize((new_w, new_h), Image.BILINEAR)
    image = np.asarray(image)[top:top + h, left:left + w]
    out[i] = image[..., None] if channels == 1 else image
  return out


def to_uint8(video) -> np.ndarray:
  """Float values in [-1, 1] (numpy or jax, any shape) -> uint8 in [0, 255], clipping values
  outside the range; NaN becomes 0 (black) rather than whatever the cast makes of it."""
  video = np.nan_to_num(np.asarray(video, np.float32), nan=-1.0)
  return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _check_frames(frames, what: str = "frames", ndim: int = 4) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != ndim or frames.shape[-1] not in (1, 3) or frames.dtype != np.uint8:
    layout = "[T, H, W, C]" if ndim == 4 else "[N, T, H, W, C]"
    raise ValueError(f"{what} must be uint8 {layout} with C = 1 or 3, got {frames.dtype} "
                     f"{frames.shape} (convert float videos in [-1, 1] with to_uint8)")
  return frames


def _rgb(frames: np.ndarray) -> np.ndarray:
  return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def _write_ffmpeg(path: str, frames: np.ndarray, fps: float, codec: str,
                  output_params: list[str]) -> None:
  """uint8 [T, H, W, C] through ffmpeg in yuv420p (what every player opens).

  yuv420p stores color at half resolution and so needs even sizes: an odd height or width is
  padded by one repeated edge row or column (never rescaled).
  """
  import imageio.v2 as iio

  frames = _rgb(_check_frames(frames))
  pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
  if pad_h or pad_w:
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
  # macro_block_size=1 stops imageio from rescaling to multiples of 16.
  with iio.get_writer(os.fspath(path), format="FFMPEG", fps=fps, codec=codec,
                      pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                      output_params=output_params) as writer:
    for frame in frames:
      writer.append_data(frame)


def write_mp4(path: str, frames: np.ndarray, fps: float = 8) -> None:
  """Writes uint8 [T, H, W, C] as H.264; crf 18 is near lossless to the eye."""
  _write_ffmpeg(path, frames, fps, "libx264", ["-crf", "18"])


def write_webm(path: str, frames: np.ndarray, fps: float = 8) -> None:
  """Writes uint8 [T, H, W, C] as VP9 in constant quality (VP9 needs -b:v 0 beside -crf)."""
  _write_ffmpeg(path, frames, fps, "libvpx-vp9", ["-crf", "20", "-b:v", "0"])


def write_gif(path: str, frames: np.ndarray, fps: float = 8) -> None:
  """Writes uint8 [T, H, W, C] as a GIF that loops forever.

  GIF stores frame durations in hundredths of a second (8 fps plays at 1/0.12 s = 8.3 fps),
  and Pillow merges identical consecutive frames into one longer frame, so a still stretch
  reads back as fewer frames.
  """
  import imageio.v3 as iio

  frames = _rgb(_check_frames(frames))
  iio.imwrite(os.fspath(path), frames, plugin="pillow", extension=".gif",
              duration=1000.0 / fps, loop=0)


def frame_grid(videos: np.ndarray, gap: int = 2, gap_value: int = 255) -> np.ndarray:
  """uint8 [N, T, H, W, C] -> one image uint8 [N*H + (N-1)*gap, T*W + (T-1)*gap, C] with a
  row per video and a column per frame, separated by `gap` pixels of `gap_value`."""
  videos = _check_frames(videos, "videos", ndim=5)
  n, t, h, w, c = videos.shape
  grid = np.full((n * h + (n - 1) * gap, t * w + (t - 1) * gap, c), gap_value, np.uint8)
  for row in range(n):
    for col in range(t):
      y, x = row * (h + gap), col * (w + gap)
      grid[y:y + h, x:x + w] = videos[row, col]
  return grid


def write_frame_grid_png(path: str, videos: np.ndarray, gap: int = 2,
                         gap_value: int = 255) -> np.ndarray:
  """Writes frame_grid(videos) as a PNG (grayscale when C = 1) and returns the grid."""
  import imageio.v3 as iio

  grid = frame_grid(videos, gap, gap_value)
  iio.imwrite(os.fspath(path), grid[..., 0] if grid.shape[-1] == 1 else grid,
              extension=".png")
  return grid
