"""Evolutionary search of few-step sampling schedules (AutoDiffusion, Li et al. 2023).

The search space is every Schedule (diffusion/schedules.py) within a budget of model calls: how
many steps, their noise levels, each step's solver (Euler, or Heun's two calls), and, for a DiT
of `depth` blocks, which blocks each step leaves out, so that a step may cost less than a model
call and the budget is counted in block calls (calls x depth). A candidate is scored by a
function the caller gives (lower is better; python -m eval.search_schedule uses the Fréchet
distance of a feature network's features of generated against real videos).

Each generation keeps the best `parents` candidates and makes the rest by crossover of two of
them (each noise level, solver and skip set from either) and mutation (noise levels moved in
logit space, a solver flipped, a step added or removed, a block skipped or restored), repaired
into the budget. Scores are cached by candidate, the first population holds the starting
schedule, and the random draws come from one seed: the same seed and a deterministic score give
the same search, and the result is never worse than the start.
"""
import dataclasses
import json
import time
from collections.abc import Callable

import numpy as np

from diffusion.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  calls: int                 # the budget: model calls per sample (block calls: calls * depth)
  depth: int = 0             # the DiT's blocks, which steps may leave out (0: no skipping)
  max_skip: int = 0          # blocks a step may leave out at most (0: none)
  heun: bool = True          # steps may be Heun steps (two calls)
  min_sigma: float = 0.01    # the lowest nonzero noise level

  def __post_init__(self):
    if self.calls < 1 or self.max_skip < 0 or (self.max_skip and self.max_skip >= self.depth):
      raise ValueError(f"search space {self}: calls must be at least 1 and max_skip below "
                       "depth (a step keeps at least one block)")
    if not 0 < self.min_sigma < 1:
      raise ValueError(f"min_sigma={self.min_sigma} must lie in (0, 1)")

  def cost(self, schedule: Schedule) -> float:
    """The schedule's cost in model calls (block calls / depth when blocks may be skipped)."""
    if self.max_skip:
      return schedule.block_calls(self.depth) / self.depth
    return float(schedule.calls())

  def admits(self, schedule: Schedule) -> bool:
    return (self.cost(schedule) <= self.calls + 1e-9
            and all(len(s) <= self.max_skip for s in schedule.skip)
            and (self.heun or "heun" not in schedule.solvers[:-1])
            and min(schedule.sigmas[:-1]) >= self.min_sigma)


@dataclasses.dataclass
class SearchResult:
  best: Schedule
  best_score: float
  start_score: float
  history: list[dict]        # per generation: best score so far, evaluations, seconds
  evaluations: int


def _logit(s):
  return np.log(s) - np.log1p(-s)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _key(schedule: Schedule) -> str:
  d = schedule.to_dict()
  d["sigmas"] = [round(s, 6) for s in d["sigmas"]]
  return json.dumps([d["sigmas"], d["solvers"], [sorted(b) for b in d["skip"]]])


def _make(sigmas, solvers, skip) -> Schedule | None:
  """A schedule of interior noise levels (any order) with solvers and skip sets, or None when
  two levels coincide."""
  inner = np.sort(np.asarray(sigmas, np.float64))[::-1]
  levels = np.concatenate([[1.0], inner, [0.0]])
  if len(inner) and (np.any(np.diff(levels) >= -1e-4)):
    return None
  solvers = [*solvers[:-1], "euler"]  # the last step runs Euler whatever it says: one key
  return Schedule(tuple(float(s) for s in levels), tuple(solvers),
                  tuple(tuple(sorted(set(b))) for b in skip))


