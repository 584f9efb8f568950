"""A folder of videos as a data source: captions, labels, shapes, skipping corrupt files."""
import logging
import os
import pickle

import numpy as np
import pytest

from data.video_folder import VideoFolder
from data.video_io import write_gif, write_mp4, write_webm


def moving_video(num_frames: int = 12, height: int = 40, width: int = 48) -> np.ndarray:
  """uint8 [T, H, W, 3]: gradients that drift a lot from frame to frame, so clips starting at
  different frames differ."""
  t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width),
                        indexing="ij")
  base = 128 + 90 * np.sin(x / 8 + t) + 30 * np.cos(y / 9)
  return np.clip(np.stack([base, 255 - base, 0.5 * base + 60], -1), 0, 255).astype(np.uint8)


# The folder's files in sorted order, as the source indexes them.
FILES = ["cats/cat_plays-with_yarn.mp4", "cats/sleepy.gif", "dogs/broken.mp4",
         "dogs/puppy-runs.webm"]
BROKEN = 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """cats/ holds an mp4 and a gif with a sidecar caption; dogs/ a webm and a corrupt mp4."""
  root = tmp_path_factory.mktemp("videos")
  (root / "cats").mkdir()
  (root / "dogs").mkdir()
  write_mp4(root / FILES[0], moving_video())
  write_gif(root / FILES[1], moving_video(height=36, width=36))
  (root / "cats/sleepy.txt").write_text("  a cat sleeps\non a sofa\n")
  (root / FILES[2]).write_bytes(b"\x00\x00\x00\x18ftypmp42 but then nothing" * 20)
  write_webm(root / FILES[3], moving_video(num_frames=6, height=32, width=64))
  (root / "dogs/notes.md").write_text("not a video")
  return root


@pytest.fixture
def source(root):
  return VideoFolder(root, num_frames=4, size=(16, 24), stride=2, seed=0)


def test_lists_video_files_recursively_in_sorted_order(source):
  assert source.paths == FILES
  assert len(source) == 4


def test_label_is_the_index_of_the_class_folder(source):
  assert source.classes == ["cats", "dogs"]
  assert [int(source[i]["label"]) for i in (0, 1, 3)] == [0, 0, 1]
  assert source[0]["label"].dtype == np.int32


def test_caption_comes_from_the_sidecar_text_file(source):
  assert source[1]["caption"] == "a cat sleeps on a sofa"


def test_caption_without_sidecar_is_the_file_name_with_spaces(source):
  assert source[0]["caption"] == "cat plays with yarn"
  assert source[3]["caption"] == "puppy runs"


def test_every_format_gives_float_video_of_the_requested_shape(source):
  for index in (0, 1, 3):  # mp4, gif, webm (the webm is shorter than the 7-frame span)
    video = source[index]["video"]
    assert video.shape == (4, 16, 24, 3) and video.dtype == np.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert video.max() - video.min() > 0.5  # real content, not a blank fill


def test_corrupt_file_is_skipped_counted_and_replaced_by_the_next_file(source):
  examples = [source[i] for i in range(len(source))]  # never raises
  assert source.num_skipped == 1
  assert list(source.skipped) == [os.path.join(source.root, FILES[BROKEN])]
  assert "Invalid data" in next(iter(source.skipped.values()))
  assert examples[BROKEN]["caption"] == examples[BROKEN + 1]["caption"] == "puppy runs"
  assert examples[BROKEN]["label"] == 1


def test_corrupt_file_is_warned_about_once(root, caplog):
  source = VideoFolder(root, num_frames=2, size=(8, 8))
  with caplog.at_level(logging.WARNING):
    for _ in range(3):
      source[BROKEN]
  warnings = [r for r in caplog.records if "broken.mp4" in r.getMessage()]
  assert len(warnings) == 1 and source.num_skipped == 1


def test_same_seed_gives_the_same_clips_and_another_seed_other_clips(root, source):
  again = VideoFolder(root, num_frames=4, size=(16, 24), stride=2, seed=0)
  other = VideoFolder(root, num_frames=4, size=(16, 24), stride=2, seed=1)
  readable = (0, 1)  # the 12-frame videos have 6 possible starts
  for index in readable:
    np.testing.assert_array_equal(source[index]["video"], again[index]["video"])
  assert any(not np.array_equal(source[i]["video"], other[i]["video"]) for i in readable)


def test_files_flat_in_root_all_have_label_zero(tmp_path):
  write_gif(tmp_path / "one.gif", moving_video(num_frames=3, height=8, width=8))
  write_gif(tmp_path / "two.gif", moving_video(num_frames=3, height=8, width=8))
  source = VideoFolder(tmp_path, num_frames=2, size=(8, 8))
  assert [int(source[i]["label"]) for i in range(2)] == [0, 0]


def test_source_pickles_and_reads_the_same_after(source):
  restored = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(restored[0]["video"], source[0]["video"])


