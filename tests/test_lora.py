"""LoRA fine-tuning through qwix (training/lora.py, configs/lora.py): adapters that start at the
base model, train alone on a frozen base, are all a checkpoint holds, and merge into the
weights to compute what they compute attached."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.common import LORA_LAYERS, lora_config
from configs.lora import get_config as lora_run_config
from dit.config import DiTConfig
from dit.model import BLOCK_LINEARS, DiT
from configs.common import model_config
from training import lora as lora_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_base(key, randomize):
  config = DiTConfig.from_dict(model_config("tiny", in_channels=3, dtype="float32"))
  base = DiT(config, rngs=nnx.Rngs(0))
  randomize(base, key, 0.05)
  return config, base


def inputs(key):
  kv, kt, kx = jax.random.split(key, 3)
  return (jax.random.normal(kv, (2, 4, 8, 8, 3)), jax.random.uniform(kt, (2,)),
          dict(text=jax.random.normal(kx, (2, 6, 384))))


def adapted(config, base, lora):
  """(graphdef, adapters, base weights) of the LoRA network on `base`."""
  graphdef, adapters, _ = nnx.split(lora_lib.lora_network(config, lora, 0), nnx.LoRAParam, ...)
  return graphdef, adapters, lora_lib.base_state(nnx.state(base, nnx.Param), config)


def test_the_default_layers_are_the_blocks_linears():
  assert LORA_LAYERS == BLOCK_LINEARS


def test_at_init_the_adapters_leave_the_model_unchanged(key, randomize):
  config, base = tiny_base(key, randomize)
  graphdef, adapters, weights = adapted(config, base, lora_config(rank=4))
  video, t, cond = inputs(jax.random.fold_in(key, 1))
  np.testing.assert_allclose(nnx.merge(graphdef, adapters, weights)(video, t, **cond),
                             base(video, t, **cond), rtol=1e-4, atol=1e-4)
  shapes = nnx.to_pure_dict(adapters)["single_blocks"][0]["stream"]["qkv"]
  assert shapes["kernel_lora_a"].shape == (64, 4) and shapes["kernel_lora_b"].shape == (4, 192)


def test_merged_adapters_compute_what_attached_ones_do(key, randomize):
  config, base = tiny_base(key, randomize)
  lora = lora_config(rank=4, alpha=8.0, layers=r".*/(qkv|mlp/down)")
  graphdef, adapters, weights = adapted(config, base, lora)
  keys = iter(jax.random.split(jax.random.fold_in(key, 2), 64))
  trained = jax.tree.map(lambda a: 0.1 * jax.random.normal(next(keys), a.shape), adapters)
  video, t, cond = inputs(jax.random.fold_in(key, 1))
  attached = nnx.merge(graphdef, trained, weights)(video, t, **cond)
  assert float(jnp.abs(attached - base(video, t, **cond)).max()) > 1e-2  # they do something
  merged = nnx.merge(*lora_lib.merged_params(graphdef, trained, weights, config, lora))
  assert isinstance(merged, DiT) and not isinstance(merged.single_blocks, nnx.List)
  np.testing.assert_allclose(merged(video, t, **cond), attached, rtol=1e-4, atol=1e-4)


def test_adapters_train_under_remat_as_without_it(key, randomize):
  grads = {}
  _, base = tiny_base(key, randomize)  # random weights: no block is adaLN-Zero's identity
  for remat in ("none", "full"):
    config = DiTConfig.from_dict(model_config("tiny", in_channels=3, dtype="float32",
                                              remat=remat))
    graphdef, adapters, rest = adapted(config, base, lora_config(rank=2))
    adapters = jax.tree.map(lambda a: a + 0.01, adapters)  # B away from zero: A gets a gradient
    video, t, cond = inputs(key)

    def loss(adapters):
      return jnp.mean(nnx.merge(graphdef, adapters, rest)(video, t, **cond) ** 2)

    grads[remat] = jax.jit(jax.grad(loss))(adapters)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads["full"], grads["none"])
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["full"]))


def test_layers_that_match_nothing_are_an_error(key, randomize):
  config, _ = tiny_base(key, randomize)
  with pytest.raises(ValueError, match="matches no layer"):
    lora_lib.lora_network(config, lora_config(rank=2, layers="nothing/here"), 0)


def test_a_lora_run_trains_only_its_adapters_and_saves_only_them(tiny_run, tmp_path):
  import train  # noqa: PLC0415
  from rundir.open_run import open_run  # noqa: PLC0415
  from training import checkpoints  # noqa: PLC0415

  workdir = str(tmp_path / "lora")
  config = lora_run_config(f"base={tiny_run},rank=2,steps=2")
  config.train.log_every = 1
  first = train.train(config, workdir)
  with open_run(str(tiny_run)) as base_run:
    base = lora_lib.base_state(base_run.params, base_run.model)
  # The base weights the run trained on are the base run's EMA weights, bit for bit.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(first.model_state),
               jax.device_get(base))
  fanout = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(first.params)) if "kernel_lora_b" in jax.tree_util.keystr(path)]
  assert fanout and all(float(jnp.abs(b).max()) > 0 for b in fanout)  # zero at init: trained
  saved = checkpoints._leaf_paths(_saved_state(workdir, 2))
  assert saved and all("lora" in path for path in saved if path.startswith(("params", "ema")))
  assert not any(path.startswith("model_state") for path in saved)  # no base weights saved
  assert not any(path.endswith("kernel") or "/kernel/" in path for path in saved)
  # Resumed: the base is found again from train.init_from; the adapters carry on, bit for bit
  # as in a run that did not stop.
  config = lora_run_config(f"base={tiny_run},rank=2,steps=4")
  resumed = train.train(config, workdir)
  assert int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.model_state),
               jax.device_get(base))
  straight = train.train(lora_run_config(f"base={tiny_run},rank=2,steps=4"),
                         str(tmp_path / "straight"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
               jax.device_get(straight.params))
  key = jax.random.key(3)
  with open_run(workdir) as run:
    attached = run.sampler().generate(run.params, key)
  with open_run(workdir, merge_lora=True) as run:
    merged = run.sampler().generate(run.params, key)
  np.testing.assert_allclose(merged, attached, atol=1e-4)
  from rundir.config_file import load_config  # noqa: PLC0415
  sparse = load_config(workdir)  # the base's step pinned in it
  sparse.sample.sparse.attention = "window"
  with open_run(workdir, config=sparse) as run:  # with_attention: only merged adapters count
    assert not isinstance(nnx.merge(run.graphdef, run.params, run.model_state).single_blocks,
                          nnx.List)
  from quantization.saved import quantized_run  # noqa: PLC0415
  with open_run(workdir) as run, pytest.raises(ValueError, match="merge them"):
    quantized_run(run, "w8")
  result = subprocess.run([sys.executable, "sample.py", f"--workdir={workdir}", "--merge_lora",
                           "--num_steps=2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  bad = subprocess.run([sys.executable, "sample.py", f"--workdir={tiny_run}", "--merge_lora"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "is not a LoRA run" in bad.stderr


def _saved_state(workdir, step):
  import orbax.checkpoint as ocp  # noqa: PLC0415
  from etils import epath  # noqa: PLC0415
  directory = epath.Path(workdir) / "checkpoints" / str(step) / "state"
  return ocp.PyTreeCheckpointHandler().metadata(directory).tree


def test_a_lora_config_needs_a_base_run(tmp_path):
  from configs.checks import validate_config  # noqa: PLC0415
  from configs.quickstart import get_config  # noqa: PLC0415

  config = get_config("tiny")
  config.unlock()
  config.lora = lora_config(rank=4)
  with pytest.raises(ValueError, match="set train.init_from"):
    validate_config(config)
  with pytest.raises(FileNotFoundError, match="is not a train.py run"):
    lora_run_config(f"base={tmp_path}")