class _Evolution:
  def __init__(self, space: SearchSpace, rng: np.random.Generator, sigma_step: float):
    self.space, self.rng, self.sigma_step = space, rng, sigma_step

  def mutate(self, s: Schedule) -> Schedule | None:
    inner = list(s.sigmas[1:-1])
    solvers, skip = list(s.solvers), [list(b) for b in s.skip]
    moves = ["sigmas", "add", "remove"] + (["solver"] if self.space.heun else []) + (
        ["skip"] if self.space.max_skip else [])
    move = moves[self.rng.integers(len(moves))]
    if move == "sigmas" and inner:
      z = _logit(np.clip(inner, 1e-6, 1 - 1e-6))
      which = self.rng.random(len(z)) < max(0.5, 1 / len(z))
      z = z + which * self.rng.normal(0, self.sigma_step, len(z))
      inner = list(np.clip(_sigmoid(z), self.space.min_sigma, 0.999))
    elif move == "add" or (move == "sigmas" and not inner):
      k = int(self.rng.integers(len(solvers)))
      lo, hi = s.sigmas[k + 1], s.sigmas[k]
      lo = max(lo, self.space.min_sigma) if k == len(solvers) - 1 else lo
      if hi - lo < 1e-3:
        return None
      inner.append(float(self.rng.uniform(lo, hi)))
      solvers.insert(k, "euler")
      skip.insert(k, [])
    elif move == "remove":
      if not inner:
        return None
      i = int(self.rng.integers(len(inner)))  # merges steps i and i + 1
      del inner[i], solvers[i + 1], skip[i + 1]
    elif move == "solver":
      k = int(self.rng.integers(max(1, len(solvers) - 1)))  # the last step is always Euler
      solvers[k] = "heun" if solvers[k] == "euler" else "euler"
    elif move == "skip":
      k = int(self.rng.integers(len(solvers)))
      block = int(self.rng.integers(self.space.depth))
      skip[k] = [b for b in skip[k] if b != block] if block in skip[k] else skip[k] + [block]
    return _make(inner, solvers, skip)

  def crossover(self, a: Schedule, b: Schedule) -> Schedule | None:
    if a.num_steps != b.num_steps:
      return self.mutate(a)
    pick = lambda x, y: x if self.rng.random() < 0.5 else y
    inner = [pick(x, y) for x, y in zip(a.sigmas[1:-1], b.sigmas[1:-1])]
    steps = [pick((sa, ka), (sb, kb)) for sa, ka, sb, kb in zip(a.solvers, a.skip, b.solvers,
                                                                b.skip)]
    return _make(inner, [s for s, _ in steps], [k for _, k in steps])

  def repair(self, s: Schedule | None) -> Schedule | None:
    """Within the budget by one random cut at a time: a Heun step made Euler, a step dropped,
    or (where blocks may be skipped) one more block skipped at a step; None if it cannot be."""
    for _ in range(64):
      if s is None or self.space.admits(s):
        return s
      inner, solvers, skip = list(s.sigmas[1:-1]), list(s.solvers), [list(b) for b in s.skip]
      skip = [b[:self.space.max_skip] for b in skip]
      heun = [k for k, x in enumerate(solvers[:-1]) if x == "heun"]
      open_steps = [k for k, b in enumerate(skip) if len(b) < self.space.max_skip]
      cuts = (["euler"] * bool(heun) + ["drop"] * bool(inner)
              + ["skip"] * bool(open_steps))
      if not self.space.heun and heun:
        cuts = ["euler"]
      if not cuts:
        return None
      cut = cuts[int(self.rng.integers(len(cuts)))]
      if cut == "euler":
        solvers[heun[int(self.rng.integers(len(heun)))]] = "euler"
      elif cut == "drop":
        i = int(self.rng.integers(len(inner)))
        del inner[i], solvers[i + 1], skip[i + 1]
      else:
        k = open_steps[int(self.rng.integers(len(open_steps)))]
        free = [b for b in range(self.space.depth) if b not in skip[k]]
        skip[k].append(free[int(self.rng.integers(len(free)))])
      inner = [max(x, self.space.min_sigma) for x in inner]
      s = _make(inner, solvers, skip)
    return None


def search(score: Callable[[Schedule], float], space: SearchSpace, start: Schedule, *,
           seed: int = 0, population: int = 16, generations: int = 8, parents: int = 4,
           sigma_step: float = 0.5, log: Callable | None = print) -> SearchResult:
  """The best schedule found within `space` by an evolutionary search from `start` (module
  docstring). score(schedule) -> float, lower is better; it is called once per distinct
  candidate: population + generations * (population - parents) times at most."""
  if not space.admits(start):
    raise ValueError(f"the starting schedule ({start.describe()}) is outside the search space "
                     f"({space}): start from one within the budget")
  if not 1 <= parents < population:
    raise ValueError(f"parents={parents} must be at least 1 and below population={population}")
  rng = np.random.default_rng(seed)
  evolution = _Evolution(space, rng, sigma_step)
  scores: dict[str, tuple[float, Schedule]] = {}
  log = log or (lambda message: None)
  began = time.perf_counter()

  def evaluate(s: Schedule) -> float:
    key = _key(s)
    if key not in scores:
      scores[key] = (float(score(s)), s)
    return scores[key][0]

  def offspring(pool: list[Schedule], count: int) -> list[Schedule]:
    children, tries = [], 0
    while len(children) < count and tries < 50 * count:
      tries += 1
      if len(pool) > 1 and rng.random() < 0.5:
        i, j = rng.choice(len(pool), 2, replace=False)
        child = evolution.crossover(pool[i], pool[j])
        child = evolution.mutate(child) if child is not None and rng.random() < 0.5 else child
      else:
        child = evolution.mutate(pool[int(rng.integers(len(pool)))])
      child = evolution.repair(child)
      if child is not None and _key(child) not in scores and all(
          _key(child) != _key(c) for c in children):
        children.append(child)
    return children

  start_score = evaluate(start)
  members = [start] + offspring([start], population - 1)
  history = []
  for generation in range(generations + 1):
    ranked = sorted(members, key=evaluate)
    best = ranked[0]
    history.append(dict(generation=generation, best_score=evaluate(best),
                        evaluations=len(scores),
                        seconds=round(time.perf_counter() - began, 2)))
    log(f"generation {generation}: best {evaluate(best):.4f} ({best.describe(space.depth or None)}"
        f"), {len(scores)} schedules scored")
    if generation == generations:
      break
    elite = ranked[:parents]
    members = elite + offspring(elite, population - parents)
  best_score, best = min(scores.values(), key=lambda item: item[0])
  meta = dict(method="evolutionary (AutoDiffusion)", seed=seed, population=population,
              generations=generations, parents=parents, budget_calls=space.calls,
              max_skip=space.max_skip, score=best_score, start=start.to_dict(),
              start_score=start_score, evaluations=len(scores))
  best = dataclasses.replace(best, name=f"searched-{space.calls}", meta=meta)
  return SearchResult(best, best_score, start_score, history, len(scores))
