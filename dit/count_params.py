"""Prints the parameter count of every model size, or of one experiment's model.

  python -m dit.count_params                                 # every size in MODEL_SIZES
  python -m dit.count_params --config=configs/video_dit.py:size=7B --config.model.depth=30

Shapes come from jax.eval_shape, so even the 7B model is counted without allocating it.
"""
import jax
import ml_collections
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from dit.config_checks import validate_config
from dit.model import DiT
from dit.model_config import MODEL_SIZES, model_config

def count_params(config: ml_collections.ConfigDict) -> int:
  """Number of parameters of DiT(config), from abstract shapes only."""
  abstract = nnx.eval_shape(lambda: DiT(config, rngs=nnx.Rngs(0)))
  return sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def describe(config: ml_collections.ConfigDict) -> str:
  dual = config.dual_stream_depth if config.conditioning == "text" else 0
  return (f"{config.size:>5}  hidden {config.hidden_size:>5}  depth {config.depth:>3}  "
          f"heads {config.num_heads:>3}  dual {dual:>3}  "
          f"{config.conditioning:>5}  {count_params(config) / 1e6:>10.2f}M")


def main(argv):
  del argv
  experiment = flags.FLAGS.config
  if experiment is not None:
    validate_config(experiment)
    configs = [experiment.model]
  else:
    configs = [model_config(size) for size in MODEL_SIZES]
  for config in configs:
    print(describe(config))


if __name__ == "__main__":
  # Defined here, not at import, so importing count_params beside train.py (which has its own
  # --config) defines no flag twice.
  config_flags.DEFINE_config_file("config", None, "experiment config file (optional)")
  app.run(main)
