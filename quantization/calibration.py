"""Activation ranges of a DiT's quantized layers, measured on its own sampling trajectories.

A diffusion model's activations change with the noise level, so the ranges are recorded per
sampling step: calibrate() runs the full-precision model's guided Euler trajectories over the
sampler's noise levels, and at every step records each layer's input, as its absolute maximum
per input channel (the maximum over tokens and batch). Static activation scales
(quantization/quantize.py) take the maximum over the steps of a timestep group; SmoothQuant's
factors (quantization/smoothing.py) take the per-channel maxima over all steps.

The observer is a qwix calibration provider (qwix.contrib.calibration), so a layer is named
and matched as qwix names it when it quantizes (quantization/schemes.py).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from qwix.contrib import calibration as qwix_calibration

from diffusion.samplers import guided, sigma_schedule
from quantization.schemes import BLOCK_LINEARS


class RangeObserver(qwix_calibration.CalibrationProvider):
  """Records the input of each matched layer's matmul: float32 [in_features], the absolute
  maximum of each input channel. `seen` maps the layer's module path to it, for one call."""

  def __init__(self, module_path: str = BLOCK_LINEARS):
    super().__init__([qwix.QuantizationRule(module_path=module_path, op_names=("dot_general",))])
    self.seen: dict[str, jax.Array] = {}
    self.rows: dict[str, int] = {}  # input vectors per call (static)

  def get_rule_type(self):
    return qwix.QuantizationRule

  def get_stats_suffix(self) -> str:
    return "_range"

  def _collect_stats(self, lhs, weight_name, *, module_path, **_):
    # lhs [in_features, everything else] (the provider moved the contracting axis first)
    self.seen["/".join(module_path)] = jnp.max(jnp.abs(lhs.astype(jnp.float32)), axis=1)
    self.rows["/".join(module_path)] = lhs.shape[1]


@dataclasses.dataclass
class Ranges:
  """What calibrate() measured: sigmas float [S] (each step's noise level) and, per layer,
  channel_max float32 [S, in_features] (each step's per-channel absolute maximum) and rows
  (how many input vectors the layer takes per call: tokens, or one per video for the
  modulations); states float32 [S, B, ...]: the trajectories' x at each step (None when not
  kept)."""
  sigmas: np.ndarray
  channel_max: dict[str, np.ndarray]
  rows: dict[str, int] = dataclasses.field(default_factory=dict)
  states: np.ndarray | None = None

  def tensor_max(self) -> dict[str, np.ndarray]:
    """Per layer float32 [S]: each step's absolute maximum over the whole input."""
    return {path: m.max(axis=1) for path, m in self.channel_max.items()}

  def groups(self, count: int) -> list[np.ndarray]:
    """The steps split into `count` contiguous groups of noise levels: a list of step
    indices, highest noise first."""
    if not 1 <= count <= len(self.sigmas):
      raise ValueError(f"timestep groups must be between 1 and the {len(self.sigmas)} "
                       f"calibration steps, got {count}")
    return np.array_split(np.arange(len(self.sigmas)), count)

  def spread(self) -> dict[str, float]:
    """Per layer, how much its range changes over the steps: max / min of the per-step
    absolute maxima (1: one static range fits every noise level)."""
    return {path: float(m.max() / max(m.min(), 1e-12)) for path, m in self.tensor_max().items()}


def observing(model: nnx.Module, example_inputs: tuple, example_kwargs: dict,
              module_path: str = BLOCK_LINEARS) -> tuple[nnx.Module, RangeObserver]:
  """(a copy of `model` whose matched layers report to the observer, the observer). model:
  an unstacked DiT (DiT.unstacked), whose outputs the observation leaves unchanged."""
  observer = RangeObserver(module_path)
  observed = qwix.quantize_model(model, observer, *example_inputs, skip_nnx_init=True,
                                 **example_kwargs)
  return observed, observer


def calibrate(model: nnx.Module, key: jax.Array, shape: tuple[int, ...], cond: dict, *,
              num_steps: int, shift: float, guidance_scale: float,
              guidance_interval=(0.0, 1.0), module_path: str = BLOCK_LINEARS) -> Ranges:
  """The input ranges of model's layers along its guided Euler trajectories from noise `key`
  [B, ...] = shape under conditioning cond (B prompts) over the sampler's num_steps noise
  levels (sigma_schedule(num_steps, shift)). model: a DiT (stacked or unstacked; it runs
  unstacked without remat, which only a backward pass would use)."""
  check_no_adapters(model)
  model = model.unstacked(remat="none")
  noise = jax.random.normal(key, shape, jnp.float32)
  sigmas = sigma_schedule(num_steps, shift)
  b = shape[0]
  observed, observer = observing(model, (noise, jnp.ones((b,))), cond, module_path)
  graphdef, state = nnx.split(observed)

  @jax.jit
  def step(state, x, sigma, sigma_next):
    observer.seen = {}
    model = nnx.merge(graphdef, state)
    seen = []

    def apply(x, t, drop, cond):
      v = model(x, t, drop_cond=drop, **cond)
      seen.append(dict(observer.seen))
      return v, None

    v, _ = guided(apply, cond, guidance_scale, guidance_interval)(x, sigma)
    return x + (sigma_next - sigma) * v, seen[0]

  x, per_step, states = noise, [], []
  for i in range(num_steps):
    states.append(np.asarray(x))
    x, seen = step(state, x, sigmas[i], sigmas[i + 1])
    per_step.append(jax.device_get(seen))
  if not per_step[0]:
    raise ValueError(f"no layer of the model matches {module_path!r}")
  channel_max = {path: np.stack([s[path] for s in per_step]) for path in per_step[0]}
  # A guided call doubles the batch: rows per video.
  batch = 2 * b if guidance_scale != 1.0 else b
  rows = {path: r // batch for path, r in observer.rows.items()}
  return Ranges(np.asarray(sigmas[:-1]), channel_max, rows, np.stack(states))


def check_no_adapters(model: nnx.Module) -> None:
  """Quantization takes a plain DiT: a LoRA network's adapters would be dropped silently."""
  if jax.tree.leaves(nnx.state(model, nnx.LoRAParam)):
    raise ValueError("the model carries LoRA adapters: merge them into its weights first "
                     "(open_run(..., merge_lora=True); sample.py and python -m eval do it)")


def merge(ranges: list[Ranges]) -> Ranges:
  """Ranges of several calibrations over the same noise levels (batches of prompts): the
  per-step maxima."""
  first = ranges[0]
  return Ranges(first.sigmas, {path: np.max([r.channel_max[path] for r in ranges], axis=0)
                               for path in first.channel_max}, first.rows,
                None if first.states is None else
                np.concatenate([r.states for r in ranges], axis=1))
