"""The evolutionary schedule search, on a toy flow whose best schedule is known."""
import dataclasses

import numpy as np
import pytest

from diffusion import schedules
from diffusion.schedule_search import SearchSpace, search
from eval.frechet import Gaussian, frechet_distance

SCALES = np.array([0.3, 0.6, 1.2])  # the data: N(MEAN, diag(SCALES^2)), noise N(0, I)
MEAN = np.array([0.5, -1.0, 0.0])
NOISE = np.random.default_rng(0).standard_normal((4000, 3))


def exact_velocity(x, sigma):
  """E[noise - x0 | x_sigma] for Gaussian data: the flow any perfect model learns."""
  var = (1 - sigma) ** 2 * SCALES ** 2 + sigma ** 2
  x0 = MEAN + (1 - sigma) * SCALES ** 2 / var * (x - (1 - sigma) * MEAN)
  return (x - x0) / sigma


def run(schedule):
  x = NOISE
  for k, (s, s_next) in enumerate(zip(schedule.sigmas[:-1], schedule.sigmas[1:])):
    v = exact_velocity(x, s)
    euler = x + (s_next - s) * v
    x = euler if schedule.evaluations()[k] == 1 else x + (s_next - s) * (
        v + exact_velocity(euler, s_next)) / 2
  return x


def score(schedule):
  """Fréchet distance of the samples to the data distribution."""
  return frechet_distance(run(schedule), Gaussian(MEAN, np.diag(SCALES ** 2)))


def best_two_steps():
  """The best two-Euler-step schedule, by a fine grid over its one free noise level."""
  grid = np.linspace(0.005, 0.995, 1981)
  scores = [score(schedules.Schedule((1.0, s, 0.0), ("euler", "euler"))) for s in grid]
  return grid[int(np.argmin(scores))], min(scores)


def test_the_search_finds_the_known_best_and_improves_on_its_start():
  sigma, optimum = best_two_steps()
  start = schedules.uniform(2, shift=3.0)  # sigma 0.75
  result = search(score, SearchSpace(calls=2, min_sigma=0.005), start, seed=3, population=10,
                  generations=8, parents=3, log=None)
  assert result.start_score == score(start) > 1.2 * optimum
  assert result.best.calls() <= 2 and result.best.errors() == []
  assert result.best_score == pytest.approx(score(result.best))
  assert result.best_score <= optimum * 1.02  # the start is 1.7x the optimum
  if result.best.num_steps == 2:
    assert result.best.sigmas[1] == pytest.approx(sigma, abs=0.05)
  assert [h["best_score"] for h in result.history] == sorted(
      (h["best_score"] for h in result.history), reverse=True)


def test_the_search_is_deterministic_for_a_seed_and_keeps_its_budget():
  space = SearchSpace(calls=4)
  options = dict(seed=5, population=6, generations=3, parents=2, log=None)
  start = schedules.uniform(4, shift=3.0)
  first = search(score, space, start, **options)
  again = search(score, space, start, **options)
  other = search(score, space, start, **(options | dict(seed=6)))
  assert first.best == again.best and first.history[-1] == dataclasses.replace(
      first, history=again.history).history[-1] | dict(seconds=first.history[-1]["seconds"])
  assert first.best != other.best
  assert first.best.calls() <= 4 and first.best_score < first.start_score
  assert first.best.name == "searched-4" and first.best.meta["start_score"] == first.start_score


def test_skipping_blocks_counts_in_block_calls():
  space = SearchSpace(calls=2, depth=4, max_skip=2)
  # Three steps whose blocks make up two calls: 4 + 2 + 2 block calls.
  cheap = schedules.Schedule((1.0, 0.6, 0.3, 0.0), ("euler",) * 3, ((), (0, 1), (2, 3)))
  assert space.cost(cheap) == 2.0 and space.admits(cheap)
  assert not space.admits(schedules.uniform(3))
  found = search(lambda s: score(s) + 0.01 * sum(map(len, s.skip)), space, schedules.uniform(2),
                 seed=0, population=6, generations=2, parents=2, log=None)
  assert space.admits(found.best)
  # One call's blocks spread over two steps beat one whole step (this toy flow's velocity does
  # not depend on the blocks): the search finds steps that cost less than a call.
  one_call = SearchSpace(calls=1, depth=4, max_skip=2)
  found = search(score, one_call, schedules.uniform(1), seed=0, population=8, generations=4,
                 parents=2, log=None)
  assert found.best.num_steps == 2 and found.best.block_calls(4) == 4
  assert found.best_score < 0.5 * found.start_score


def test_a_start_outside_the_budget_is_an_error():
  with pytest.raises(ValueError, match="outside the search space"):
    search(score, SearchSpace(calls=2), schedules.uniform(3), log=None)
