"""The adaptive sequence-parallel planner (FlexSP): split the devices into groups and give each
group sequences, so that the step's slowest group is as fast as it can be.

    plan = heuristic_plan(lengths, num_devices=64, cost=cost_model)     # ~ms-s
    plan = milp_plan(lengths, num_devices=8, cost=cost_model)           # exact, small instances
    plan.groups   # ((8, (0,)), (4, (3, 5)), (2, (1, 2, 6)), (1, (4,)), (1, (7,)))

A plan's groups have power-of-two sizes that sum to the device count (a group may be empty);
each runs its sequences as one packed row at its own sequence-parallel degree, and must hold
that row within the memory limit (sharding/sp_cost.py). Groups are listed widest first: laid
out in that order on the devices, every group starts at a multiple of its size.

milp_plan solves the mixed-integer programme exactly (scipy.optimize.milp / HiGHS): a binary
per (sequence, group slot) and per slot in use, the makespan T as the objective, with each
slot's time and memory as linear constraints. heuristic_plan searches T by bisection: at a
given T each sequence takes the narrowest degree that runs it within T, and sequences, longest
first, go to the open group they fit best or open a new one; T is feasible when the groups
need at most the devices there are. static_plan is today's one degree for every group, its
sequences placed longest first on the least loaded group.
"""
import dataclasses
import math

import numpy as np
import scipy.optimize
import scipy.sparse

from sharding.sp_cost import CostModel, degrees


@dataclasses.dataclass(frozen=True)
class Plan:
  groups: tuple[tuple[int, tuple[int, ...]], ...]  # (degree, sequence indices), widest first
  time: float                                      # the slowest group's predicted seconds

  @property
  def degrees(self) -> tuple[int, ...]:
    return tuple(d for d, _ in self.groups)

  @property
  def shape(self) -> tuple[int, ...]:
    """The group sizes of the groups that run something: what compiled programs depend on."""
    return tuple(d for d, members in self.groups if members)


def make_plan(groups, lengths, cost: CostModel, num_devices: int) -> Plan:
  """A Plan of (degree, members) groups: sorted widest first, members in order, devices left
  over as empty groups, and its predicted time."""
  lengths = np.asarray(lengths)
  groups = [(int(d), tuple(sorted(int(i) for i in members))) for d, members in groups]
  spare = num_devices - sum(d for d, _ in groups)
  if spare < 0:
    raise ValueError(f"a plan of groups {[d for d, _ in groups]} needs more than "
                     f"{num_devices} devices")
  groups += [(1 << k, ()) for k in range(spare.bit_length()) if spare >> k & 1]
  groups.sort(key=lambda g: (-g[0], g[1] == (), g[1]))
  time = max((cost.group_time(lengths[list(m)], d) for d, m in groups if m), default=0.0)
  return Plan(tuple(groups), time)


def check_plan(plan: Plan, lengths, cost: CostModel, num_devices: int) -> None:
  """Raises if the plan is not one of `num_devices` devices running every sequence once within
  the memory limit."""
  sizes = [d for d, _ in plan.groups]
  if sum(sizes) != num_devices or any(d & (d - 1) for d in sizes):
    raise ValueError(f"plan groups {sizes} are not powers of two summing to {num_devices}")
  placed = sorted(i for _, members in plan.groups for i in members)
  if placed != list(range(len(lengths))):
    raise ValueError(f"the plan places sequences {placed}, not each of the {len(lengths)} once")
  for d, members in plan.groups:
    tokens = int(np.sum(np.asarray(lengths)[list(members)]))
    if tokens > cost.capacity(d) or len(members) > cost.slots(d):
      raise ValueError(f"a group of {d} holds {len(members)} sequences of {tokens} tokens, "
                       f"more than its {cost.slots(d)} and {cost.capacity(d)}")


def check_fits(lengths, num_devices: int, cost: CostModel) -> None:
  """Raises, naming the sequence, if a sequence cannot fit even in a group of every device, or
  the step's tokens cannot fit all the devices' memory."""
  lengths = np.asarray(lengths)
  widest = degrees(num_devices)[-1]
  i = int(np.argmax(lengths)) if lengths.size else 0  # the longest (the first of equals)
  if lengths.size and lengths[i] > cost.capacity(widest):
    need = cost.memory(lengths[i], widest) / 2**30
    if need <= cost.limit / 2**30:  # the token limit binds, not the memory
      raise ValueError(
          f"sequence {i} of {int(lengths[i]):,} tokens is too long: split over all {widest} "
          f"devices it passes their {cost.tokens_per_device:,} tokens each "
          "(data.tokens_per_device): cut it shorter, raise data.tokens_per_device, or add "
          "devices")
    raise ValueError(
        f"sequence {i} of {int(lengths[i]):,} tokens is too long: even split over all "
        f"{widest} devices it needs {need:.2f} GiB per device, over the memory limit of "
        f"{cost.limit / 2**30:.2f} GiB (at most {cost.capacity(widest):,} tokens): cut it "
        "shorter, or add devices or memory (remat)")
  if lengths.sum() > cost.capacity(1) * num_devices or len(lengths) > cost.slots(num_devices):
    raise ValueError(f"the step's {len(lengths)} sequences of {int(lengths.sum()):,} tokens do "
                     f"not fit the memory of {num_devices} devices "
                     f"({cost.capacity(1) * num_devices:,} tokens, {cost.slots(num_devices)} "
                     "sequences): take fewer sequences a step")


