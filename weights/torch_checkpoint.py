"""Reads a PyTorch state dict (`torch.save(model.state_dict(), path)`) into numpy, without torch.

Two formats, both a pickle whose tensors point at raw storages by persistent id:

  - zip (torch >= 1.6): `<archive>/data.pkl` is the pickle; persistent ids are
    ('storage', storage_type, key, location, numel) and storage `key` is the raw bytes of
    `<archive>/data/<key>`.
  - legacy (older files, e.g. pytorch-fid's published FID weights): one stream of pickles, the
    magic number, protocol version, system info, the object, then the list of storage keys;
    after them each storage in that order as an int64 element count and its raw bytes. The
    persistent ids carry a sixth field, view metadata, which must be None (pre-0.4 views are
    not read).

Unpickling runs code named by the file, so the unpickler here resolves only the globals a state
dict needs: collections.OrderedDict, torch._utils._rebuild_tensor_v2 (and _rebuild_parameter),
the storage types (torch.FloatStorage, ...) and dtype names (torch.float32, ...), each mapped to
a harmless stand-in. Anything else is an UnpicklingError naming the global. Storages are read
as little-endian, the byte order torch writes on every common machine; a file that says
otherwise is refused.
"""
import collections
import dataclasses
import pickle
import struct
import zipfile

import ml_dtypes  # ships with jax; numpy has no bfloat16
import numpy as np

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for torch.FloatStorage etc. in a persistent id."""
  dtype: type


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A tensor as the pickle describes it; made an array once its storage has been read."""
  key: str
  dtype: type
  offset: int  # in elements
  size: tuple
  stride: tuple  # in elements


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  key, dtype = storage
  return _TensorRef(key, dtype, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  return data


class _StateDictUnpickler(pickle.Unpickler):
  """Resolves only what a state dict needs; persistent ids become (key, dtype) pairs."""

  def __init__(self, file, path: str, legacy: bool):
    super().__init__(file)
    self._path, self._legacy = path, legacy

  def find_class(self, module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return np.dtype(_TORCH_DTYPES[name])
    raise pickle.UnpicklingError(
        f"{self._path}: refusing to load the global {module}.{name}; only state dicts of "
        "tensors are read (torch.save(model.state_dict(), path)), since other globals can run "
        "code. Re-save the state dict alone, or convert it to .safetensors or .npz.")

  def persistent_load(self, pid):
    fields = 6 if self._legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == fields and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"{self._path}: unexpected persistent id {pid!r}")
    if self._legacy and pid[5] is not None:
      raise pickle.UnpicklingError(f"{self._path}: storage views (torch < 0.4) are not read; "
                                   "re-save the state dict with a recent torch")
    return str(pid[2]), pid[1].dtype


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `torch.save`d state dict, by name, as numpy arrays (own copies)."""
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  with open(path, "rb") as f:
    try:
      magic = _StateDictUnpickler(f, path, legacy=True).load()
    except Exception:  # noqa: BLE001  (any failure here means: not a legacy checkpoint)
      magic = None
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path} is not a PyTorch checkpoint (neither the zip format nor the "
                       "legacy one); save it with torch.save(model.state_dict(), path) or "
                       "convert it to .safetensors or .npz")
    return _load_legacy(f, path)


def _load_zip(path: str) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as zf:
    pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"{path}: a zip, but not one torch.save wrote (no single "
                       "<archive>/data.pkl)")
    prefix = pickles[0][:-len("data.pkl")]
    if prefix + "byteorder" in zf.namelist():
      order = zf.read(prefix + "byteorder").decode().strip()
      if order != "little":
        raise ValueError(f"{path}: storages are {order}-endian; only little-endian is read")
    with zf.open(pickles[0]) as f:
      obj = _StateDictUnpickler(f, path, legacy=False).load()
    storages = {}
    for ref in _tensor_refs(obj, path):
      if ref.key not in storages:
        storages[ref.key] = zf.read(f"{prefix}data/{ref.key}")
  return _materialise(obj, storages, path)


def _load_legacy(f, path: str) -> dict[str, np.ndarray]:
  unpickle = lambda: _StateDictUnpickler(f, path, legacy=True).load()
  unpickle()  # protocol version
  sys_info = unpickle()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise ValueError(f"{path}: storages are big-endian; only little-endian is read")
  obj = unpickle()
  keys = unpickle()
  dtypes = {ref.key: ref.dtype for ref in _tensor_refs(obj, path)}
  storages = {}
  for key in keys:
    (numel,) = struct.unpack("<q", f.read(8))
    itemsize = np.dtype(dtypes.get(key, np.uint8)).itemsize
    storages[key] = f.read(numel * itemsize)
    if len(storages[key]) != numel * itemsize:
      raise ValueError(f"{path}: truncated (storage {key} ends early)")
  return _materialise(obj, storages, path)


def _tensor_refs(obj, path: str) -> list[_TensorRef]:
  if not isinstance(obj, dict) or not all(
      isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items()):
    raise ValueError(f"{path}: expected a state dict of tensors by name "
                     "(torch.save(model.state_dict(), path)); got something else")
  return list(obj.values())


def _materialise(obj: dict, storages: dict[str, bytes], path: str) -> dict[str, np.ndarray]:
  out = {}
  for name, ref in obj.items():
    if ref.key not in storages:
      raise ValueError(f"{path}: tensor {name} points at a storage the file lacks")
    buffer = np.frombuffer(storages[ref.key], np.dtype(ref.dtype).newbyteorder("<"))
    if 0 in ref.size:
      out[name] = np.zeros(ref.size, ref.dtype)
      continue
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if (len(ref.size) != len(ref.stride) or ref.offset < 0 or min(ref.stride, default=0) < 0
        or last >= buffer.size):
      raise ValueError(f"{path}: tensor {name} reaches outside its storage (corrupt file)")
    view = np.lib.stride_tricks.as_strided(
        buffer[ref.offset:], ref.size, [s * buffer.itemsize for s in ref.stride], writeable=False)
    out[name] = np.array(view, dtype=ref.dtype)  # own, contiguous, native-order copy
  return out
