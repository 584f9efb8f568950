"""Where a run's metrics go: one JSON object per line in <workdir>/metrics.jsonl, and
TensorBoard event files in <workdir>/tensorboard when tensorboardX is installed."""
import json
import math
import os

from absl import logging


class MetricWriter:

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.path, "a")
    self._tensorboard = None
    if tensorboard:
      try:
        import tensorboardX
      except ImportError:
        logging.warning("tensorboardX is not installed: metrics go to %s only", self.path)
      else:
        self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    # NaN/inf as strings keep every line valid JSON.
    self._jsonl.write(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else str(v)
                                  for k, v in record.items()}) + "\n")
    self._jsonl.flush()
    if self._tensorboard is not None:
      for name, value in metrics.items():
        self._tensorboard.add_scalar(name, float(value), step)

  def close(self) -> None:
    self._jsonl.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
