"""Batches for adaptive sequence parallelism (config.sharding.sequence_parallel_plan =
"adaptive"): each step's examples, a plan of device groups for them (sharding/sp_planner.py,
FlexSP), and one packed row per group.

An epoch takes the examples in its shuffled order, a step at a time, while they fit the step's
budget: data.tokens_per_device tokens (video and text; fewer if the memory limit says so) and
data.max_slots examples per device, over all devices. Which examples make step k depends on their shapes alone (deterministic, resumable,
like data/batching.py); the plan and the rows are made when batch k is read, on grain's threads
ahead of the training loop, so planning step n + 1 overlaps step n.

A batch is {"plan": Plan, "rows": [a packed row dict, [1, ...], or None per group],
"examples": the step's example count, "planned_seconds": the plan's predicted step time}. A
group of d devices gets a row of d * max_slots slots and a power-of-two number of video tokens
(at least d, at most the group's capacity), so rows repeat a few shapes and the executor's
compiled programs are reused. With sharding.sp_planner="milp" the plan is the better of the
MILP's (stopped at a time limit, so it can vary between runs: only "heuristic" plans resume
bit for bit) and the heuristic's.
"""
from collections.abc import Sequence

import numpy as np

from data.batching import ENDLESS, EpochPlans, epoch_order, example_shapes
from data.packing import pack_rows
from dit.patchify import num_video_tokens
from sharding.sp_cost import CostModel
from sharding.sp_planner import check_fits, heuristic_plan, milp_plan

PLANNERS = ("heuristic", "milp")


def row_length(tokens: int, degree: int, capacity: int) -> int:
  """The padded length of a group's row: the next power of two, within [degree, the group's
  capacity in tokens] (capacity a multiple of degree)."""
  padded = 1 << max(int(tokens) - 1, 0).bit_length()
  return int(min(max(padded, degree), capacity))


class PlannedBatches:

  def __init__(self, source, *, patch_size: Sequence[int], num_devices: int, max_slots: int,
               cost: CostModel, seed: int, planner: str = "heuristic", text_tokens: int = 0):
    if planner not in PLANNERS:
      raise ValueError(f"sharding.sp_planner={planner!r}; choose one of {list(PLANNERS)}")
    self.source, self.seed, self.planner = source, seed, planner
    self.patch_size, self.num_devices = tuple(patch_size), num_devices
    self.max_slots, self.cost = max_slots, cost
    shapes = example_shapes(source)
    self.tokens = np.array([num_video_tokens(s, patch_size) for s in shapes.tolist()])
    # What the plans weigh and hold: each example's video tokens and its text tokens.
    self.lengths = self.tokens + text_tokens
    i = int(np.argmax(self.lengths))  # the longest must fit some group: named before training
    try:
      check_fits(self.lengths[[i]], num_devices, cost)
    except ValueError as e:
      raise ValueError(f"example {int(i)} of shape {tuple(shapes[i].tolist())}: {e}") from None
    self.plans = EpochPlans(self.plan_epoch)

  def plan_epoch(self, epoch: int) -> list[list[int]]:
    """The examples of each step of the epoch: in its order, while they fit what all the
    devices hold together (tokens and examples); the last step takes what is left."""
    order = epoch_order(len(self.source), self.seed, epoch)
    budget = self.cost.capacity(self.num_devices)
    slots = self.cost.slots(self.num_devices)
    steps, current, total = [], [], 0
    for i in order:
      if current and (total + self.lengths[i] > budget or len(current) == slots):
        steps.append(current)
        current, total = [], 0
      current.append(int(i))
      total += int(self.lengths[i])
    if current:
      steps.append(current)
    return steps

  def __len__(self) -> int:
    return ENDLESS

  def plan(self, members: list[int]):
    lengths = self.lengths[members]
    heuristic = heuristic_plan(lengths, self.num_devices, self.cost)
    if self.planner == "milp":  # the better of the two (the MILP stops at its time limit)
      exact = milp_plan(lengths, self.num_devices, self.cost)[0]
      return exact if exact.time < heuristic.time else heuristic
    return heuristic

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
                            row_tokens=row_length(tokens, degree, self.cost.capacity(degree)),
                            max_slots=degree * self.max_slots))
    return {"plan": plan, "rows": rows, "examples": len(members),
            "planned_seconds": plan.time}
