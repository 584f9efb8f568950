"""The torch checkpoint reader (weights/torch_checkpoint.py): views, dtypes, scalars, both
formats, and refusing anything but a state dict."""
import collections
import os
import pickle

import jax
import numpy as np
import pytest

from torch_files import Storage, Tensor, contiguous, write_pth
from weights.torch_checkpoint import load_torch_state_dict


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_reader_rebuilds_views_dtypes_and_scalars(legacy, key, tmp_path):
  shared = np.asarray(jax.random.normal(key, (12,)), np.float32)
  half = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (2, 3)), np.float16)
  storages = [Storage("0", shared), Storage("1", half.ravel()),
              Storage("2", np.array([41], np.int64))]
  tensors = collections.OrderedDict(
      matrix=Tensor(storages[0], 0, (3, 4), (4, 1)),
      transposed_view=Tensor(storages[0], 1, (3, 2), (1, 4)),  # [i, j] = shared[1 + i + 4j]
      half=Tensor(storages[1], 0, (2, 3), (3, 1)),
      count=Tensor(storages[2], 0, (), ()))
  path = tmp_path / "tensors.pth"
  write_pth(path, tensors, storages, legacy=legacy)
  read = load_torch_state_dict(str(path))
  np.testing.assert_array_equal(read["matrix"], shared.reshape(3, 4))
  np.testing.assert_array_equal(read["transposed_view"], shared.reshape(3, 4)[:2, 1:4].T)
  assert read["half"].dtype == np.float16
  np.testing.assert_array_equal(read["half"], half)
  assert read["count"].shape == () and read["count"] == 41


def test_torch_reader_refuses_other_globals(key, tmp_path):
  class RunsCode:
    def __reduce__(self):
      return (os.system, ("true",))

  tensors, storages = contiguous({"w": np.asarray(jax.random.normal(key, (3,)), np.float32)})
  tensors["payload"] = RunsCode()
  path = tmp_path / "evil.pth"
  write_pth(path, tensors, storages)
  with pytest.raises(pickle.UnpicklingError, match="refusing to load the global .*system"):
    load_torch_state_dict(str(path))


def test_torch_reader_rejects_a_file_that_is_no_checkpoint(tmp_path):
  path = tmp_path / "notes.pth"
  path.write_text("not a checkpoint")
  with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
    load_torch_state_dict(str(path))
