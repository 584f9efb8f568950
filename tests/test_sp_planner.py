"""The adaptive sequence-parallel planner (FlexSP): its cost model, the exact MILP against brute
force, the fast heuristic against the MILP, and plans that cannot fit."""
import dataclasses
import itertools

import numpy as np
import pytest

from configs.common import model_config
from dit.config import DiTConfig
from sharding.sp_cost import PUBLISHED, CostModel, Hardware, Workload
from sharding.sp_planner import (best_static_plan, check_plan, heuristic_plan, make_plan,
                                 milp_plan, static_plan)
from training.flops import sequence_workload, train_step_flops

# A toy machine where every trade-off bites: all-to-alls cost as much as a good share of the
# compute, crossing a node (2 devices) costs more, and a device holds 100 tokens.
TOY = CostModel(
    Hardware("toy", flops_per_second=1e3, intra_node_bandwidth=50.0, inter_node_bandwidth=10.0,
             node_size=2, collective_latency=0.01, memory_bytes=110.0),
    Workload(flops_per_token=10.0, flops_per_pair=0.1, alltoall_bytes_per_token=4.0,
             ring_bytes_per_token=2.0, activation_bytes_per_token=1.0, static_bytes=10.0,
             num_heads=2, collectives=4))


def h100_7b():
  config = DiTConfig.from_dict(model_config("7B", remat="full", dtype="bfloat16"))
  return CostModel(PUBLISHED["h100"], sequence_workload(config, zero_shards=64))


def brute_force_time(lengths, num_devices, cost):
  """The best makespan over every split of the devices into power-of-two groups and every
  assignment of the sequences to them."""
  def splits(left, largest):
    if left == 0:
      yield ()
    for d in (2**k for k in range(largest.bit_length())):
      if d <= min(left, largest):
        for rest in splits(left - d, d):
          yield (d,) + rest
  best = np.inf
  for sizes in splits(num_devices, num_devices):
    for owner in itertools.product(range(len(sizes)), repeat=len(lengths)):
      groups = [[i for i, g in enumerate(owner) if g == j] for j in range(len(sizes))]
      loads = [np.sum(np.asarray(lengths)[m]) for m in groups]
      if any(load > cost.capacity(d) for load, d in zip(loads, sizes)):
        continue
      best = min(best, max(cost.group_time(np.asarray(lengths)[m], d)
                           for m, d in zip(groups, sizes) if m))
  return best


def test_a_group_costs_its_sequences_plus_its_collectives():
  lengths = np.array([30, 70, 5])
  for degree in (1, 2, 4):
    parts = TOY.sequence_times(lengths, degree)
    assert TOY.group_time(lengths, degree) == pytest.approx(parts.sum() + TOY.fixed_time(degree))
  assert TOY.fixed_time(1) == 0 and TOY.fixed_time(4) == pytest.approx(0.04)
  # Wider groups: less compute each, more communication; past the heads, USP's ring.
  assert TOY.ulysses_degree(4) == 2
  assert TOY.capacity(1) == 100 and TOY.capacity(4) == 400
  assert TOY.memory(400, 4) == pytest.approx(110.0)


def test_the_workload_counts_the_flops_of_a_training_step():
  config = DiTConfig.from_dict(model_config("B", conditioning="label"))
  workload = sequence_workload(config)
  for shape in ((4, 16, 16), (16, 32, 32)):
    tokens = shape[0] * shape[1] * shape[2] // 4  # patches of 1x2x2
    estimated = workload.flops_per_token * tokens + workload.flops_per_pair * tokens**2
    assert estimated == pytest.approx(train_step_flops(config, shape, 1), rel=0.02)


def test_the_milp_plan_is_optimal_on_small_instances():
  rng = np.random.default_rng(0)
  for _ in range(4):
    lengths = rng.integers(5, 80, size=5)  # at most 400 tokens: they fit
    plan, bound = milp_plan(lengths, 4, TOY)
    check_plan(plan, lengths, TOY, 4)
    assert plan.time == pytest.approx(brute_force_time(lengths, 4, TOY), rel=1e-6)
    assert bound == pytest.approx(plan.time, rel=1e-6)


def test_the_heuristic_is_within_5_percent_of_the_milp_on_long_tail_batches():
  cost = h100_7b()
  rng = np.random.default_rng(1)
  for _ in range(4):
    lengths = np.clip(rng.lognormal(np.log(8192), 1.2, 16), 4096, 262144).astype(int)
    heuristic = heuristic_plan(lengths, 8, cost)
    exact, _ = milp_plan(lengths, 8, cost, time_limit=20)
    check_plan(heuristic, lengths, cost, 8)
    assert heuristic.time <= 1.05 * exact.time


def test_adaptive_plans_mix_degrees_and_beat_every_static_degree():
  cost = h100_7b()
  lengths = np.array([262144] + [8192] * 200 + [4096] * 100)  # one long video, many short
  plan = heuristic_plan(lengths, 64, cost)
  check_plan(plan, lengths, cost, 64)
  assert len(set(plan.shape)) > 1
  long_group = next(d for d, members in plan.groups if 0 in members)
  assert long_group >= 16  # the long video goes wide, the short ones narrow
  assert plan.time < 0.8 * best_static_plan(lengths, 64, cost).time  # 6.4 s against 8.7 s
  # Groups are laid out widest first, each at a multiple of its size.
  start = 0
  for d, _ in plan.groups:
    assert start % d == 0
    start += d


def test_a_plan_fills_the_devices_with_empty_groups():
  lengths = np.array([10, 10, 10, 10])
  plan = make_plan([(2, [2, 0]), (1, [1])], lengths, TOY, 8)
  assert plan.groups == ((4, ()), (2, (0, 2)), (1, (1,)), (1, ()))
  assert plan.shape == (2, 1)
  with pytest.raises(ValueError, match="not each of the 4 once"):
    check_plan(plan, lengths, TOY, 8)  # sequence 3 is in no group
  assert static_plan(np.array([90, 90, 90]), 2, 1, TOY) is None  # 180 tokens a device


def test_a_sequence_too_long_for_every_group_is_named():
  lengths = np.array([50, 900, 20])  # 8 devices hold 800 tokens of one sequence at most
  for planner in (heuristic_plan, milp_plan):
    with pytest.raises(ValueError, match=r"sequence 1 of 900 tokens is too long.*8 devices"):
      planner(lengths, 8, TOY)
  with pytest.raises(ValueError, match="take fewer sequences"):
    heuristic_plan(np.full(12, 70), 8, TOY)  # 840 tokens on 8 x 100
  with pytest.raises(ValueError, match="power-of-two"):
    heuristic_plan(np.array([10]), 6, TOY)


def test_plans_keep_to_the_sequences_a_group_may_hold():
  cost = dataclasses.replace(TOY, slots_per_device=2)
  lengths = np.full(12, 5)  # 60 tokens: time and memory alone would fit one or two devices
  for plan in (heuristic_plan(lengths, 8, cost), milp_plan(lengths, 8, cost)[0],
               static_plan(lengths, 8, 2, cost)):
    check_plan(plan, lengths, cost, 8)
    assert all(len(members) <= 2 * d for d, members in plan.groups)
  with pytest.raises(ValueError, match="17 sequences"):
    heuristic_plan(np.full(17, 5), 8, cost)
