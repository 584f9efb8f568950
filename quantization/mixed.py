"""Mixed precision: each layer's scheme chosen by measured sensitivity under a budget.

Sensitivity (as in HAWQ's and ViDiT-Q's layer-wise analysis): for every layer and candidate
scheme, quantize that layer alone and measure the relative squared error of the model's
velocity on states of its own calibration trajectories. Assuming the errors add up, the
choice is a small integer programme (scipy's HiGHS MILP):

    minimize   sum_l sum_s  error[l, s] x[l, s]
    subject to sum_s x[l, s] = 1                                    one scheme per layer
               sum_l sum_s  bits[s] params[l] x[l, s] <= bits * sum_l params[l]
               sum_l sum_s  act[s] macs[l] x[l, s] >= activations * sum_l macs[l]
               x binary

where a layer may also stay in full precision ("fp": error 0, 16 or 32 bits), bits[s] is the
scheme's weight bits, act[s] is 1 where it quantizes activations (the matmuls that run in 8
bits) and macs[l] = in * out * rows, the layer's multiply-adds per video.

    python -m quantization.mixed --workdir=runs/quickstart --bits=8 --activations=0.9
    python sample.py --workdir=runs/quickstart --quantize=mixed
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from scipy import optimize

from quantization.calibration import Ranges
from quantization.quantize import Plan, quantize_dit
from quantization.schemes import get_scheme

FULL = "fp"  # a layer left in full precision


@dataclasses.dataclass
class Layer:
  """What the programme knows of a layer: its parameters, its multiply-adds per video and,
  per candidate scheme, its measured error."""
  path: str
  params: int
  macs: int
  errors: dict


def measure(model: nnx.Module, ranges: Ranges, cond: dict, schemes: list[str],
            paths: list[str], *, smooth_alpha: float | None, timestep_groups: int = 1,
            steps: int = 5) -> list[Layer]:
  """Each layer's error under each scheme, quantized alone: the mean over `steps` of the
  trajectories' steps (spread over the noise levels) of |v_q - v|^2 / |v|^2, the velocity of
  the conditional model (cond: the calibration prompts) at those states. model: a DiT;
  ranges: calibration.calibrate on it (with its states)."""
  if ranges.states is None:
    raise ValueError("measuring sensitivity needs the calibration's states (calibrate keeps "
                     "them)")
  picked = np.unique(np.linspace(0, len(ranges.sigmas) - 1, steps).round().astype(int))
  inputs = [(jnp.asarray(ranges.states[i]), jnp.full(ranges.states.shape[1:2],
                                                       ranges.sigmas[i])) for i in picked]
  example = (inputs[0], cond)

  def velocities(m):
    graphdef, state = nnx.split(m)
    call = jax.jit(lambda state, x, t: nnx.merge(graphdef, state)(x, t, **cond))
    return [call(state, x, t) for x, t in inputs]

  reference = velocities(model)
  kernels = {"/".join(map(str, p)): m
             for p, m in nnx.iter_modules(model.unstacked(remat="none"))}
  layers = []
  for path in paths:
    errors = {}
    for scheme in schemes:
      plan = Plan({path: scheme}, smooth_alpha=smooth_alpha,
                  timestep_groups=min(timestep_groups, len(ranges.sigmas)))
      quantized = quantize_dit(model, plan, ranges, example)
      errors[scheme] = float(np.mean([
          jnp.sum((v - r) ** 2) / jnp.sum(r ** 2)
          for v, r in zip(velocities(quantized), reference)]))
    kernel = kernels[path].kernel
    layers.append(Layer(path, int(kernel.size), int(kernel.size * ranges.rows[path]), errors))
  return layers


def choose(layers: list[Layer], *, bits: float, activations: float = 0.0,
           full_bits: int = 32) -> dict[str, str]:
  """{path: scheme or "fp"} minimizing the summed errors with at most `bits` weight bits per
  parameter on average and at least the share `activations` of the multiply-adds with
  quantized activations; full_bits: a full-precision weight's bits."""
  options = [(i, s) for i, layer in enumerate(layers) for s in (*layer.errors, FULL)]
  cost = np.array([0.0 if s == FULL else layers[i].errors[s] for i, s in options])
  weight_bits = np.array([(full_bits if s == FULL else get_scheme(s).weight_bits)
                          * layers[i].params for i, s in options], float)
  quantized_macs = np.array([0.0 if s == FULL or get_scheme(s).act_qtype is None
                             else layers[i].macs for i, s in options])
  one_each = np.zeros((len(layers), len(options)))
  for j, (i, _) in enumerate(options):
    one_each[i, j] = 1
  total_params = sum(layer.params for layer in layers)
  total_macs = sum(layer.macs for layer in layers)
  constraints = [optimize.LinearConstraint(one_each, 1, 1),
                 optimize.LinearConstraint(weight_bits[None], -np.inf, bits * total_params),
                 optimize.LinearConstraint(quantized_macs[None], activations * total_macs,
                                           np.inf)]
  result = optimize.milp(cost, constraints=constraints, integrality=np.ones(len(options)),
                         bounds=optimize.Bounds(0, 1))
  if not result.success:
    least = min(get_scheme(s).weight_bits for layer in layers for s in layer.errors)
    raise ValueError(f"no choice of schemes meets the budget (bits={bits} per weight, "
                     f"activations={activations} of the multiply-adds): {result.message}; the "
                     f"candidates need at least {least} bits, and only schemes with quantized "
                     "activations count towards --activations")
  chosen = np.asarray(result.x).round().astype(bool)
  return {layers[i].path: s for (i, s), take in zip(options, chosen) if take}


