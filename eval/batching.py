"""Feature networks run over many inputs in batches of one size, so one compiled shape serves
them all."""
from typing import Iterator

import numpy as np


def padded_batches(array: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Consecutive slices of batch_size along axis 0, the last padded by repeating its final
  item; yields (batch, number of real items)."""
  for start in range(0, len(array), batch_size):
    chunk = array[start:start + batch_size]
    real = len(chunk)
    if real < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
    yield chunk, real
