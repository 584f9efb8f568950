"""Random model inputs of an experiment's shapes, for the benchmarks and the tests: no data
pipeline, no text encoder."""
import ml_collections
import numpy as np


def random_batch(config: ml_collections.ConfigDict, seed: int,
                 batch_size: int | None = None) -> dict[str, np.ndarray]:
  """A numpy batch as the data pipeline gives it (data/pipeline.py:model_inputs) for
  `batch_size` examples (default: this process's share of train.batch_size):

    video      float32 [B, *train.video_shape, model.in_channels], uniform in [-1, 1]
    text       int32 ids [B, text.max_length] (model.text_vocab_size > 0) or float32 states
               [B, text.max_length, model.text_dim]; text_mask bool [B, text.max_length] with
               1 to text.max_length real tokens each          (text models)
    label      int32 [B] in [0, model.num_classes)               (label models)
  """
  import jax  # noqa: PLC0415  (the process count; jax is already loaded wherever this runs)

  rng = np.random.default_rng(seed)
  if batch_size is None:
    batch_size = config.train.batch_size // jax.process_count()
  model = config.model
  video = rng.uniform(-1, 1, (batch_size, *config.train.video_shape, model.in_channels))
  batch = {"video": video.astype(np.float32)}
  if model.conditioning == "text":
    length = config.text.max_length
    if model.text_vocab_size:
      batch["text"] = rng.integers(1, model.text_vocab_size, (batch_size, length), np.int32)
    else:
      batch["text"] = rng.standard_normal((batch_size, length, model.text_dim), np.float32)
    lengths = rng.integers(1, length + 1, (batch_size, 1))
    batch["text_mask"] = np.arange(length)[None] < lengths
  else:
    batch["label"] = rng.integers(0, model.num_classes, (batch_size,), np.int32)
  return batch
