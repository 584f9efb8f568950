"""Video files: round trips through mp4, webm and gif, frame sampling, resizing, grids, errors."""
import pickle
import signal
import subprocess

import imageio.v3 as iio3
import numpy as np
import pytest

from data.video_io import (UnreadableVideo, read_video_frames, resize_and_center_crop, to_uint8,
                           write_frame_grid_png, write_gif, write_mp4, write_webm)


def smooth_video(num_frames: int = 10, height: int = 32, width: int = 32,
                 channels: int = 3) -> np.ndarray:
  """uint8 [T, H, W, C]: soft gradients that drift over time (easy on lossy codecs)."""
  t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width),
                        indexing="ij")
  base = 128 + 60 * np.sin(x / 6 + t / 2) + 40 * np.cos(y / 7)
  video = np.stack([base, 0.5 * base + 50, 255 - base], -1)[..., :channels]
  return np.clip(video, 0, 255).astype(np.uint8)


def numbered_frames(num_frames: int, size: int = 8) -> np.ndarray:
  """uint8 [T, size, size, 3] whose frame i is a flat gray of value 20 * i."""
  values = (20 * np.arange(num_frames)).astype(np.uint8)
  return np.broadcast_to(values[:, None, None, None], (num_frames, size, size, 3)).copy()


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.mark.parametrize("extension, write, tolerance", [
    (".mp4", write_mp4, 6.0),
    (".webm", write_webm, 6.0),
    (".gif", write_gif, 3.0),
])
def test_video_round_trips_with_its_frame_count_and_close_pixels(tmp_path, extension, write,
                                                                 tolerance):
  video = smooth_video(num_frames=10)
  path = tmp_path / f"clip{extension}"
  write(path, video)
  frames = read_video_frames(path, num_frames=10)
  assert frames.shape == (10, 32, 32, 3) and frames.dtype == np.uint8
  assert mean_error(frames, video) < tolerance
  # Nothing past frame 10: asking for 11 repeats the last frame.
  np.testing.assert_array_equal(read_video_frames(path, 11)[10], frames[9])


@pytest.mark.parametrize("write", [write_mp4, write_gif])
def test_grayscale_video_is_written_as_equal_rgb_channels(tmp_path, write):
  video = smooth_video(num_frames=4, channels=1)
  path = tmp_path / f"gray.{'mp4' if write is write_mp4 else 'gif'}"
  write(path, video)
  frames = read_video_frames(path, 4)
  assert frames.shape == (4, 32, 32, 3)
  for c in range(3):
    assert mean_error(frames[..., c:c + 1], video) < 4.0


def test_mp4_pads_odd_sizes_to_even_without_rescaling(tmp_path):
  video = smooth_video(num_frames=3, height=17, width=9)
  write_mp4(tmp_path / "odd.mp4", video)
  frames = read_video_frames(tmp_path / "odd.mp4", 3)
  assert frames.shape == (3, 18, 10, 3)
  assert mean_error(frames[:, :17, :9], video) < 8.0


def test_frames_are_taken_stride_apart_from_the_given_start(tmp_path):
  write_gif(tmp_path / "numbered.gif", numbered_frames(10))
  frames = read_video_frames(tmp_path / "numbered.gif", num_frames=3, stride=3, start=2)
  np.testing.assert_array_equal(frames[:, 0, 0, 0], [40, 100, 160])


def test_a_short_video_is_padded_by_repeating_its_last_frame(tmp_path):
  write_gif(tmp_path / "numbered.gif", numbered_frames(4))
  frames = read_video_frames(tmp_path / "numbered.gif", num_frames=4, stride=2, start=1)
  np.testing.assert_array_equal(frames[:, 0, 0, 0], [20, 60, 60, 60])


