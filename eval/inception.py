"""InceptionV3 as FID uses it, in Flax NNX, and the 2048-d pool features of video frames.

The network is the TensorFlow "2015-12-05" Inception graph that FID was defined with, in the
form pytorch-fid reproduces (its `pt_inception-2015-12-05-6726825d.pth` weights load here
through eval.inception_weights). It is torchvision's InceptionV3 with the FID graph's pooling:

  - every conv is BasicConv2d: conv without bias, BatchNorm (eps 1e-3), relu;
  - the 3x3 average pools in the A, C and E blocks average only the pixels inside the image
    (count_include_pad=False), and the last E block (Mixed_7c) max-pools in its pool branch;
  - no auxiliary classifier; the head is a global average pool to 2048 features, then fc to
    1008 logits (1000 with torchvision's ImageNet weights).

Layout is NHWC: images [B, H, W, 3] in [-1, 1] (what both the FID and torchvision weights
expect), H, W >= 75; FID resizes frames to 299 x 299. Attribute names are the published
checkpoints' module names (`Mixed_5b.branch5x5_1.conv`), so loading them is a rename of the
leaves and a transpose of the kernels.

Spatial sizes at 299 x 299: 149 (1a) -> 147 (2a) -> 147 (2b) -> 73 (pool) -> 73 (3b) -> 71 (4a)
-> 35 (pool) -> 35 x 288 (Mixed_5*) -> 17 x 768 (Mixed_6*) -> 8 x 2048 (Mixed_7*) -> pool.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval.batching import padded_batches

FID_SIZE = 299  # the input side FID features are defined at
MIN_SIZE = 75  # the smallest side the stride-2 stages leave a non-empty map for
FEATURES = 2048

# Full float32 convs: on GPUs the default (TF32) would move the features, and so FID, away
# from the values the published weights give.
_PRECISION = jax.lax.Precision.HIGHEST


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
  """conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> relu."""

  def __init__(self, in_features: int, out_features: int, kernel_size, *, strides=1,
               padding=0, rngs: nnx.Rngs):
    # Pairs throughout: nnx.Conv reads an int kernel_size as a 1-D kernel.
    self.conv = nnx.Conv(in_features, out_features, _pair(kernel_size), _pair(strides),
                         padding=tuple((p, p) for p in _pair(padding)), use_bias=False,
                         precision=_PRECISION, rngs=rngs)
    self.bn = nnx.BatchNorm(out_features, epsilon=1e-3, use_running_average=True, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  """3x3 max pool of [B, H, W, C]; padding counts as -inf, as in torch."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def avg_pool_excluding_padding(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1 average of [B, H, W, C] over the pixels inside the image only
  (torch's count_include_pad=False): a corner averages 4 pixels, an edge 6, the rest 9."""
  window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)  # [1, H, W, 1]
  return total / count


