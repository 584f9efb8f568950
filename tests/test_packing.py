"""Packed rows: several examples of different shapes in one fixed-length token sequence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.common import flow_config, model_config
from data.packing import (assign_rows, example_cost, imbalance, pack_rows, rank_costs,
                          unpack_videos)
from diffusion.flow_matching import (packed_flow_matching_loss, packed_velocity_loss,
                                     velocity_loss)
from dit.config import DiTConfig
from dit.model import DiT
from dit.patchify import patchify

PATCH = (1, 2, 2)
# (T, H, W) of four examples: a video, an image (one frame), a wide video, a long thin one.
SHAPES = ((2, 8, 8), (1, 8, 8), (2, 4, 8), (4, 4, 4))  # 32, 16, 16 and 16 tokens
TEXT_LENGTH, TEXT_DIM = 5, 24


def tiny_model(key, randomize, **overrides):
  config = DiTConfig.from_dict(model_config(
      "tiny", in_channels=2, patch_size=PATCH, dtype="float32", text_dim=TEXT_DIM, depth=2,
      dual_stream_depth=1, **overrides))  # one block of each kind
  model = DiT(config, rngs=nnx.Rngs(0))
  randomize(model, key)
  return model


def examples(key, conditioning="text"):
  """Fresh random examples of SHAPES with text states (some padded) or labels."""
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key))[-1])
  out = []
  for shape in SHAPES:
    example = {"video": rng.standard_normal((*shape, 2)).astype(np.float32)}
    if conditioning == "text":
      example["text"] = rng.standard_normal((TEXT_LENGTH, TEXT_DIM)).astype(np.float32)
      example["text_mask"] = np.arange(TEXT_LENGTH) < rng.integers(1, TEXT_LENGTH + 1)
    else:
      example["label"] = np.int32(rng.integers(10))
    out.append(example)
  return out


def packed_batch(items, rows, row_tokens=48, max_slots=3):
  """pack_rows, plus the text states the pipeline's caption encoder would add."""
  batch = pack_rows(items, rows, patch_size=PATCH, row_tokens=row_tokens, max_slots=max_slots)
  if "text" in items[0]:
    batch["text"] = np.zeros((len(rows), max_slots, TEXT_LENGTH, TEXT_DIM), np.float32)
    batch["text_mask"] = np.zeros((len(rows), max_slots, TEXT_LENGTH), bool)
    for r, row in enumerate(rows):
      for slot, i in enumerate(row):
        batch["text"][r, slot] = items[i]["text"]
        batch["text_mask"][r, slot] = items[i]["text_mask"]
  return {k: v for k, v in batch.items() if k != "caption"}


ROWS = [[0, 2], [1, 3]]  # 48 and 32 of 48 tokens: the second row ends in padding


@pytest.mark.parametrize("conditioning,prediction", [("text", "velocity"), ("label", "data")])
def test_packed_loss_and_gradients_are_the_mean_over_examples_run_alone(
    key, randomize, conditioning, prediction):
  model = tiny_model(key, randomize, conditioning=conditioning, prediction=prediction)
  items = examples(jax.random.fold_in(key, 1), conditioning)
  batch = packed_batch(items, ROWS)
  kt, kn, kd = jax.random.split(jax.random.fold_in(key, 2), 3)
  t = jax.random.uniform(kt, (2, 3), minval=0.02, maxval=1.0)
  noise = jax.random.normal(kn, batch["patches"].shape)
  drop = jax.random.bernoulli(kd, 0.3, (2, 3))
  params = nnx.state(model, nnx.Param)
  graphdef = nnx.graphdef(model)

  def packed_loss(params):
    return packed_velocity_loss(nnx.merge(graphdef, params), batch, t, noise, drop)[0]

  def loss_one_by_one(params):
    net, losses = nnx.merge(graphdef, params), []
    for r, row in enumerate(ROWS):
      for slot, i in enumerate(row):
        video = items[i]["video"][None]
        tokens = np.asarray(batch["segment_ids"][r]) == slot + 1
        # The packed noise of this example's tokens, as a video of its shape.
        example_noise = unpack_videos(np.asarray(noise), batch, PATCH)[r][slot][None]
        single = {"video": video}
        if conditioning == "text":
          single.update(text=items[i]["text"][None], text_mask=items[i]["text_mask"][None])
        else:
          single["label"] = items[i]["label"][None]
        assert tokens.sum() == patchify(video, PATCH).shape[1]
        losses.append(velocity_loss(net, single, t[r, slot][None], example_noise,
                                    drop[r, slot][None])[0])
    return jnp.mean(jnp.stack(losses))

  # Jitted: one compile each, far cheaper than running the networks op by op.
  loss, grads = jax.jit(jax.value_and_grad(packed_loss))(params)
  expected, expected_grads = jax.jit(jax.value_and_grad(loss_one_by_one))(params)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * np.abs(want).max())


