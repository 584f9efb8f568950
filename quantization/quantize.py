"""A trained DiT quantized through qwix: weights per output channel, activations with static
per-tensor scales from calibrated ranges, SmoothQuant where activations are quantized, and one
activation scale per timestep group where one range does not fit every noise level.

    ranges = calibration.calibrate(model, key, shape, cond, ...)
    quantized = quantize_dit(model, Plan.uniform("w8a8", layer_paths(model)), ranges, example)
    quantized(video, t, text=...)       # what DiT.__call__ takes; the samplers take it as is

The quantized model is an unstacked DiT (DiT.unstacked) whose layers qwix intercepts: its
parameters hold qwix QArrays (int8/int4/fp8 values and their scales).
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from qwix.contrib.smooth_quant import WithSqScale

from quantization import schemes as schemes_lib
from quantization.calibration import Ranges, check_no_adapters
from quantization.smoothing import smoothed, smoothed_max, smoothing_factors

ACT_STAT = "dot_general0_lhs"  # qwix's name of a linear layer's input: its only matmul's lhs


@dataclasses.dataclass(frozen=True)
class Plan:
  """What to quantize how. layers: {module path: scheme name} (paths as qwix names them on
  DiT.unstacked(), e.g. "single_blocks/0/stream/qkv"); smooth_alpha: SmoothQuant's migration
  strength for the layers whose activations are quantized (None: no smoothing);
  timestep_groups: static activation scales per this many groups of noise levels."""
  layers: dict
  smooth_alpha: float | None = 0.5
  timestep_groups: int = 1

  @classmethod
  def uniform(cls, scheme: str, paths: list[str], **kwargs) -> "Plan":
    schemes_lib.get_scheme(scheme)
    return cls({path: scheme for path in paths}, **kwargs)

  def scheme(self, path: str) -> schemes_lib.Scheme:
    return schemes_lib.get_scheme(self.layers[path])

  def smoothed(self, path: str) -> bool:
    return self.smooth_alpha is not None and self.scheme(path).act_qtype is not None

  def rules(self) -> list[qwix.QuantizationRule]:
    return schemes_lib.rules({path: self.scheme(path) for path in self.layers})


def layer_paths(model) -> list[str]:
  """The module paths of the quantizable layers (schemes.BLOCK_LINEARS) of a DiT."""
  return [_name(path) for path, _ in nnx.iter_modules(_unstacked(model))
          if re.fullmatch(schemes_lib.BLOCK_LINEARS, _name(path))]


def _name(path) -> str:
  return "/".join(map(str, path))


class QuantizedLinears(qwix.PtqProvider):
  """qwix's PTQ provider, and for a smoothed layer (kernel held as WithSqScale) its input
  multiplied by 1/s first. Weight-only layers and unquantized ones run as PtqProvider runs
  them; a smoothed kernel left in floating point (no quantization) runs as a float matmul."""

  def dot_general(self, lhs, rhs, dimension_numbers, precision=None,
                  preferred_element_type=None, *, out_sharding=None):
    if isinstance(rhs, WithSqScale):
      # nnx.Linear contracts the input's last axis with the kernel's first.
      lhs = lhs * rhs.inv_sq_scale.astype(lhs.dtype)
      if not isinstance(rhs.array, qwix.QArray):
        return jax.lax.dot_general(lhs, rhs.array, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type,
                                   out_sharding=out_sharding)
    return super().dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type,
                               out_sharding=out_sharding)


class TimestepGroups(nnx.Module):
  """A quantized DiT whose static activation scales are chosen by noise level: scales
  {path: [G, ...]} (group 0 the noisiest), edges the G - 1 noise levels between groups. A call
  at t [B] (or per frame [B, nT]) uses the group of max(t): the level being denoised (given
  frames, diffusion/frame_sampling.py, are held at a level at most that, unless their
  given_noise is above it late in sampling)."""

  def __init__(self, model: nnx.Module, scales: dict, edges: list[float]):
    self.model = model
    self.paths = tuple(scales)
    self.scales = nnx.List([nnx.Param(scales[path]) for path in self.paths])
    self.edges = tuple(float(e) for e in edges)

  def __call__(self, video, t, **kwargs):
    group = jnp.sum(jnp.max(t) < jnp.asarray(self.edges)).astype(jnp.int32)
    graphdef, state = nnx.split(self.model)
    values = nnx.to_pure_dict(state)
    for path, scales in zip(self.paths, self.scales):
      _at(values, _keys(path) + (ACT_STAT + "_scale", "array"), scales[...][group])
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)(video, t, **kwargs)


def _keys(path: str) -> tuple:
  return tuple(int(k) if k.isdigit() else k for k in path.split("/"))


def _at(tree: dict, keys: tuple, value=None):
  """tree[k0][k1]...: read, or set when value is given."""
  for k in keys[:-1]:
    tree = tree[k]
  if value is not None:
    tree[keys[-1]] = value
  return tree[keys[-1]]


def quantize_dit(model: nnx.Module, plan: Plan, ranges: Ranges | None, example: tuple
                 ) -> nnx.Module:
  """`model` (a DiT) quantized by `plan`, with static activation scales and smoothing from
  `ranges` (calibration.calibrate on it; None only for weight-only plans). example: (args,
  kwargs) of one call (shapes only matter): qwix traces the model once to place the scales."""
  needs_ranges = [p for p in plan.layers if plan.scheme(p).act_qtype is not None]
  if needs_ranges and ranges is None:
    raise ValueError("activation quantization needs calibrated ranges (calibration.calibrate)")
  missing = [p for p in needs_ranges if p not in ranges.channel_max]
  if missing:
    raise ValueError(f"no calibrated range for {missing[:3]}...: calibrate this model")
  fp = _unstacked(model)
  args, kwargs = example
  abstract = nnx.eval_shape(
      lambda: qwix.quantize_model(fp, QuantizedLinears(plan.rules()), *args, **kwargs))
  params = nnx.to_pure_dict(nnx.state(fp, nnx.Param))
  factors = smoothing(params, plan, ranges)
  for path, s in factors.items():
    kernel_keys = _keys(path) + ("kernel",)
    _at(params, kernel_keys, smoothed(_at(params, kernel_keys), s))
  groups = ranges.groups(plan.timestep_groups) if needs_ranges else [None]
  quantized = [qwix.quantize_params(params, abstract,
                                    _act_stats(plan, ranges, factors, steps, abstract))
               for steps in groups]
  nnx.update(abstract, quantized[0])
  for path, s in factors.items():
    linear = _module(abstract, path)
    held = linear.kernel
    linear.kernel = WithSqScale(array=held.array, how=held.how, contracting_axis=0,
                                inv_sq_scale=nnx.Param(1.0 / s))
  if len(groups) == 1:
    return abstract
  scales = {path: jnp.stack([_at(q, _keys(path) + (ACT_STAT + "_scale", "array"))
                             for q in quantized]) for path in needs_ranges}
  sigmas = ranges.sigmas
  edges = [(sigmas[a[-1]] + sigmas[b[0]]) / 2 for a, b in zip(groups, groups[1:])]
  return TimestepGroups(abstract, scales, edges)


def _unstacked(model: nnx.Module) -> nnx.Module:
  """The plain DiT unstacked for quantization, without remat (inference only)."""
  check_no_adapters(model)
  return model.unstacked(remat="none")


def smoothing(params: dict, plan: Plan, ranges: Ranges) -> dict:
  """{path: s float32 [in]}: SmoothQuant's factors of the plan's smoothed layers, from their
  kernels (in params, a pure dict of the unstacked model) and their inputs' per-channel maxima
  over every calibration step."""
  return {path: smoothing_factors(_at(params, _keys(path) + ("kernel",)),
                                  ranges.channel_max[path].max(axis=0), plan.smooth_alpha)
          for path in plan.layers if plan.smoothed(path)}


def smooth_dit(model: nnx.Module, plan: Plan, ranges: Ranges, example: tuple) -> nnx.Module:
  """The equivalent transform alone, in full precision: `model` (a DiT) with the plan's
  smoothed layers' kernels scaled to diag(s) W and their inputs divided by s; it computes what
  `model` computes (up to rounding). quantize_dit quantizes these kernels."""
  fp = _unstacked(model)
  args, kwargs = example
  smooth = qwix.quantize_model(fp, QuantizedLinears([]), *args, skip_nnx_init=True, **kwargs)
  factors = smoothing(nnx.to_pure_dict(nnx.state(smooth, nnx.Param)), plan, ranges)
  for path, s in factors.items():
    linear = _module(smooth, path)
    linear.kernel = WithSqScale(array=nnx.Param(smoothed(linear.kernel[...], s)), how=None,
                                contracting_axis=0, inv_sq_scale=nnx.Param(1.0 / s))
  return smooth


def _module(model: nnx.Module, path: str) -> nnx.Module:
  for name, module in nnx.iter_modules(model):
    if _name(name) == path:
      return module
  raise KeyError(path)


def _act_stats(plan: Plan, ranges: Ranges, factors: dict, steps, abstract) -> dict:
  """qwix quant_stats for the activation-quantized layers: the absolute maximum of each one's
  (smoothed) input over `steps`, as qwix's calibration of a static per-tensor scale."""
  stats = {}
  for path in plan.layers:
    if plan.scheme(path).act_qtype is None:
      continue
    channel_max = ranges.channel_max[path][steps]  # [steps, in]
    if path in factors:
      absmax = smoothed_max(channel_max, factors[path]).max()
    else:
      absmax = jnp.max(channel_max)
    shape = _at(nnx.to_pure_dict(nnx.state(_module(abstract, path))),
                (ACT_STAT + "_scale", "array")).shape
    _set_nested(stats, _keys(path) + (ACT_STAT,),
                {"count": np.ones((), np.int32),  # concrete: qwix checks it
                 "sum_of_absmax": jnp.full(shape, absmax, jnp.float32)})
  return stats


def _set_nested(tree: dict, keys: tuple, value) -> None:
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def model_bytes(model: nnx.Module) -> int:
  """Bytes of the model's parameters as stored: int4 values count half a byte."""
  total = 0
  for leaf in jax.tree.leaves(nnx.state(model)):
    bits = 4 if leaf.dtype in (jnp.int4, jnp.uint4) else leaf.dtype.itemsize * 8
    total += leaf.size * bits // 8
  return total