class InceptionA(nnx.Module):
  """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_features."""

  def __init__(self, in_features: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(in_features, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, pool_features, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    pool = self.branch_pool(avg_pool_excluding_padding(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, pool], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a, halves the map: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 480 + in_features."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(in_features, 384, 3, strides=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, strides=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, stride=2)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b-6e, factorised 7x7s: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1,
  each 192 wide -> 768."""

  def __init__(self, in_features: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c = channels_7x7
    self.branch1x1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(in_features, c, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c, c, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(in_features, c, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c, c, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c, c, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c, c, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    b77 = self.branch7x7dbl_1(x)
    for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                 self.branch7x7dbl_5):
      b77 = conv(b77)
    pool = self.branch_pool(avg_pool_excluding_padding(x))
    return jnp.concatenate([self.branch1x1(x), b7, b77, pool], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a, halves the map: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + in."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, strides=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, strides=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = conv(b7)
    return jnp.concatenate([b3, b7, max_pool(x, stride=2)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b/7c: 1x1 (320) | 1x1-(1x3, 3x1) (768) | 1x1-3x3-(1x3, 3x1) (768) | pool-1x1 (192)
  -> 2048. The pool is the padding-excluding average in 7b and a max in 7c (`max_pool=True`),
  as in the FID graph."""

  def __init__(self, in_features: int, *, max_pool: bool, rngs: nnx.Rngs):
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(in_features, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(in_features, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    b33 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    b33 = jnp.concatenate([self.branch3x3dbl_3a(b33), self.branch3x3dbl_3b(b33)], axis=-1)
    pooled = max_pool(x, stride=1, padding=1) if self.max_pool else avg_pool_excluding_padding(x)
    return jnp.concatenate([self.branch1x1(x), b3, b33, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
  """The FID InceptionV3 (see the module docstring); weights from eval.inception_weights."""

  def __init__(self, *, num_classes: int = 1008, rngs: nnx.Rngs):
    self.num_classes = num_classes
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, strides=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, pool_features=32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, pool_features=64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, pool_features=64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, channels_7x7=128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, channels_7x7=160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, channels_7x7=160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, channels_7x7=192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)
    self.fc = nnx.Linear(FEATURES, num_classes, precision=_PRECISION, rngs=rngs)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """images [B, H, W, 3] in [-1, 1] (H, W >= 75; 299 for FID) ->
    {"pool": [B, 2048] (the FID features), "logits": [B, num_classes]}."""
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"InceptionV3 takes images [B, H, W, 3] with H, W >= {MIN_SIZE}; got "
                       f"shape {images.shape}")
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(images)))
    x = max_pool(x, stride=2)
    x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), stride=2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    return {"pool": pool, "logits": self.fc(pool)}


def fid_features(model: InceptionV3, frames, batch_size: int = 64, *, progress: bool = True,
                 image_size: int = FID_SIZE) -> np.ndarray:
  """The 2048-d pool features of frames [N, H, W, C] in [-1, 1], C 1 (repeated to 3) or 3.

  Frames are clipped to [-1, 1] (samplers do not clip; saving a video would) and resized to
  image_size x image_size bilinearly without antialiasing, which is what pytorch-fid's
  F.interpolate(align_corners=False) does. Keep image_size at 299 for FID; smaller sizes only
  make tests fast. Batches run under one jit (the last is padded, so nothing recompiles), with
  a progress bar when there are several. Returns float32 [N, 2048].
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
    raise ValueError(f"fid_features takes frames [N, H, W, C] with C 1 or 3; got shape "
                     f"{frames.shape} (flatten videos [N, T, H, W, C] to frames first)")
  if not np.issubdtype(frames.dtype, np.floating):
    raise ValueError(f"fid_features takes float frames in [-1, 1]; got {frames.dtype} "
                     "(for uint8 pixels pass x / 127.5 - 1)")
  if batch_size < 1 or image_size < MIN_SIZE:
    raise ValueError(f"need batch_size >= 1 and image_size >= {MIN_SIZE}; got {batch_size} "
                     f"and {image_size}")
  n = len(frames)
  peak = float(np.abs(frames).max()) if n else 0.0
  if not np.isfinite(peak):
    raise ValueError("fid_features: the frames hold NaN or inf (a diverged sample?)")
  if peak > 10:  # beyond what an unclipped sample reaches: another pixel range
    raise ValueError(f"fid_features takes frames in [-1, 1]; these reach {peak:.3g} (pixels "
                     "in [0, 255]? pass x / 127.5 - 1)")
  from tqdm import tqdm  # noqa: PLC0415  (only where features are computed)

  graphdef, state = nnx.split(model)
  out = np.empty((n, FEATURES), np.float32)
  with tqdm(total=n, unit="frame", desc="inception", dynamic_ncols=True,
            disable=not progress or n <= batch_size) as bar:
    for start, (batch, count) in zip(range(0, n, batch_size),
                                     padded_batches(frames, batch_size)):
      batch = batch.astype(np.float32)
      batch = np.broadcast_to(batch, (*batch.shape[:3], 3))  # grayscale -> 3 equal channels
      features = _pool_features(graphdef, state, batch, image_size)
      out[start:start + count] = np.asarray(features[:count])
      bar.update(count)
  return out


@functools.partial(jax.jit, static_argnums=(0, 3))
def _pool_features(graphdef, state, frames: jax.Array, size: int) -> jax.Array:
  """frames [b, H, W, 3] float32 -> pool features [b, 2048]."""
  model = nnx.merge(graphdef, state)
  x = jnp.clip(frames, -1.0, 1.0)
  x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)
  return model(x)["pool"]
