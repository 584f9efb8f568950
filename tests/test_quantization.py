"""Post-training quantization through qwix (quantization/): each scheme stays close to the full
precision model, SmoothQuant's transform changes nothing in full precision, timestep groups pick
their own activation scales, and a saved quantized model reloads to the same outputs."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.common import model_config
from dit.config import DiTConfig
from dit.model import DiT
from quantization import calibration
from quantization.quantize import Plan, layer_paths, model_bytes, quantize_dit, smooth_dit
from quantization.schemes import SCHEMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(key, randomize):
  model = DiT(DiTConfig.from_dict(model_config("tiny", in_channels=3, dtype="float32")),
              rngs=nnx.Rngs(0))
  randomize(model, key, 0.05)
  return model


def text_inputs(key, batch=2, shape=(4, 8, 8, 3), length=6):
  kv, kt, kx = jax.random.split(key, 3)
  mask = jnp.arange(length)[None, :] < jnp.array([[length - 2], [length]])[:batch]
  return (jax.random.normal(kv, (batch, *shape)), jax.random.uniform(kt, (batch,)),
          dict(text=jax.random.normal(kx, (batch, length, 384)), text_mask=mask))


def ranges_of(model, key, num_steps=4):
  video, _, cond = text_inputs(key)
  return calibration.calibrate(model, key, video.shape, cond, num_steps=num_steps,
                               shift=3.0, guidance_scale=2.0)


def relative_error(out, ref):
  return float(jnp.abs(out - ref).mean() / jnp.abs(ref).mean())


def test_unstacked_blocks_compute_what_the_stacked_ones_do(key, randomize):
  model = tiny_model(key, randomize)
  video, t, cond = text_inputs(jax.random.fold_in(key, 1))
  unstacked = model.unstacked()
  assert isinstance(unstacked.single_blocks, nnx.List) and len(unstacked.single_blocks) == 2
  np.testing.assert_allclose(unstacked(video, t, **cond), model(video, t, **cond),
                             rtol=1e-4, atol=1e-4)


def test_the_observer_records_each_layers_input_maximum_per_channel(key):

  class Two(nnx.Module):
    def __init__(self):
      self.first = nnx.Linear(5, 7, rngs=nnx.Rngs(0))
      self.second = nnx.Linear(7, 3, rngs=nnx.Rngs(1))

    def __call__(self, x):
      return self.second(jax.nn.relu(self.first(x)))

  x = jax.random.normal(key, (4, 6, 5))
  model = Two()
  observed, observer = calibration.observing(model, (x,), {}, module_path=".*")
  np.testing.assert_allclose(observed(x), model(x), rtol=1e-6)
  np.testing.assert_allclose(observer.seen["first"], np.abs(x).max(axis=(0, 1)), rtol=1e-6)
  hidden = jax.nn.relu(model.first(x))
  np.testing.assert_allclose(observer.seen["second"], np.abs(hidden).max(axis=(0, 1)),
                             rtol=1e-6)


# Mean relative error of the velocity on fresh inputs, per scheme: measured 0.0006 (w8), 0.011
# (w4), 0.002-0.003 (w8a8) and 0.004-0.005 (fp8) on seeds of this model.
BOUNDS = dict(w8=0.003, w4=0.04, w8a8=0.012, w8a8_fp8=0.02)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_each_scheme_stays_close_to_full_precision(key, randomize, scheme):
  model = tiny_model(key, randomize)
  ranges = ranges_of(model, jax.random.fold_in(key, 1))
  video, t, cond = text_inputs(jax.random.fold_in(key, 2))
  plan = Plan.uniform(scheme, layer_paths(model))
  quantized = quantize_dit(model, plan, ranges, ((video, t), cond))
  out, ref = quantized(video, t, **cond), model(video, t, **cond)
  assert 0 < relative_error(out, ref) < BOUNDS[scheme]
  held = {str(leaf.dtype) for leaf in jax.tree.leaves(nnx.state(quantized))}
  assert SCHEMES[scheme].weight in held  # the weights really are stored quantized
  assert model_bytes(quantized) < model_bytes(model) / (2.5 if scheme == "w4" else 2)
  graphdef, state = nnx.split(quantized)  # as the samplers run it: merged inside jit
  jitted = jax.jit(lambda state: nnx.merge(graphdef, state)(video, t, **cond))(state)
  np.testing.assert_allclose(jitted, out, rtol=1e-4, atol=1e-4)


def test_smoothing_alone_changes_nothing_in_full_precision(key, randomize):
  model = tiny_model(key, randomize)
  ranges = ranges_of(model, jax.random.fold_in(key, 1))
  video, t, cond = text_inputs(jax.random.fold_in(key, 2))
  plan = Plan.uniform("w8a8", layer_paths(model), smooth_alpha=0.8)
  smooth = smooth_dit(model, plan, ranges, ((video, t), cond))
  qkv = smooth.single_blocks[0].stream.qkv
  kernel = model.unstacked().single_blocks[0].stream.qkv.kernel[...]
  assert float(jnp.abs(qkv.kernel.array[...] - kernel).max()) > 0.1  # the weights did move
  np.testing.assert_allclose(smooth(video, t, **cond), model(video, t, **cond),
                             rtol=1e-4, atol=1e-4)


def test_a_timestep_group_uses_the_scales_calibrated_on_its_noise_levels(key, randomize):
  model = tiny_model(key, randomize)
  ranges = ranges_of(model, jax.random.fold_in(key, 1), num_steps=6)
  video, _, cond = text_inputs(jax.random.fold_in(key, 2))
  paths = layer_paths(model)
  grouped = quantize_dit(model, Plan.uniform("w8a8", paths, smooth_alpha=None,
                                             timestep_groups=3), ranges, ((video, ranges.sigmas[:2]), cond))
  for steps in ranges.groups(3):
    alone = calibration.Ranges(ranges.sigmas[steps],
                               {p: m[steps] for p, m in ranges.channel_max.items()})
    single = quantize_dit(model, Plan.uniform("w8a8", paths, smooth_alpha=None), alone,
                          ((video, ranges.sigmas[:2]), cond))
    t = jnp.full((2,), ranges.sigmas[steps[0]])
    np.testing.assert_allclose(grouped(video, t, **cond), single(video, t, **cond), rtol=1e-5,
                               atol=1e-5)


def test_a_model_with_remat_calibrates_as_without_it(key, randomize):
  model = tiny_model(key, randomize)
  remat = DiT(DiTConfig.from_dict(model_config("tiny", in_channels=3, dtype="float32",
                                               remat="full")), rngs=nnx.Rngs(0))
  nnx.update(remat, nnx.state(model, nnx.Param))
  expected, found = ranges_of(model, key), ranges_of(remat, key)
  for path, channel_max in expected.channel_max.items():
    np.testing.assert_allclose(found.channel_max[path], channel_max, rtol=1e-5)


def test_activation_schemes_need_calibrated_ranges(key, randomize):
  model = tiny_model(key, randomize)
  video, t, cond = text_inputs(key)
  with pytest.raises(ValueError, match="calibrated ranges"):
    quantize_dit(model, Plan.uniform("w8a8", layer_paths(model)), None, ((video, t), cond))
  with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
    Plan.uniform("int3", layer_paths(model))


@pytest.fixture
def run_copy(tiny_run, tmp_path):
  """A copy of the tiny quick-start run (its folder gets quantized models)."""
  return shutil.copytree(tiny_run, tmp_path / "run")


def test_a_saved_quantized_model_reloads_to_the_same_videos(run_copy):
  from quantization.saved import default_plan, quantized_dir, quantized_run  # noqa: PLC0415
  from rundir.open_run import open_run  # noqa: PLC0415

  key = jax.random.key(7)
  with open_run(str(run_copy)) as run:
    made = quantized_run(run, "w8a8")  # calibrated, quantized and saved
    directory = quantized_dir(str(run_copy), run.step, "w8a8")
    saved = json.load(open(os.path.join(directory, "quantization.json")))
    assert saved["step"] == run.step and saved["bytes"]["quantized"] < saved["bytes"][
        "full_precision"]
    loaded = quantized_run(run, "w8a8")  # read back
    first = made.sampler().generate(made.params, key)
    np.testing.assert_array_equal(loaded.sampler().generate(loaded.params, key), first)
    assert np.abs(first - run.sampler().generate(run.params, key)).max() > 0
    with pytest.raises(ValueError, match="another plan under the name 'w8a8'"):
      quantized_run(run, "w8a8", default_plan(run, "w8a8", smooth_alpha=0.3))
    with pytest.raises(ValueError, match="no quantized model 'mine'"):
      quantized_run(run, "mine")
  assert json.load(open(os.path.join(directory, "quantization.json"))) == saved  # kept


def test_sample_py_and_eval_take_a_quantized_model(run_copy):
  command = [sys.executable, "sample.py", f"--workdir={run_copy}", "--quantize=w8",
             "--num_steps=2"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(run_copy / "samples" / "sample_6_w8" / "grid.png")
  assert os.path.isdir(run_copy / "quantized" / "6" / "w8" / "state")
  command = [sys.executable, "-m", "eval", f"--workdir={run_copy}", "--quantize=w8",
             "--num_videos=4", "--metrics=digits"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.load(open(run_copy / "eval" / "metrics_6_w8.json"))
  assert saved["quantized"] == "w8" and np.isfinite(saved["metrics"]["digit_accuracy"])
  bad = subprocess.run([sys.executable, "sample.py", f"--workdir={run_copy}", "--quantize=w3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "no quantized model 'w3'" in bad.stderr


def random_layers(rng, count):
  from quantization.mixed import Layer  # noqa: PLC0415
  schemes = ("w4", "w8", "w8a8")
  return [Layer(f"layer{i}", int(rng.integers(100, 1000)), int(rng.integers(1000, 10000)),
                dict(zip(schemes, sorted(rng.uniform(0, 1, 3))[::-1])))
          for i in range(count)]


@pytest.mark.parametrize("bits,activations", [(6.0, 0.0), (8.0, 0.5), (12.0, 0.3), (20.0, 0.0)])
def test_the_mixed_choice_is_the_best_one_within_its_budget(seed, bits, activations):
  import itertools  # noqa: PLC0415
  from quantization.mixed import FULL, budget, choose  # noqa: PLC0415

  layers = random_layers(np.random.default_rng(seed), 4)
  choice = choose(layers, bits=bits, activations=activations)
  spent = budget(layers, choice)
  assert spent["bits"] <= bits + 1e-9 and spent["activations"] >= activations - 1e-9
  best = min(
      (budget(layers, dict(zip([l.path for l in layers], combo)))["error"]
       for combo in itertools.product(("w4", "w8", "w8a8", FULL), repeat=len(layers))
       if (lambda b: b["bits"] <= bits + 1e-9 and b["activations"] >= activations - 1e-9)(
           budget(layers, dict(zip([l.path for l in layers], combo))))))
  assert spent["error"] == pytest.approx(best, abs=1e-9)  # brute force agrees


def test_a_budget_no_choice_meets_is_a_clear_error(seed):
  from quantization.mixed import choose  # noqa: PLC0415

  with pytest.raises(ValueError, match="no choice of schemes meets the budget"):
    choose(random_layers(np.random.default_rng(seed), 3), bits=3.0)
  with pytest.raises(ValueError, match="no choice of schemes meets the budget"):
    choose(random_layers(np.random.default_rng(seed), 3), bits=6.0, activations=0.9)


def test_sensitivity_is_measured_per_layer_and_scheme(key, randomize):
  from quantization.mixed import measure  # noqa: PLC0415

  model = tiny_model(key, randomize)
  ranges = ranges_of(model, jax.random.fold_in(key, 1))
  _, _, cond = text_inputs(key)
  paths = ["single_blocks/1/stream/mlp/down", "dual_blocks/0/video/qkv"]
  layers = measure(model, ranges, cond, ["w4", "w8"], paths, smooth_alpha=None, steps=2)
  assert [layer.path for layer in layers] == paths
  for layer in layers:
    assert 0 < layer.errors["w8"] < layer.errors["w4"]  # fewer bits, more error
  down = layers[0]
  assert down.params == model.config.mlp_hidden_size * model.config.hidden_size
  assert down.macs == down.params * (4 * 8 * 8 // (1 * 2 * 2) + 6)  # rows: video + text tokens