def _cost_table(lengths, num_devices: int, cost: CostModel):
  """degrees [K], per-sequence time at each degree [n, K], fixed time [K], capacity [K]."""
  ds = np.array(degrees(num_devices))
  times = np.stack([cost.sequence_times(lengths, int(d)) for d in ds], axis=1)
  fixed = np.array([cost.fixed_time(int(d)) for d in ds])
  capacity = np.array([cost.capacity(int(d)) for d in ds])
  slots = np.array([cost.slots(int(d)) for d in ds])
  return ds, times, fixed, capacity, slots


def static_plan(lengths, num_devices: int, degree: int, cost: CostModel) -> Plan | None:
  """Every group of `degree` devices; sequences longest first onto the group with the least
  predicted time that has room. None if they do not fit."""
  lengths = np.asarray(lengths)
  count = num_devices // degree
  capacity = cost.capacity(degree)
  times = cost.sequence_times(lengths, degree)
  load, room = np.zeros(count), np.full(count, capacity, np.int64)
  slots = np.full(count, cost.slots(degree))
  members: list[list[int]] = [[] for _ in range(count)]
  for i in np.argsort(-times, kind="stable"):
    fits = np.flatnonzero((room >= lengths[i]) & (slots > 0))
    if not fits.size:
      return None
    g = fits[np.argmin(load[fits])]
    members[g].append(int(i))
    load[g] += times[i]
    room[g] -= lengths[i]
    slots[g] -= 1
  return make_plan([(degree, m) for m in members], lengths, cost, num_devices)


def best_static_plan(lengths, num_devices: int, cost: CostModel,
                     max_degree: int | None = None) -> Plan | None:
  """The fastest static plan over the degrees (up to max_degree), or None if none fits."""
  plans = [static_plan(lengths, num_devices, d, cost) for d in degrees(num_devices)
           if max_degree is None or d <= max_degree]
  plans = [p for p in plans if p is not None]
  return min(plans, key=lambda p: p.time, default=None)


def _greedy(lengths, num_devices, limit, ds, times, fixed, capacity, slots):
  """The groups (degree index, members) that run every sequence within `limit` seconds, or
  None if that takes more than num_devices devices."""
  n = len(lengths)
  runs = (times + fixed <= limit) & (lengths[:, None] <= capacity)  # [n, K]
  if not runs.any(1).all():
    return None
  choice = runs.argmax(1)  # the narrowest degree that runs it
  order = np.argsort(-times[np.arange(n), choice], kind="stable")
  group_k, group_time, group_room, group_slots, group_members = [], [], [], [], []
  used = 0
  for i in order:
    if group_k:
      k = np.array(group_k)
      after = np.array(group_time) + times[i, k]
      fits = ((after <= limit) & (np.array(group_room) >= lengths[i])
              & (np.array(group_slots) > 0))
      if fits.any():
        g = int(np.flatnonzero(fits)[np.argmax(after[fits])])  # the fullest that takes it
        group_time[g] = after[g]
        group_room[g] -= lengths[i]
        group_slots[g] -= 1
        group_members[g].append(int(i))
        continue
    k = int(choice[i])
    used += int(ds[k])
    if used > num_devices:
      return None
    group_k.append(k)
    group_time.append(fixed[k] + times[i, k])
    group_room.append(capacity[k] - lengths[i])
    group_slots.append(slots[k] - 1)
    group_members.append([int(i)])
  return list(zip(group_k, group_members))


def _lower_bound(lengths, num_devices, ds, times, fixed, capacity) -> float:
  feasible = lengths[:, None] <= capacity
  alone = np.where(feasible, times + fixed, np.inf).min(1)
  work = np.where(feasible, times * ds, np.inf).min(1)
  return float(max(alone.max(), work.sum() / num_devices))


def lower_bound(lengths, num_devices: int, cost: CostModel) -> float:
  """A bound no plan beats: the slowest sequence at its fastest degree, and the device-seconds
  every sequence needs at least (at its most efficient degree) spread over all devices."""
  lengths = np.asarray(lengths, np.int64)
  ds, times, fixed, capacity, _ = _cost_table(lengths, num_devices, cost)
  return _lower_bound(lengths, num_devices, ds, times, fixed, capacity)


