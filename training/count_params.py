"""Prints the parameter count of every model size, or of one experiment's model.

  python -m training.count_params                          # every size in MODEL_SIZES
  python -m training.count_params --config=configs/video_dit.py:size=7B --config.model.depth=30

Shapes come from jax.eval_shape, so even the 7B model is counted without allocating it.
"""
import jax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from configs.checks import validate_config
from configs.common import MODEL_SIZES, model_config
from dit.config import DiTConfig
from dit.model import DiT
from rundir.logs import quiet_library_logs


def count_params(config: DiTConfig) -> int:
  """Number of parameters of DiT(config), from abstract shapes only."""
  abstract = nnx.eval_shape(lambda: DiT(config, rngs=nnx.Rngs(0)))
  return sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def describe(config: DiTConfig) -> str:
  return (f"{config.size:>5}  hidden {config.hidden_size:>5}  depth {config.depth:>3}  "
          f"heads {config.num_heads:>3}  dual {config.num_dual:>3}  "
          f"{config.conditioning:>5}  {count_params(config) / 1e6:>10.2f}M")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  experiment = flags.FLAGS.config
  if experiment is not None:
    configs = [validate_config(experiment)]
  else:
    configs = [DiTConfig.from_dict(model_config(size)) for size in MODEL_SIZES]
  for config in configs:
    print(describe(config))


if __name__ == "__main__":
  # Defined here, not at import, so importing count_params beside train.py (which has its own
  # --config) defines no flag twice.
  config_flags.DEFINE_config_file("config", None, "experiment config file (optional)")
  app.run(main)
