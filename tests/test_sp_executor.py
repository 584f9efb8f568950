"""The adaptive sequence-parallel executor on 8 simulated devices: a plan of groups of 4, 2, 1
and 1 (Ulysses at 4 and 2, none at 1) gives the loss and gradients of the single-device step on
the same sequences, and a plan that repeats a shape compiles nothing."""
import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.common import DEFAULT_RULES, model_config
from data.packing import pack_rows
from diffusion.flow_matching import packed_velocity_loss
from dit.config import DiTConfig
from dit.model import DiT
from dit.patchify import num_video_tokens
from sharding.mesh import make_mesh
from sharding.sp_executor import PlanExecutor, group_kind
from sharding.sp_planner import Plan

PATCH, CHANNELS, TEXT_LENGTH, TEXT_DIM, SLOTS = (1, 2, 2), 2, 4, 24, 2
# Six examples: videos and an image, 32, 16, 16, 8, 24 and 16 tokens.
SHAPES = ((2, 8, 8), (1, 8, 8), (4, 4, 4), (2, 4, 4), (3, 4, 8), (4, 4, 4))
PLAN = Plan(((4, (0, 1)), (2, (2, 3)), (1, (4,)), (1, (5,))), time=0.0)


def config():
  return DiTConfig.from_dict(model_config(
      "tiny", in_channels=CHANNELS, patch_size=PATCH, dtype="float32", text_dim=TEXT_DIM,
      depth=2, dual_stream_depth=1, num_heads=4))


def examples(rng):
  """Random examples with their own timestep, noise and dropout: what a step draws for each."""
  out = []
  for shape in SHAPES:
    out.append(dict(
        video=rng.standard_normal((*shape, CHANNELS)).astype(np.float32),
        text=rng.standard_normal((TEXT_LENGTH, TEXT_DIM)).astype(np.float32),
        text_mask=np.arange(TEXT_LENGTH) < rng.integers(1, TEXT_LENGTH + 1),
        t=np.float32(rng.uniform(0.05, 0.95)), drop=bool(rng.uniform() < 0.3),
        noise=rng.standard_normal((num_video_tokens(shape, PATCH),
                                   int(np.prod(PATCH)) * CHANNELS)).astype(np.float32)))
  return out


def packed(items, rows, row_tokens):
  """Rows of the examples with each one's text, timestep, noise and dropout laid out as the
  packed loss takes them."""
  batch = pack_rows(items, rows, patch_size=PATCH, row_tokens=row_tokens, max_slots=SLOTS)
  del batch["slot_shapes"]
  shape = (len(rows), SLOTS)
  batch.update(text=np.zeros(shape + (TEXT_LENGTH, TEXT_DIM), np.float32),
               text_mask=np.zeros(shape + (TEXT_LENGTH,), bool), t=np.zeros(shape, np.float32),
               drop=np.zeros(shape, bool), noise=np.zeros_like(batch["patches"]))
  for r, row in enumerate(rows):
    start = 0
    for slot, i in enumerate(row):
      for name in ("text", "text_mask", "t", "drop"):
        batch[name][r, slot] = items[i][name]
      end = start + len(items[i]["noise"])
      batch["noise"][r, start:end] = items[i]["noise"]
      start = end
  return batch


def summed_loss(graphdef, params, model_state, row):
  loss, metrics = packed_velocity_loss(nnx.merge(graphdef, params, model_state), row, row["t"],
                                       row["noise"], row["drop"])
  return loss * metrics["examples"], {"loss_sum": loss * metrics["examples"]}


def test_a_heterogeneous_plan_equals_the_single_device_step(key, randomize):
  base = config()
  model = DiT(base, rngs=nnx.Rngs(0))
  randomize(model, key)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  items = examples(np.random.default_rng(np.asarray(jax.random.key_data(key))[-1]))

  # One device: every example in a row of its own, the mean over the six.
  alone = packed(items, [[i] for i in range(len(items))], row_tokens=32)
  want_grads, want = jax.jit(jax.grad(
      lambda p: summed_loss(graphdef, p, model_state, alone), has_aux=True))(params)
  want_grads = jax.tree.map(lambda g: g / len(items), want_grads)

  graphdefs = {kind: nnx.split(nnx.eval_shape(lambda kind=kind: DiT(
      dataclasses.replace(base, sequence_parallel=kind), rngs=nnx.Rngs(0))))[0]
               for kind in ("none", "ulysses", "usp")}

  def grad_fn_for(kind, degree):
    del degree
    return lambda p, s, row, k: jax.grad(
        lambda p: summed_loss(graphdefs[kind], p, s, row), has_aux=True)(p)

  executor = PlanExecutor(grad_fn_for, make_mesh({"data": 8}), DEFAULT_RULES,
                          num_heads=base.num_heads)
  replicated = NamedSharding(executor.flat, P())
  params_on, state_on = jax.device_put((params, model_state), replicated)
  rows = [packed(items, [list(members)], row_tokens=48) for _, members in PLAN.groups]
  grads, sums = executor.gradients(params_on, state_on, PLAN, rows, key, len(items))

  assert [group_kind(d, 4) for d in PLAN.degrees] == ["ulysses", "ulysses", "none", "none"]
  np.testing.assert_allclose(sums["loss_sum"], want["loss_sum"] / len(items), rtol=1e-5)
  for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    assert got.sharding.is_fully_replicated and len(got.sharding.device_set) == 8
    np.testing.assert_allclose(got, expected, rtol=1e-4,
                               atol=1e-5 * float(np.abs(expected).max()) + 1e-7)

  # The same shape with other sequences in the groups compiles nothing new.
  compiled = executor.compilations
  assert compiled == 4
  swapped = Plan(((4, (2, 3)), (2, (0, 1)), (1, (5,)), (1, (4,))), time=0.0)
  rows = [packed(items, [list(members)], row_tokens=48) for _, members in swapped.groups]
  again, _ = executor.gradients(params_on, state_on, swapped, rows, key, len(items))
  assert executor.compilations == compiled
  for got, expected in zip(jax.tree.leaves(again), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, expected, rtol=1e-4,
                               atol=1e-5 * float(np.abs(expected).max()) + 1e-7)

  # All eight devices in one group: past the 4 heads, USP (Ulysses in 4s, rings of 2).
  whole = Plan(((8, (0, 1)),), time=0.0)
  assert group_kind(8, 4) == "usp"
  two = items[:2]
  grads, sums = executor.gradients(params_on, state_on, whole,
                                   [packed(two, [[0, 1]], row_tokens=48)], key, 2)
  pair = packed(two, [[0], [1]], row_tokens=32)
  want_grads, want = jax.jit(jax.grad(
      lambda p: summed_loss(graphdef, p, model_state, pair), has_aux=True))(params)
  np.testing.assert_allclose(sums["loss_sum"], want["loss_sum"] / 2, rtol=1e-5)
  for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, expected / 2, rtol=1e-4,
                               atol=1e-5 * float(np.abs(expected).max()) + 1e-7)