def test_attention_never_crosses_examples_in_a_pack(key, randomize):
  model = tiny_model(key, randomize)
  items = examples(jax.random.fold_in(key, 1))
  rows = [[0, 1], [2, 3]]
  batch = packed_batch(items, rows)
  t = jax.random.uniform(jax.random.fold_in(key, 2), (2, 3))
  run = lambda b: np.asarray(model.packed(b["patches"], t, b["segment_ids"], b["positions"],
                                          text=b["text"], text_mask=b["text_mask"]))
  before = run(batch)
  # Another video and caption for the first example of each row.
  changed = dict(batch, patches=batch["patches"].copy(), text=batch["text"].copy())
  first = batch["segment_ids"] == 1
  changed["patches"][first] += 3.0 * np.random.default_rng(0).standard_normal(
      changed["patches"][first].shape)
  changed["text"][:, 0] += 3.0
  after = run(changed)
  second = batch["segment_ids"] == 2
  assert np.abs(after[first] - before[first]).max() > 1e-2  # the change is seen...
  np.testing.assert_allclose(after[second], before[second], rtol=1e-5, atol=1e-6)  # ...alone


def test_a_packed_example_gets_what_it_gets_alone(key, randomize):
  model = tiny_model(key, randomize, prediction="data")
  items = examples(jax.random.fold_in(key, 1))
  batch = packed_batch(items, ROWS)
  t = jax.random.uniform(jax.random.fold_in(key, 2), (2, 3))
  out = model.packed(batch["patches"], t, batch["segment_ids"], batch["positions"],
                     text=batch["text"], text_mask=batch["text_mask"])
  videos = unpack_videos(np.asarray(out), batch, PATCH)
  for r, row in enumerate(ROWS):
    for slot, i in enumerate(row):
      alone = model(items[i]["video"][None], t[r, slot][None], text=items[i]["text"][None],
                    text_mask=items[i]["text_mask"][None])[0]
      scale = float(np.abs(alone).max())  # outputs reach ~70: float32 sums differ in order
      np.testing.assert_allclose(videos[r][slot], alone, rtol=1e-5, atol=2e-6 * scale)


def test_one_compiled_step_serves_every_mix_of_shapes(key, randomize):
  model = tiny_model(key, randomize)
  graphdef, params = nnx.split(model)
  traces = []

  @jax.jit
  def loss(params, batch, key):
    traces.append(1)
    return packed_flow_matching_loss(nnx.merge(graphdef, params), batch, key,
                                     flow_config(shift_base_tokens=16))[0]

  items = examples(jax.random.fold_in(key, 1))
  mixes = ([[0, 2], [1, 3]], [[1, 2, 3], [0]], [[3], [2]])
  losses = [loss(params, packed_batch(items, rows), key) for rows in mixes]
  assert len(traces) == 1
  assert all(np.isfinite(losses)) and len(set(map(float, losses))) == 3


def test_first_fit_keeps_the_order_and_leaves_what_does_not_fit():
  rows, left = assign_rows([30, 20, 20, 10, 40], num_rows=2, row_tokens=48, max_slots=2)
  assert rows == [[0, 3], [1, 2]] and left == [4]


def test_runtime_balance_evens_the_ranks_estimated_cost():
  rng = np.random.default_rng(0)
  tokens = np.minimum(rng.lognormal(3.5, 1.0, 64).astype(int) + 1, 512)  # long-tailed
  costs = example_cost(tokens, hidden_size=64)
  plain, left_plain = assign_rows(tokens, 8, 512, 16, ranks=8)
  balanced, left_balanced = assign_rows(tokens, 8, 512, 16, ranks=8, balance=True)
  for rows, left in ((plain, left_plain), (balanced, left_balanced)):
    placed = sorted(i for row in rows for i in row) + left
    assert sorted(placed) == list(range(64))  # every example once
    assert all(sum(tokens[i] for i in row) <= 512 for row in rows)
  assert imbalance(rank_costs(balanced, costs, 8)) < imbalance(rank_costs(plain, costs, 8))
  assert imbalance(rank_costs(balanced, costs, 8)) < 1.1


def test_packing_checks_what_it_is_given():
  items = [{"video": np.zeros((2, 8, 8, 2), np.float32), "label": 1}]
  with pytest.raises(ValueError, match="more than row_tokens=16"):
    pack_rows(items, [[0]], patch_size=PATCH, row_tokens=16, max_slots=2)
  with pytest.raises(ValueError, match="cannot be cut into patches"):
    pack_rows([{"video": np.zeros((2, 7, 8, 2)), "label": 1}], [[0]], patch_size=PATCH,
              row_tokens=64, max_slots=2)


def test_each_packed_example_is_shifted_by_its_own_token_count():
  from diffusion.flow_matching import slot_token_counts, timestep_shift  # noqa: PLC0415
  segment_ids = jnp.array([[1, 1, 1, 2, 0, 0], [1, 2, 2, 2, 2, 3]])
  counts = slot_token_counts(segment_ids, 3)
  np.testing.assert_array_equal(counts, [[3, 1, 0], [1, 4, 1]])
  flow = flow_config(shift=2.0, shift_base_tokens=4)
  np.testing.assert_allclose(timestep_shift(counts, flow),
                             [[timestep_shift(int(n), flow) for n in row] for row in counts],
                             rtol=1e-6)
