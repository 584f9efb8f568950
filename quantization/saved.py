"""Quantized models of a run, in its folder: <workdir>/quantized/<step>/<name>/ holds
quantization.json (the plan, the calibration's noise levels and what it measured) and
state/ (orbax: the quantized parameters, int8/int4/fp8 values and their scales).

    with open_run("runs/quickstart") as run:
      run = quantized_run(run, "w8a8")      # loads it, or calibrates, quantizes and saves it
      videos = run.sampler().generate(run.params, key)

A saved model is never overwritten: another checkpoint step has its own folder, and another
plan under the same name is an error that says how to keep both.
"""
import dataclasses
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from diffusion.samplers import guidance_interval, sampling_shift
from dit.patchify import num_video_tokens
from quantization import calibration
from quantization.quantize import Plan, layer_paths, model_bytes, quantize_dit
from quantization.schemes import SCHEMES

MANIFEST = "quantization.json"
CALIBRATION_REPEATS = 2  # noise draws per calibration prompt


def quantized_dir(workdir: str, step: int, name: str) -> str:
  return os.path.join(os.path.abspath(workdir), "quantized", str(step), name)


SMOOTH_ALPHA = 0.8     # SmoothQuant's migration strength (measured on the quick start)
TIMESTEP_GROUPS = 5    # static activation scales per this many groups of noise levels


def default_plan(run, scheme: str, *, smooth_alpha: float | None = SMOOTH_ALPHA,
                 timestep_groups: int = TIMESTEP_GROUPS) -> Plan:
  """Every block linear of the run's model with `scheme` (smoothing and timestep groups apply
  where activations are quantized)."""
  if SCHEMES[scheme].act_qtype is None:
    smooth_alpha, timestep_groups = None, 1
  timestep_groups = min(timestep_groups, run.config.sample.num_steps)  # one per step at most
  model = nnx.merge(run.graphdef, run.params, run.model_state)
  return Plan.uniform(scheme, layer_paths(model), smooth_alpha=smooth_alpha,
                      timestep_groups=timestep_groups)


def calibration_inputs(run, repeats: int = CALIBRATION_REPEATS, seed: int = 0):
  """(key, shape, cond, options) of the calibration trajectories: the run's sample prompts (or
  labels), each from `repeats` noise draws, with its sampler's steps, shift and guidance."""
  config = run.config
  sampler = run.sampler()
  prompts = list(sampler.prompts) * repeats
  if config.model.conditioning == "text":
    _, cond = sampler.condition(prompts)
  else:
    _, cond = sampler.condition([int(p.split()[-1]) for p in prompts])
  shape = (len(prompts), *sampler.shape[1:])
  num_tokens = num_video_tokens(config.train.video_shape, config.model.patch_size)
  options = dict(num_steps=config.sample.num_steps, shift=sampling_shift(config, num_tokens),
                 guidance_scale=config.sample.guidance_scale,
                 guidance_interval=guidance_interval(config.sample))
  return jax.random.key(seed), shape, cond, options


def example_call(shape, cond) -> tuple:
  """(args, kwargs) of one model call on a batch of `shape` under cond (shapes only)."""
  return (jnp.zeros(shape, jnp.float32), jnp.ones(shape[:1])), dict(cond)


def calibrate_run(run, repeats: int = CALIBRATION_REPEATS) -> calibration.Ranges:
  """The ranges of the run's model on its own trajectories (calibration_inputs)."""
  model = nnx.merge(run.graphdef, run.params, run.model_state)
  key, shape, cond, options = calibration_inputs(run, repeats)
  return calibration.calibrate(model, key, shape, cond, **options)


def quantize_run(run, plan: Plan, *, repeats: int = CALIBRATION_REPEATS,
                 ranges: calibration.Ranges | None = None, **extra):
  """(quantized model, manifest dict): the run's model calibrated on its own trajectories
  (if the plan quantizes activations and no ranges are given) and quantized by `plan`;
  extra: more for the manifest."""
  model = nnx.merge(run.graphdef, run.params, run.model_state)
  _, shape, cond, options = calibration_inputs(run, repeats)
  needs_ranges = any(plan.scheme(p).act_qtype is not None for p in plan.layers)
  if needs_ranges and ranges is None:
    ranges = calibrate_run(run, repeats)
  quantized = quantize_dit(model, plan, ranges, example_call(shape, cond))
  manifest = dict(
      plan=dataclasses.asdict(plan), step=int(run.step),
      sigmas=[] if ranges is None else [float(s) for s in ranges.sigmas],
      calibration=dict(prompts=shape[0], **{k: v for k, v in options.items()
                                             if k != "guidance_interval"}),
      range_spread={} if ranges is None else {k: round(v, 3)
                                                for k, v in ranges.spread().items()},
      bytes=dict(quantized=model_bytes(quantized), full_precision=model_bytes(model)), **extra)
  return quantized, manifest