def test_random_start_keeps_every_frame_inside_the_video_and_follows_the_rng(tmp_path):
  write_gif(tmp_path / "numbered.gif", numbered_frames(10))
  starts = set()
  for seed in range(20):
    frames = read_video_frames(tmp_path / "numbered.gif", num_frames=3, stride=2,
                               rng=np.random.default_rng(seed))
    again = read_video_frames(tmp_path / "numbered.gif", num_frames=3, stride=2,
                              rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(frames, again)
    first = frames[0, 0, 0, 0] // 20
    np.testing.assert_array_equal(frames[:, 0, 0, 0] // 20, [first, first + 2, first + 4])
    starts.add(int(first))
  assert starts <= set(range(6)) and len(starts) > 1  # starts 0..5 keep frame start+4 <= 9


def test_start_and_rng_together_are_rejected(tmp_path):
  write_gif(tmp_path / "numbered.gif", numbered_frames(3))
  with pytest.raises(ValueError, match="not both"):
    read_video_frames(tmp_path / "numbered.gif", 2, start=0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("name, content", [
    ("garbage.mp4", b"this is not a video" * 50),
    ("empty.webm", b""),
    ("garbage.gif", b"GIF89a" + b"\x00" * 40),
])
def test_an_undecodable_file_raises_unreadable_video(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(UnreadableVideo) as error:
    read_video_frames(path, 4)
  assert error.value.path == str(path) and error.value.reason
  assert str(path) in str(error.value)


def test_a_missing_file_raises_unreadable_video(tmp_path):
  with pytest.raises(UnreadableVideo, match="no such file"):
    read_video_frames(tmp_path / "missing.mp4", 4)


@pytest.fixture
def ctrl_c_kills_frame_counts(monkeypatch):
  """imageio-ffmpeg's frame count, whose ffmpeg shares the job's process group, killed by the
  job's Ctrl-C for the first `kills` calls."""
  import imageio_ffmpeg._io as ffmpeg_io  # pylint: disable=g-import-not-at-top
  real = ffmpeg_io.subprocess.check_output
  calls = []

  def set_kills(kills):
    def check_output(cmd, *args, **kwargs):
      calls.append(cmd)
      if len(calls) <= kills:
        raise subprocess.CalledProcessError(-signal.SIGINT, cmd, output=b"")
      return real(cmd, *args, **kwargs)
    monkeypatch.setattr(ffmpeg_io.subprocess, "check_output", check_output)
    return calls
  return set_kills


def test_a_frame_count_killed_by_ctrl_c_is_counted_again_not_called_unreadable(
    tmp_path, ctrl_c_kills_frame_counts):
  path = tmp_path / "good.mp4"
  write_mp4(path, numbered_frames(6))
  calls = ctrl_c_kills_frame_counts(1)
  frames = read_video_frames(path, 6)
  assert len(calls) == 2 and frames.shape == (6, 8, 8, 3)
  assert mean_error(frames, numbered_frames(6)) < 3


def test_a_frame_count_killed_twice_raises_its_error_not_unreadable_video(
    tmp_path, ctrl_c_kills_frame_counts):
  path = tmp_path / "good.mp4"
  write_mp4(path, numbered_frames(6))
  ctrl_c_kills_frame_counts(2)
  with pytest.raises(RuntimeError, match="FFMPEG call failed") as error:
    read_video_frames(path, 6)
  assert not isinstance(error.value, UnreadableVideo)


def test_unreadable_video_pickles_for_worker_processes():
  error = pickle.loads(pickle.dumps(UnreadableVideo("a.mp4", "moov atom not found")))
  assert (error.path, error.reason) == ("a.mp4", "moov atom not found")


def test_resize_and_center_crop_covers_the_size_and_keeps_the_center():
  frames = np.zeros((2, 20, 60, 3), np.uint8)  # wide: black edges, white middle
  frames[:, :, 10:50] = 255
  out = resize_and_center_crop(frames, (10, 10))  # 20x60 -> 10x30 -> columns 10..20
  assert out.shape == (2, 10, 10, 3) and out.dtype == np.uint8
  assert (out == 255).all()  # the middle 20x20, halved; a left or right crop shows black


def test_resize_and_center_crop_keeps_a_single_channel():
  frames = np.full((3, 48, 32, 1), 7, np.uint8)
  out = resize_and_center_crop(frames, (16, 24))
  assert out.shape == (3, 16, 24, 1)
  assert (out == 7).all()


def test_to_uint8_maps_the_range_and_clips_outside_it():
  values = np.array([-3.0, -1.0, 0.0, 1.0, 7.0, np.nan], np.float32)
  np.testing.assert_array_equal(to_uint8(values), [0, 0, 128, 255, 255, 0])
  assert to_uint8(values).dtype == np.uint8


def test_frame_grid_png_has_a_row_per_video_and_a_column_per_frame(tmp_path):
  videos = np.zeros((2, 3, 8, 10, 3), np.uint8)
  grid = write_frame_grid_png(tmp_path / "grid.png", videos, gap=2)
  expected = (2 * 8 + 2, 3 * 10 + 2 * 2, 3)
  assert grid.shape == expected
  read_back = iio3.imread(tmp_path / "grid.png")
  assert read_back.shape == expected
  assert (read_back[8:10] == 255).all() and (read_back[:8, :10] == 0).all()  # gap, frame


def test_frame_grid_png_of_grayscale_videos_is_a_grayscale_image(tmp_path):
  grid = write_frame_grid_png(tmp_path / "gray.png", np.zeros((3, 2, 4, 4, 1), np.uint8))
  assert iio3.imread(tmp_path / "gray.png").shape == grid.shape[:2] == (16, 10)


def test_writers_reject_float_videos_pointing_to_to_uint8(tmp_path):
  with pytest.raises(ValueError, match="to_uint8"):
    write_mp4(tmp_path / "float.mp4", np.zeros((2, 8, 8, 3), np.float32))
