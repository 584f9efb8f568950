"""Weights for eval.inception.InceptionV3, in the layout they are published in.

One layout, torchvision's InceptionV3 state dict, which pytorch-fid's FID weights
(`pt_inception-2015-12-05-6726825d.pth`, 1008 classes) and torchvision's ImageNet weights
(1000 classes) both use:

  Conv2d_1a_3x3.conv.weight                  [out, in, kh, kw]   (our kernel: [kh, kw, in, out])
  Conv2d_1a_3x3.bn.weight | bias | running_mean | running_var   [out]
  Mixed_5b.branch5x5_1.conv.weight, ...      the same per BasicConv2d in every block
  fc.weight [num_classes, 2048], fc.bias [num_classes]           (our kernel: [2048, classes])

num_classes is read from fc.weight. torchvision's AuxLogits.* and every BatchNorm's
num_batches_tracked are not part of the FID network and are skipped; a `module.` prefix (from
DataParallel) is removed. The same names are read from three containers: `.pth`/`.pt`
(torch.save, read without torch by weights.torch_checkpoint), `.safetensors` and `.npz`;
save_inception_weights writes the last two, so a round trip is exact.
"""
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval.inception import InceptionV3

CONFIG_FIELD = "eval.inception_weights"
SUFFIXES = (".pth", ".pt", ".safetensors", ".npz")
_IGNORED = ("AuxLogits.",)  # prefixes of torchvision keys the FID network has no use for

# Our leaf name -> torch's, for BasicConv2d.conv / .bn and fc.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}


def _torch_name(path: tuple) -> str:
  return ".".join([*map(str, path[:-1]), _LEAF_NAMES[path[-1]]])


def _to_torch(path: tuple, value: np.ndarray) -> np.ndarray:
  if path[-1] != "kernel":
    return value
  return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T  # HWIO -> OIHW; [in, out]


def _from_torch(path: tuple, value: np.ndarray) -> np.ndarray:
  if path[-1] != "kernel":
    return value
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T  # OIHW -> HWIO


def _variables(model: nnx.Module):
  """(path, Variable) for every parameter and BatchNorm statistic, in graph order."""
  return [(path, var) for path, var in nnx.iter_graph(model)
          if isinstance(var, (nnx.Param, nnx.BatchStat))]


def inception_state_dict(model: InceptionV3) -> dict[str, np.ndarray]:
  """The model's weights by torch name, in torch's layout (float32 numpy)."""
  return {_torch_name(path): np.ascontiguousarray(_to_torch(path, np.asarray(var.get_value())))
          for path, var in _variables(model)}


def inception_weight_shapes(model: InceptionV3) -> dict[str, tuple[int, ...]]:
  """The torch-layout name and shape of every weight the model takes (works on an abstract
  model from nnx.eval_shape too)."""
  shapes = {}
  for path, var in _variables(model):
    shape = tuple(var.shape)
    if path[-1] == "kernel":  # HWIO -> OIHW; [in, out] -> [out, in]
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    shapes[_torch_name(path)] = shape
  return shapes


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The arrays of a .pth/.pt, .safetensors or .npz file by name, as written."""
  path = os.fspath(path) if path else ""
  suffix = os.path.splitext(path)[1].lower()
  if not path or not os.path.isfile(path) or suffix not in SUFFIXES:
    what = "no path" if not path else (f"no file at {path}" if not os.path.isfile(path)
                                       else f"{path} has an unknown suffix")
    raise FileNotFoundError(
        f"InceptionV3 weights: {what}. Set {CONFIG_FIELD} to the FID Inception weights as "
        f"{' / '.join(SUFFIXES)} in torchvision's naming (pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth, or a conversion of it); leave it empty to skip "
        "FID.")
  if suffix in (".pth", ".pt"):
    from weights.torch_checkpoint import load_torch_state_dict  # noqa: PLC0415
    return load_torch_state_dict(path)
  if suffix == ".safetensors":
    from safetensors.numpy import load_file  # noqa: PLC0415
    return load_file(path)
  with np.load(path, allow_pickle=False) as npz:
    return {name: npz[name] for name in npz.files}


def set_inception_state(model: InceptionV3, state_dict: dict[str, np.ndarray]) -> None:
  """Puts a torch-layout state dict into the model (in place), after checking that it has
  exactly the model's keys with the model's shapes; a ValueError lists what differs."""
  state_dict = _without_extras(state_dict)
  shapes = inception_weight_shapes(model)
  missing = [k for k in shapes if k not in state_dict]
  unexpected = [k for k in state_dict if k not in shapes]
  misshaped = [f"{k} {tuple(state_dict[k].shape)} (want {want})" for k, want in shapes.items()
               if k in state_dict and tuple(state_dict[k].shape) != want]
  if missing or unexpected or misshaped:
    lines = [f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("wrong shape", misshaped)) if keys]
    raise ValueError(
        "these are not InceptionV3 weights in torchvision's layout: " + "; ".join(lines)
        + f". Point {CONFIG_FIELD} at pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
        "(or torchvision's inception_v3 state dict, or either converted to .safetensors/.npz "
        "with the same names).")
  for path, var in _variables(model):
    value = _from_torch(path, np.asarray(state_dict[_torch_name(path)], np.float32))
    var.set_value(jnp.asarray(np.ascontiguousarray(value)))


def load_inception(path: str) -> InceptionV3:
  """An InceptionV3 with the weights at path (num_classes from fc.weight)."""
  state_dict = _without_extras(read_state_dict(path))
  fc = state_dict.get("fc.weight")
  num_classes = fc.shape[0] if fc is not None and fc.ndim == 2 else 1008
  # Shapes only: the weights replace every value, so a random init would be wasted time.
  model = nnx.eval_shape(lambda: InceptionV3(num_classes=num_classes, rngs=nnx.Rngs(0)))
  try:
    set_inception_state(model, state_dict)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return model


def save_inception_weights(model: InceptionV3, path: str) -> None:
  """Writes the model's weights in torch's layout as .safetensors or .npz (by suffix)."""
  path = os.fspath(path)
  state_dict = inception_state_dict(model)
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # noqa: PLC0415
    save_file(state_dict, path)
  elif path.endswith(".npz"):
    np.savez(path, **state_dict)
  else:
    raise ValueError(f"save_inception_weights writes .safetensors or .npz; got {path}")


def _without_extras(state_dict: dict) -> dict:
  if state_dict and all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  return {k: v for k, v in state_dict.items()
          if not k.startswith(_IGNORED) and not k.endswith(".num_batches_tracked")}