def test_folder_with_only_unreadable_files_raises_a_clear_error(tmp_path):
  (tmp_path / "a.mp4").write_bytes(b"junk" * 10)
  (tmp_path / "b.gif").write_bytes(b"junk" * 10)
  source = VideoFolder(tmp_path, num_frames=2, size=(8, 8))
  with pytest.raises(RuntimeError, match="none of the 2 video files"):
    source[0]
  assert source.num_skipped == 2


def test_empty_folder_raises_value_error_saying_what_to_do(tmp_path):
  (tmp_path / "readme.txt").write_text("no videos here")
  with pytest.raises(ValueError, match="put videos there"):
    VideoFolder(tmp_path, num_frames=4)


def test_missing_root_raises_value_error(tmp_path):
  with pytest.raises(ValueError, match="is not a folder"):
    VideoFolder(tmp_path / "nowhere", num_frames=4)


def test_bad_arguments_raise_value_error(root):
  with pytest.raises(ValueError, match="stride"):
    VideoFolder(root, num_frames=4, stride=0)
  with pytest.raises(ValueError, match="size"):
    VideoFolder(root, num_frames=4, size=(0, 8))


def test_a_missing_root_says_which_config_field_to_set():
  with pytest.raises(ValueError, match="--config.data.kwargs.root="):
    VideoFolder("", num_frames=2)


def test_captions_are_utf8_without_a_bom_and_one_that_is_not_utf8_skips_its_example(tmp_path):
  for name in ("a_bom", "b_latin1", "c_utf16", "d_plain"):
    write_gif(tmp_path / f"{name}.gif", moving_video(num_frames=3, height=8, width=8))
  (tmp_path / "a_bom.txt").write_bytes("\ufeffa café by the sea".encode("utf-8"))
  (tmp_path / "b_latin1.txt").write_bytes("a café by the sea".encode("latin-1"))
  (tmp_path / "c_utf16.txt").write_text("a café by the sea", encoding="utf-16")
  source = VideoFolder(tmp_path, num_frames=2, size=(8, 8))
  captions = [source[i]["caption"] for i in range(4)]
  assert captions == ["a café by the sea", "d plain", "d plain", "d plain"]
  assert source.num_skipped == 2
  for name in ("b_latin1", "c_utf16"):
    reason = source.skipped[os.path.join(source.root, f"{name}.gif")]
    assert f"{name}.txt is not UTF-8" in reason and "re-save it as UTF-8" in reason


def test_with_allowed_shapes_each_file_keeps_the_nearest_one(root):
  """12 frames of 40x48, 12 of 36x36, a broken file and 6 of 32x64: each takes the allowed
  resolution nearest its aspect ratio (never larger than itself when one is not) and the longest
  allowed duration it has frames for; reading gives exactly that shape."""
  shapes = ((1, 16, 16), (4, 16, 16), (8, 16, 16), (8, 32, 32), (4, 16, 32), (8, 16, 32))
  source = VideoFolder(root, shapes=shapes)
  assert [source.example_shape(i) for i in range(4)] == [
      (8, 32, 32), (8, 32, 32), (1, 16, 16), (4, 16, 32)]
  assert source.num_skipped == 1  # the broken file, found when probing
  for i in (0, 1, 3):
    assert source[i]["video"].shape == (*source.example_shape(i), 3)
  # The broken file's example is the next readable one, read at the broken one's shape.
  assert source[BROKEN]["video"].shape == (1, 16, 16, 3)
  with pytest.raises(ValueError, match="shapes must be a non-empty list"):
    VideoFolder(root, shapes=((4, 16),))


def test_nearest_shape_prefers_aspect_then_no_upscaling_then_duration():
  from data.shapes import nearest_shape  # noqa: PLC0415
  allowed = [(1, 32, 32), (4, 32, 32), (4, 64, 64), (4, 32, 64), (8, 32, 64)]
  assert nearest_shape(10, 40, 40, allowed) == (4, 32, 32)  # 64x64 would upscale
  assert nearest_shape(10, 100, 100, allowed) == (4, 64, 64)
  assert nearest_shape(3, 100, 100, allowed) == (4, 64, 64)  # too short: the shortest allowed
  assert nearest_shape(30, 90, 200, allowed) == (8, 32, 64)  # wide: the 2:1 resolution
  assert nearest_shape(1, 20, 20, allowed) == (1, 32, 32)  # smaller than all; one frame: an image


def test_an_image_folder_gives_one_frame_videos_of_their_own_shapes(tmp_path):
  from PIL import Image  # noqa: PLC0415
  from data.sources import make_source  # noqa: PLC0415

  (tmp_path / "digits").mkdir()
  Image.fromarray(moving_video(1, 40, 40)[0]).save(tmp_path / "digits/a-three.png")
  Image.fromarray(moving_video(1, 30, 64)[0]).save(tmp_path / "digits/wide.jpg")
  source = make_source("image_folder", seed=0, root=str(tmp_path),
                       shapes=((1, 32, 32), (1, 16, 32)))
  assert [source.example_shape(i) for i in range(2)] == [(1, 32, 32), (1, 16, 32)]
  item = source[0]
  assert item["video"].shape == (1, 32, 32, 3) and item["caption"] == "a three"
  assert source[1]["video"].shape == (1, 16, 32, 3)