def budget(layers: list[Layer], choice: dict[str, str], full_bits: int = 32) -> dict:
  """What a choice spends: average weight bits per parameter, the share of multiply-adds with
  quantized activations, and the summed measured error."""
  params = sum(layer.params for layer in layers)
  macs = sum(layer.macs for layer in layers)
  bits = acts = error = 0.0
  for layer in layers:
    scheme = choice[layer.path]
    if scheme == FULL:
      bits += full_bits * layer.params
      continue
    bits += get_scheme(scheme).weight_bits * layer.params
    acts += layer.macs if get_scheme(scheme).act_qtype is not None else 0
    error += layer.errors[scheme]
  return dict(bits=bits / params, activations=acts / macs, error=error)


def main(argv):
  from quantization import saved  # noqa: PLC0415
  from rundir.logs import quiet_library_logs  # noqa: PLC0415
  from rundir.open_run import open_run  # noqa: PLC0415

  del argv
  quiet_library_logs()
  FLAGS = flags.FLAGS
  schemes = list(FLAGS.schemes)
  for scheme in schemes:
    get_scheme(scheme)  # an unknown name is an error before the run is opened
  from configs.common import uses_lora  # noqa: PLC0415
  from rundir.config_file import load_config  # noqa: PLC0415

  # A LoRA run is quantized with its adapters merged into its weights.
  with open_run(FLAGS.workdir, merge_lora=uses_lora(load_config(FLAGS.workdir))) as run:
    directory = saved.quantized_dir(run.workdir, run.step, FLAGS.name)
    if os.path.exists(directory):
      raise app.UsageError(f"{directory} exists (it is never overwritten): pass another --name")
    model = nnx.merge(run.graphdef, run.params, run.model_state)
    print(f"calibrating {run.workdir} at step {run.step} on its own trajectories")
    ranges = saved.calibrate_run(run)
    _, _, cond, _ = saved.calibration_inputs(run)
    groups = min(saved.TIMESTEP_GROUPS, len(ranges.sigmas))
    paths = sorted(ranges.channel_max)
    layers = measured(model, ranges, cond, schemes, paths, groups,
                      os.path.dirname(directory))
    full_bits = jnp.dtype(run.config.model.param_dtype).itemsize * 8
    try:
      choice = choose(layers, bits=FLAGS.bits, activations=FLAGS.activations,
                      full_bits=full_bits)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    spent = budget(layers, choice, full_bits)
    plan = Plan({p: s for p, s in choice.items() if s != FULL},
                smooth_alpha=saved.SMOOTH_ALPHA, timestep_groups=groups)
    quantized, manifest = saved.quantize_run(
        run, plan, ranges=ranges, mixed=dict(
            bits=FLAGS.bits, activations=FLAGS.activations, spent=spent,
            choice=choice, errors={layer.path: layer.errors for layer in layers}))
    saved.save(directory, quantized, manifest)
  counts = {s: list(choice.values()).count(s) for s in (*schemes, FULL)}
  print("chosen: " + ", ".join(f"{n} layers {s}" for s, n in counts.items() if n))
  print(f"spent {spent['bits']:.2f} bits per weight (budget {FLAGS.bits}), quantized "
        f"activations in {spent['activations']:.1%} of the multiply-adds (at least "
        f"{FLAGS.activations:.0%}); summed error {spent['error']:.3g}")
  print(f"wrote {directory}: sample it with python sample.py --workdir={FLAGS.workdir} "
        f"--quantize={FLAGS.name}")


def measured(model, ranges, cond, schemes, paths, groups, folder) -> list[Layer]:
  """measure(), or what it gave before for the same settings, read back from
  <folder>/sensitivity.json (each new scheme's errors are added to it)."""
  from quantization import saved  # noqa: PLC0415

  path = os.path.join(folder, "sensitivity.json")
  settings = dict(smooth_alpha=saved.SMOOTH_ALPHA, timestep_groups=groups,
                  calibration_steps=len(ranges.sigmas))
  from rundir.keep import keep_earlier  # noqa: PLC0415

  known, stored_matches = {}, False
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored["settings"] == settings:
      known, stored_matches = {layer["path"]: layer for layer in stored["layers"]}, True
  missing = [s for s in schemes if not all(s in known.get(p, {}).get("errors", {})
                                           for p in paths)]
  if missing:
    print(f"measuring {len(paths)} layers x {len(missing)} schemes ({', '.join(missing)})")
    for layer in measure(model, ranges, cond, missing, paths,
                         smooth_alpha=saved.SMOOTH_ALPHA, timestep_groups=groups):
      entry = known.setdefault(layer.path, dataclasses.asdict(layer) | dict(errors={}))
      entry["errors"].update(layer.errors)
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(path) and not stored_matches:  # other settings' measurements: kept
      keep_earlier(path)
    with open(path + ".partial", "w") as f:
      json.dump(dict(settings=settings, layers=list(known.values())), f, indent=1)
    os.replace(path + ".partial", path)
  return [Layer(p, known[p]["params"], known[p]["macs"],
                {s: known[p]["errors"][s] for s in schemes}) for p in paths]


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The train.py run to quantize (its latest checkpoint).",
                      required=True)
  flags.DEFINE_float("bits", 6.0, "Budget: average weight bits per parameter of the block "
                     "linears.")
  flags.DEFINE_float("activations", 0.0, "Budget: the least share of the block linears' "
                     "multiply-adds whose activations are quantized, in [0, 1].")
  flags.DEFINE_list("schemes", ["w4", "w8", "w8a8", "w8a8_fp8"], "Candidate schemes per layer "
                    "(a layer may also stay in full precision).")
  flags.DEFINE_string("name", "mixed", "Saved as <workdir>/quantized/<step>/<name>.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
