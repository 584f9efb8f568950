"""Moving digits: captioned videos of scikit-learn's 8x8 digits gliding across a small canvas.

Every example is made on the fly from (seed, index), so the dataset needs no download and any
example can be rebuilt exactly. Each digit moves in a straight line in one of eight compass
directions and never leaves the canvas, so the caption ("the digit 3 moves up and to the left")
holds for every frame.
"""

import functools

import numpy as np
import scipy.ndimage

# (dy, dx) per frame, in units of `speed` pixels, and how a caption names it.
DIRECTIONS = (
    ((-1, 0), "up"),
    ((1, 0), "down"),
    ((0, -1), "to the left"),
    ((0, 1), "to the right"),
    ((-1, -1), "up and to the left"),
    ((-1, 1), "up and to the right"),
    ((1, -1), "down and to the left"),
    ((1, 1), "down and to the right"),
)
SPLITS = ("train", "test")
_TEST_FRACTION = 0.2


@functools.lru_cache(maxsize=None)
def _digit_images(split: str, scale: int,
                  styles_per_digit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The split's digits upsampled by `scale`: images float32 [N, 8s, 8s] in [0, 1], labels [N].

  styles_per_digit keeps only the first that many images (handwriting styles) of each digit.
  """
  from sklearn.datasets import load_digits  # Deferred: scikit-learn is slow to import.

  digits = load_digits()
  images = digits.images.astype(np.float32) / 16.0  # [1797, 8, 8]
  labels = digits.target.astype(np.int32)
  num_test = int(len(images) * _TEST_FRACTION)
  chosen = slice(num_test, None) if split == "train" else slice(0, num_test)
  images, labels = images[chosen], labels[chosen]
  if styles_per_digit is not None:
    kept = np.concatenate([np.flatnonzero(labels == d)[:styles_per_digit] for d in range(10)])
    images, labels = images[np.sort(kept)], labels[np.sort(kept)]
  if scale > 1:
    images = np.clip(scipy.ndimage.zoom(images, (1, scale, scale), order=1), 0.0, 1.0)
  return images, labels


STILL = -1  # the direction of a still image (num_frames=1): its caption names no motion


def describe(digit: int, direction: int) -> str:
  if direction == STILL:
    return f"the digit {digit}"
  return f"the digit {digit} moves {DIRECTIONS[direction][1]}"


def caption(digits, directions) -> str:
  return " and ".join(describe(d, m) for d, m in zip(digits, directions))


def parse_caption(text: str) -> list[tuple[int, int]]:
  """The (digit, direction index) pairs a caption names, in order: the inverse of caption();
  a still image's direction is STILL.

  Raises ValueError for text that is not a moving-digits caption.
  """
  pairs = []
  names = [name for _, name in DIRECTIONS]
  for part in text.strip().split("the digit ")[1:]:
    part = part.strip()
    part = part[:-len(" and")] if part.endswith(" and") else part
    digit, moves, motion = part.partition(" moves ")
    if not digit.isdigit() or len(digit) != 1 or (moves and motion not in names):
      raise ValueError(f"{text!r} is not a moving-digits caption like {describe(3, 4)!r}")
    pairs.append((int(digit), names.index(motion) if moves else STILL))
  if not pairs or caption(*zip(*pairs)) != text.strip():
    raise ValueError(f"{text!r} is not a moving-digits caption like {describe(3, 4)!r}")
  return pairs


class MovingDigits:
  """A random-access source of moving-digit videos.

  Each item is {"video": float32 [T, H, W, 1] in [-1, 1], "caption": str, "label": int32}, where
  the label is the first digit's class. Videos with two digits combine them with max. size is
  the canvas, square or (height, width). num_frames=1 gives still images, captioned without a
  motion ("the digit 3").
  styles_per_digit limits each digit to its first few handwritten images (None: all ~140 per
  digit in the train split), a narrower distribution that a small model learns sooner.
  inverted draws dark digits on a white canvas (the values negated): a new look to fine-tune a
  trained model to (configs/lora.py).
  """

  def __init__(self, num_examples: int = 100_000, num_frames: int = 8,
               size: int | tuple[int, int] = 32, digit_scale: int = 2, speed: int = 2,
               max_digits: int = 1, split: str = "train",
               styles_per_digit: int | None = None, seed: int = 0, inverted: bool = False):
    digit_size = 8 * digit_scale
    travel = speed * (num_frames - 1)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    problems = []
    if num_examples < 1:
      problems.append(f"num_examples must be positive, got {num_examples}")
    if num_frames < 1 or digit_scale < 1 or speed < 0:
      problems.append("num_frames and digit_scale must be positive and speed non-negative, got "
                      f"{num_frames}, {digit_scale}, {speed}")
    if digit_size + travel > min(height, width):
      problems.append(
          f"a {digit_size}px digit moving {speed}px/frame for {num_frames} frames needs a canvas "
          f"of at least {digit_size + travel}px a side, got size={size}: raise size or lower "
          "speed, num_frames or digit_scale")
    if max_digits not in (1, 2):
      problems.append(f"max_digits must be 1 or 2, got {max_digits}")
    if styles_per_digit is not None and styles_per_digit < 1:
      problems.append(f"styles_per_digit must be positive or None (all), got {styles_per_digit}")
    if split not in SPLITS:
      problems.append(f"split must be one of {SPLITS}, got {split!r}")
    if problems:
      raise ValueError("MovingDigits: " + "; ".join(problems))
    self.num_examples = num_examples
    self.num_frames = num_frames
    self.size = size
    self.canvas = (int(height), int(width))
    self.digit_scale = digit_scale
    self.speed = speed
    self.max_digits = max_digits
    self.split = split
    self.styles_per_digit = styles_per_digit
    self.seed = seed
    self.inverted = bool(inverted)

  def __len__(self) -> int:
    return self.num_examples

  @property
  def video_shape(self) -> tuple[int, int, int]:
    """(T, H, W) of every example."""
    return (self.num_frames, *self.canvas)

  def __repr__(self) -> str:
    return (f"MovingDigits(n={self.num_examples}, frames={self.num_frames}, size={self.size}, "
            f"digits<={self.max_digits}, split={self.split}, seed={self.seed})")

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self!r}")
    rng = np.random.default_rng([self.seed, index])
    images, labels = _digit_images(self.split, self.digit_scale, self.styles_per_digit)
    num_digits = int(rng.integers(1, self.max_digits + 1))
    video = np.zeros((self.num_frames, *self.canvas), np.float32)
    digits, directions = [], []
    for _ in range(num_digits):
      which = int(rng.integers(len(images)))
      direction = int(rng.integers(len(DIRECTIONS)))
      self._draw(video, images[which], DIRECTIONS[direction][0], rng)
      digits.append(int(labels[which]))
      directions.append(direction if self.num_frames > 1 else STILL)
    return {
        "video": (1.0 - 2.0 * video if self.inverted else video * 2.0 - 1.0)[..., None],
        "caption": caption(digits, directions),
        "label": np.int32(digits[0]),
    }

  def _draw(self, video: np.ndarray, image: np.ndarray, step: tuple[int, int],
            rng: np.random.Generator) -> None:
    """Pastes `image` into every frame along a straight path that stays inside the canvas."""
    digit = image.shape[0]
    travel = self.speed * (self.num_frames - 1)
    start = []
    for move, size in zip(step, self.canvas):
      low = travel if move < 0 else 0
      high = size - digit - (travel if move > 0 else 0)
      start.append(int(rng.integers(low, high + 1)))
    for frame in range(self.num_frames):
      y = start[0] + step[0] * self.speed * frame
      x = start[1] + step[1] * self.speed * frame
      window = video[frame, y:y + digit, x:x + digit]
      np.maximum(window, image, out=window)
