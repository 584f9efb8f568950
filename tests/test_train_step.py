import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import video_dit
from configs.common import MODEL_SIZES, flow_config, model_config, optim_config
from diffusion.flow_matching import flow_matching_loss
from dit.config import DiTConfig
from dit.model import DiT
from training import train_step as ts
from training.count_params import count_params
from training.optimizer import decay_mask, learning_rate_schedule, make_optimizer
from training.train_state import init_train_state


def dit_config(size, **overrides):
  return DiTConfig.from_dict(model_config(size, **overrides))


def test_a_tiny_model_overfits_one_batch():
  """One fixed batch (videos, labels, noise and timesteps): the loss falls by 90% or more."""
  config = dit_config("tiny", in_channels=3, conditioning="label")
  optimizer = make_optimizer(optim_config(lr=3e-3, warmup_steps=10, decay_steps=300))
  graphdef, state = init_train_state(DiT(config, rngs=nnx.Rngs(0)), optimizer)
  step = jax.jit(ts.make_train_step(graphdef, optimizer, flow_config(cond_dropout=0.0),
                                    config.patch_size))
  key = jax.random.key(0)
  batch = {"video": jax.random.uniform(key, (4, 2, 8, 8, 3), minval=-1, maxval=1),
           "label": jnp.arange(4)}
  losses = []
  for _ in range(300):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 300
  assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])


def test_one_jitted_training_step_of_the_b_class_model_runs_on_cpu(key):
  config = video_dit.get_config("size=B")
  assert config.model.hidden_size == 768
  model = DiT(DiTConfig.from_dict(config.model), rngs=nnx.Rngs(0))
  optimizer = make_optimizer(config.optim)
  graphdef, state = init_train_state(model, optimizer)
  step = jax.jit(ts.make_train_step(graphdef, optimizer, config.flow, config.model.patch_size))
  kv, kt = jax.random.split(key)
  batch = {"video": jax.random.normal(kv, (2, 2, 16, 16, config.model.in_channels)),
           "text": jax.random.normal(kt, (2, 8, config.model.text_dim)),
           "text_mask": jnp.arange(8)[None, :] < jnp.array([[5], [8]])}
  new_state, _ = step(state, batch, key)  # the warmup starts at learning rate 0
  new_state, metrics = step(new_state, batch, key)
  assert int(new_state.step) == 2
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state.params, state.params)
  assert any(jax.tree.leaves(changed))


def test_weight_decay_applies_to_matrices_only():
  flat = [entry for conditioning in ("text", "label")
          for entry in nnx.to_flat_state(decay_mask(nnx.state(
              DiT(dit_config("tiny", conditioning=conditioning), rngs=nnx.Rngs(0)))))]
  decayed = {path[-2:] for path, value in flat if value.get_value()}
  assert {("qkv", "kernel"), ("table", "embedding"), ("patch_embed", "kernel")} <= decayed
  assert not {path[-1] for path in decayed} & {"bias", "scale", "null_text"}


def test_the_7b_config_has_7_billion_parameters():
  assert count_params(dit_config("7B")) == pytest.approx(7.0e9, rel=0.05)


def test_one_command_prints_every_model_size():
  out = subprocess.run([sys.executable, "-m", "training.count_params"], capture_output=True,
                       text=True, check=True).stdout
  assert [line.split()[0] for line in out.splitlines()] == list(MODEL_SIZES)


def tiny_label_setup(**step_kwargs):
  config = dit_config("tiny", in_channels=1, conditioning="label", dtype="float32")
  optimizer = make_optimizer(optim_config(lr=1e-2, warmup_steps=0, decay_steps=10))
  graphdef, state = init_train_state(DiT(config, rngs=nnx.Rngs(0)), optimizer)
  flow = flow_config(cond_dropout=0.0)
  step = jax.jit(ts.make_train_step(graphdef, optimizer, flow, config.patch_size, **step_kwargs))
  return graphdef, state, optimizer, flow, config, step


def test_gradient_accumulation_averages_microbatch_gradients_into_one_update(key):
  graphdef, state, optimizer, flow, config, step = tiny_label_setup(grad_accum=2)
  batch = {"video": jax.random.normal(key, (4, 2, 8, 8, 1)), "label": jnp.arange(4)}
  new_state, metrics = step(state, batch, key)

  def microbatch_grads(index):
    half = jax.tree.map(lambda x: x[2 * index:2 * index + 2], batch)
    model_loss = lambda p: flow_matching_loss(
        nnx.merge(graphdef, p, state.model_state), half, jax.random.fold_in(key, index),
        32, flow)
    return jax.grad(model_loss, has_aux=True)(state.params)

  (g0, m0), (g1, m1) = microbatch_grads(0), microbatch_grads(1)
  grads = jax.tree.map(lambda a, b: (a + b) / 2, g0, g1)
  updates, _ = optimizer.update(grads, state.opt_state, state.params)
  expected = jax.tree.map(jnp.add, state.params, updates)
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], (m0["loss"] + m1["loss"]) / 2, rtol=1e-5)
  assert int(new_state.step) == 1


def test_a_batch_that_does_not_split_into_the_microbatches_is_rejected(key):
  _, state, *_, step = tiny_label_setup(grad_accum=3)
  with pytest.raises(ValueError, match="grad_accum=3"):
    step(state, {"video": jnp.zeros((4, 2, 8, 8, 1)), "label": jnp.arange(4)}, key)


def test_the_ema_follows_the_parameters_with_a_warmed_up_decay(key):
  _, state, *_, step = tiny_label_setup(ema_decay=0.99)
  batch = {"video": jax.random.normal(key, (2, 2, 8, 8, 1)), "label": jnp.arange(2)}
  states = [state]
  for _ in range(3):
    states.append(step(states[-1], batch, key)[0])
  for n in range(3):
    decay = min(0.99, (1 + n) / (10 + n))  # 0.1, 0.18, 0.25: early steps forget the init
    for ema, old_ema, params in zip(*(jax.tree.leaves(t) for t in (
        states[n + 1].ema_params, states[n].ema_params, states[n + 1].params))):
      np.testing.assert_allclose(ema, decay * old_ema + (1 - decay) * params, rtol=1e-5,
                                 atol=1e-7)
  assert float(ts.ema_decay_at(jnp.array(10_000), 0.99)) == pytest.approx(0.99)


def test_the_learning_rate_is_reported_from_the_schedule(key):
  config = dit_config("tiny", in_channels=1, conditioning="label")
  optim = optim_config(lr=1e-3, warmup_steps=4, decay_steps=10)
  optimizer = make_optimizer(optim)
  graphdef, state = init_train_state(DiT(config, rngs=nnx.Rngs(0)), optimizer)
  step = jax.jit(ts.make_train_step(graphdef, optimizer, flow_config(), config.patch_size,
                                    learning_rate=learning_rate_schedule(optim)))
  batch = {"video": jax.random.normal(key, (2, 2, 8, 8, 1)), "label": jnp.arange(2)}
  lrs = []
  for _ in range(3):
    state, metrics = step(state, batch, key)
    lrs.append(float(metrics["lr"]))
  np.testing.assert_allclose(lrs, [0.0, 2.5e-4, 5e-4], rtol=1e-6)
