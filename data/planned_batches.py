"""Batches for adaptive sequence parallelism (config.sharding.sequence_parallel_plan =
"adaptive"): each step's examples, a plan of device groups for them (sharding/sp_planner.py,
FlexSP), and one packed row per group.

An epoch takes the examples in its shuffled order, a step at a time, while they fit the step's
budget: data.tokens_per_device video tokens and data.max_slots examples per device, over all
devices. Which examples make step k depends on their shapes alone (deterministic, resumable,
like data/batching.py); the plan and the rows are made when batch k is read, on grain's threads
ahead of the training loop, so planning step n + 1 overlaps step n.

A batch is {"plan": Plan, "rows": [a packed row dict, [1, ...], or None per group],
"examples": the step's example count, "planned_seconds": the plan's predicted step time}. A
group of d devices gets a row of d * max_slots slots and a power-of-two number of video tokens
(at least d, at most d * tokens_per_device), so rows repeat a few shapes and the executor's
compiled programs are reused.
"""
from collections.abc import Sequence

import numpy as np

from data.batching import ENDLESS, EpochPlans, epoch_order, example_shapes
from data.packing import pack_rows
from dit.patchify import num_video_tokens
from sharding.sp_cost import CostModel
from sharding.sp_planner import check_fits, heuristic_plan, milp_plan

PLANNERS = ("heuristic", "milp")


def row_length(tokens: int, degree: int, tokens_per_device: int) -> int:
  """The padded length of a group's row: the next power of two, within [degree, its capacity]."""
  padded = 1 << max(int(tokens) - 1, 0).bit_length()
  return int(min(max(padded, degree), degree * tokens_per_device))


class PlannedBatches:

  def __init__(self, source, *, patch_size: Sequence[int], num_devices: int,
               tokens_per_device: int, max_slots: int, cost: CostModel, seed: int,
               planner: str = "heuristic"):
    if planner not in PLANNERS:
      raise ValueError(f"sharding.sp_planner={planner!r}; choose one of {list(PLANNERS)}")
    self.source, self.seed, self.planner = source, seed, planner
    self.patch_size, self.num_devices = tuple(patch_size), num_devices
    self.tokens_per_device, self.max_slots, self.cost = tokens_per_device, max_slots, cost
    shapes = example_shapes(source)
    self.tokens = np.array([num_video_tokens(s, patch_size) for s in shapes.tolist()])
    try:  # every example must fit some group: named before anything trains
      for i in np.argsort(-self.tokens, kind="stable")[:1]:
        check_fits(self.tokens[[i]], num_devices, cost)
    except ValueError as e:
      raise ValueError(f"example {int(i)} of shape {tuple(shapes[i].tolist())}: {e}") from None
    self.plans = EpochPlans(self.plan_epoch)

  def plan_epoch(self, epoch: int) -> list[list[int]]:
    """The examples of each step of the epoch: in its order, while they fit the step's budget;
    a last step with fewer examples than devices is left for the next epoch's order."""
    order = epoch_order(len(self.source), self.seed, epoch)
    budget = self.num_devices * self.tokens_per_device
    slots = self.num_devices * self.max_slots
    steps, current, total = [], [], 0
    for i in order:
      if current and (total + self.tokens[i] > budget or len(current) == slots):
        steps.append(current)
        current, total = [], 0
      current.append(int(i))
      total += int(self.tokens[i])
    if len(current) >= self.num_devices:
      steps.append(current)
    return steps

  def __len__(self) -> int:
    return ENDLESS

  def plan(self, members: list[int]):
    lengths = self.tokens[members]
    if self.planner == "milp":
      return milp_plan(lengths, self.num_devices, self.cost)[0]
    return heuristic_plan(lengths, self.num_devices, self.cost)

  def __getitem__(self, k: int) -> dict:
    members = self.plans[k]
    plan = self.plan(members)
    rows = []
    for degree, group in plan.groups:
      if not group:
        rows.append(None)
        continue
      items = [self.source[members[i]] for i in group]
      tokens = int(self.tokens[[members[i] for i in group]].sum())
      rows.append(pack_rows(items, [list(range(len(items)))], patch_size=self.patch_size,
                            row_tokens=row_length(tokens, degree, self.tokens_per_device),
                            max_slots=degree * self.max_slots))
    return {"plan": plan, "rows": rows, "examples": len(members),
            "planned_seconds": plan.time}