def heuristic_plan(lengths, num_devices: int, cost: CostModel, *,
                   tolerance: float = 1e-4) -> Plan:
  """A plan from bisection on the step time with greedy placement (module docstring); never
  slower than the best static plan."""
  lengths = np.asarray(lengths, np.int64)
  check_fits(lengths, num_devices, cost)
  ds, times, fixed, capacity, slots = _cost_table(lengths, num_devices, cost)
  static = best_static_plan(lengths, num_devices, cost)
  low = _lower_bound(lengths, num_devices, ds, times, fixed, capacity)
  high = static.time if static is not None else (times + fixed).max() * len(lengths)
  best = None
  groups = _greedy(lengths, num_devices, high, ds, times, fixed, capacity, slots)
  if groups is not None:
    best = make_plan([(ds[k], m) for k, m in groups], lengths, cost, num_devices)
  while high - low > tolerance * high:
    middle = 0.5 * (low + high)
    groups = _greedy(lengths, num_devices, middle, ds, times, fixed, capacity, slots)
    if groups is None:
      low = middle
    else:
      best = make_plan([(ds[k], m) for k, m in groups], lengths, cost, num_devices)
      high = best.time
  candidates = [p for p in (best, static) if p is not None]
  if not candidates:
    raise ValueError(f"no plan fits the {len(lengths)} sequences into the memory of "
                     f"{num_devices} devices: take fewer sequences a step")
  return min(candidates, key=lambda p: p.time)


def milp_plan(lengths, num_devices: int, cost: CostModel, *, time_limit: float = 10.0
              ) -> tuple[Plan, float]:
  """The exact plan by mixed-integer programming (HiGHS) -> (plan, the solver's lower bound on
  the optimal time; equal to plan.time when it proved optimality within time_limit seconds)."""
  lengths = np.asarray(lengths, np.int64)
  check_fits(lengths, num_devices, cost)
  ds, times, fixed, capacity, slots = _cost_table(lengths, num_devices, cost)
  scale = max(float((times + fixed).max()), 1e-30)  # times in units of the slowest: well scaled
  places = [(k, j) for k, d in enumerate(ds) for j in range(num_devices // d)]
  n, m = len(lengths), len(places)
  # Variables: x[i, s] (n * m), y[s] (m), T.
  x = lambda i, s: i * m + s
  y = lambda s: n * m + s
  t_var = n * m + m
  rows, cols, vals, lower, upper = [], [], [], [], []
  row = 0

  def add(entries, lo, hi):
    nonlocal row
    for col, val in entries:
      rows.append(row)
      cols.append(col)
      vals.append(val)
    lower.append(lo)
    upper.append(hi)
    row += 1

  for i in range(n):  # each sequence in one slot
    add([(x(i, s), 1.0) for s in range(m)], 1.0, 1.0)
  for s, (k, j) in enumerate(places):
    members = range(n)
    add([(x(i, s), float(lengths[i])) for i in members] + [(y(s), -float(capacity[k]))],
        -np.inf, 0.0)  # memory, and only in a slot in use
    if slots[k] < n:
      add([(x(i, s), 1.0) for i in members] + [(y(s), -float(slots[k]))], -np.inf, 0.0)
    add([(x(i, s), times[i, k] / scale) for i in members] + [(y(s), fixed[k] / scale),
                                                              (t_var, -1.0)], -np.inf, 0.0)
    if j:  # slots of one degree are used in order (symmetry)
      add([(y(s), 1.0), (y(s - 1), -1.0)], -np.inf, 0.0)
  add([(y(s), float(ds[k])) for s, (k, _) in enumerate(places)], -np.inf, float(num_devices))
  matrix = scipy.sparse.csr_array((vals, (rows, cols)), shape=(row, n * m + m + 1))
  upper_bounds = np.ones(n * m + m + 1)
  for s, (k, _) in enumerate(places):  # a sequence never goes where it cannot fit
    upper_bounds[[x(i, s) for i in np.flatnonzero(lengths > capacity[k])]] = 0.0
  upper_bounds[t_var] = np.inf
  objective = np.zeros(n * m + m + 1)
  objective[t_var] = 1.0
  integrality = np.ones(n * m + m + 1)
  integrality[t_var] = 0
  result = scipy.optimize.milp(
      objective, integrality=integrality,
      bounds=scipy.optimize.Bounds(np.zeros_like(upper_bounds), upper_bounds),
      constraints=scipy.optimize.LinearConstraint(matrix, lower, upper),
      options=dict(time_limit=time_limit, disp=False))
  if result.x is None:
    raise ValueError(f"the planner found no plan for {n} sequences on {num_devices} devices "
                     f"within {time_limit} s ({result.message})")
  chosen = result.x[:n * m].reshape(n, m) > 0.5
  groups = [(int(ds[k]), np.flatnonzero(chosen[:, s]))
            for s, (k, _) in enumerate(places) if result.x[y(s)] > 0.5]
  plan = make_plan(groups, lengths, cost, num_devices)
  bound = result.mip_dual_bound
  bound = plan.time if result.status == 0 else (
      float(bound) * scale if bound is not None and math.isfinite(bound) else 0.0)
  return plan, min(bound, plan.time)