def save(directory: str, quantized: nnx.Module, manifest: dict) -> None:
  """Writes the quantized model to `directory` (a new folder), all or nothing: every process
  writes its shards into one temporary folder (a killed save's is replaced), process 0 adds
  the manifest and renames it."""
  parent, name = os.path.split(directory)
  partial = os.path.join(parent, f".partial_{name}")
  lead = jax.process_index() == 0
  if lead:
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(partial):  # an unfinished save: never a saved model
      shutil.rmtree(partial)
  _sync("quantized model: folder ready")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(partial, "state"), nnx.to_pure_dict(nnx.state(quantized)))
  checkpointer.wait_until_finished()
  if lead:
    with open(os.path.join(partial, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
    os.rename(partial, directory)
  _sync("quantized model: saved")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def load(directory: str, run) -> nnx.Module:
  """The quantized model saved in `directory` for this run's model."""
  with open(os.path.join(directory, MANIFEST)) as f:
    manifest = json.load(f)
  plan = Plan(**manifest["plan"])
  _, shape, cond, _ = calibration_inputs(run, 1)
  model = nnx.merge(run.graphdef, run.params, run.model_state)
  abstract = nnx.eval_shape(lambda: quantize_dit(model, plan, _stand_in_ranges(model, manifest),
                                                 example_call((1, *shape[1:]), _first(cond))))
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        nnx.to_pure_dict(nnx.state(abstract)))
  values = ocp.StandardCheckpointer().restore(os.path.join(directory, "state"), target)
  nnx.update(abstract, values)
  return abstract


def _first(cond: dict) -> dict:
  return {k: v[:1] for k, v in cond.items()}


def _stand_in_ranges(model, manifest) -> calibration.Ranges | None:
  """Ranges of the right shapes and noise levels (the values are restored, not used)."""
  if not manifest["sigmas"]:
    return None
  unstacked = model.unstacked(remat="none")
  sigmas = np.asarray(manifest["sigmas"], np.float32)
  inputs = {}
  for path, module in nnx.iter_modules(unstacked):
    name = "/".join(map(str, path))
    if name in manifest["plan"]["layers"]:
      inputs[name] = np.ones((len(sigmas), module.in_features), np.float32)
  return calibration.Ranges(sigmas, inputs)


def quantized_run(run, name: str, plan: Plan | None = None):
  """The run with its model quantized (a copy: graphdef, params and model_state replaced), as
  saved under <workdir>/quantized/<step>/<name> (<name>_raw for a run opened with ema=False),
  or made now and saved there: `plan`, or for a scheme name (schemes.SCHEMES) every block
  linear with that scheme. A LoRA run must be opened with its adapters merged."""
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
    raise ValueError(f"quantized model name {name!r}: use letters, digits, '_', '-' and '.'")
  directory = quantized_dir(run.workdir, run.step, name if run.ema else f"{name}_raw")
  if os.path.isdir(directory):
    with open(os.path.join(directory, MANIFEST)) as f:
      saved = json.load(f)
    if plan is not None and Plan(**saved["plan"]) != plan:
      raise ValueError(f"{directory} holds another plan under the name {name!r}; give this one "
                       "another name (it is never overwritten)")
    _warn_if_calibrated_otherwise(run, saved)
    return _with_model(run, load(directory, run))
  if plan is None:
    if name not in SCHEMES:
      raise ValueError(f"no quantized model {name!r} at {directory}; quantize with a scheme "
                       f"of {sorted(SCHEMES)} or make the plan (python -m quantization.mixed)")
    plan = default_plan(run, name)
  logging.info("quantizing %s at step %d: %s", run.workdir, run.step, name)
  quantized, manifest = quantize_run(run, plan)
  save(directory, quantized, manifest)
  return _with_model(run, quantized)


def _warn_if_calibrated_otherwise(run, saved: dict) -> None:
  """A saved model's activation scales were calibrated with the sampler settings it records;
  sampling with others uses them still: said, not refused."""
  if not saved["sigmas"]:
    return
  _, _, _, options = calibration_inputs(run, 1)
  recorded = saved["calibration"]
  changed = [f"{k} {recorded[k]} -> {options[k]}" for k in ("num_steps", "shift",
                                                             "guidance_scale")
             if k in recorded and recorded[k] != options[k]]
  if changed:
    logging.warning("the quantized model's activation scales were calibrated with other "
                    "sampler settings (%s); quantize under another name to calibrate for these",
                    ", ".join(changed))


def _with_model(run, quantized: nnx.Module):
  graphdef, params, model_state = nnx.split(quantized, nnx.Param, ...)
  return dataclasses.replace(run, graphdef=graphdef, params=params, model_state=model_state)
