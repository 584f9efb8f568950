"""torch.save files written without torch, for the tests of weights/torch_checkpoint.py and the
loaders that use it: stand-ins pickled under torch's global names, with the persistent ids and
archive layout torch.save writes (zip, and the legacy stream)."""
import collections
import io
import pickle
import struct
import types
import zipfile

import numpy as np

def _rebuild_tensor_v2(*args):
  raise AssertionError("only pickled")


class FloatStorage:
  pass


class HalfStorage:
  pass


class LongStorage:
  pass


_TORCH_GLOBALS = {_rebuild_tensor_v2: b"torch._utils\n_rebuild_tensor_v2\n",
                  FloatStorage: b"torch\nFloatStorage\n", HalfStorage: b"torch\nHalfStorage\n",
                  LongStorage: b"torch\nLongStorage\n"}
_STORAGE_TYPES = {np.dtype(np.float32): FloatStorage, np.dtype(np.float16): HalfStorage,
                  np.dtype(np.int64): LongStorage}


class Storage:
  def __init__(self, key: str, data: np.ndarray):  # data: 1-D, the storage's elements
    self.key, self.data = key, data


class Tensor:
  def __init__(self, storage: Storage, offset: int, shape: tuple, stride: tuple):
    self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

  def __reduce__(self):
    return (_rebuild_tensor_v2, (self.storage, self.offset, self.shape, self.stride, False,
                                 collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: its dispatch can be changed
  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    pid = ("storage", _STORAGE_TYPES[obj.data.dtype], obj.key, "cpu", obj.data.size)
    return (*pid, None) if self.legacy else pid  # legacy ids end in view metadata

  def _save_function_or_class(self, obj):
    if obj in _TORCH_GLOBALS:
      self.write(pickle.GLOBAL + _TORCH_GLOBALS[obj])
      self.memoize(obj)
    else:
      pickle._Pickler.dispatch[type(obj)](self, obj)

  # The dispatch table holds the base class's functions, so overriding save_global is not enough.
  dispatch = {**pickle._Pickler.dispatch, types.FunctionType: _save_function_or_class,
              type: _save_function_or_class}


def contiguous(arrays: dict[str, np.ndarray]) -> tuple[dict, list]:
  """One storage per array, as torch.save writes a state dict of distinct tensors."""
  tensors, storages = collections.OrderedDict(), []
  for i, (name, array) in enumerate(arrays.items()):
    array = np.array(array, order="C")  # (np.ascontiguousarray makes scalars 1-D)
    storages.append(Storage(str(i), array.ravel()))
    stride = tuple(s // array.itemsize for s in array.strides)
    tensors[name] = Tensor(storages[-1], 0, array.shape, stride)
  return tensors, storages


def write_pth(path, tensors: dict, storages: list, legacy: bool = False) -> None:
  if legacy:
    with open(path, "wb") as f:
      for header in (0x1950a86a20f9469cfc6c, 1001,
                     {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, f, protocol=2)
      _TorchPickler(f, legacy=True).dump(tensors)
      pickle.dump([s.key for s in storages], f, protocol=2)
      for s in storages:
        f.write(struct.pack("<q", s.data.size) + s.data.astype(s.data.dtype.newbyteorder("<"))
                .tobytes())
    return
  buffer = io.BytesIO()
  _TorchPickler(buffer, legacy=False).dump(tensors)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", buffer.getvalue())
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/version", "3\n")
    for s in storages:
      zf.writestr(f"archive/data/{s.key}", s.data.astype(s.data.dtype.newbyteorder("<"))
                  .tobytes())



def write_state_dict(path, arrays: dict[str, np.ndarray], legacy: bool = False) -> None:
  """torch.save(state_dict, path) for a dict of numpy arrays."""
  write_pth(path, *contiguous(arrays), legacy=legacy)
