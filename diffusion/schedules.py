"""Sampling schedules of a few model calls: each step's noise levels, solver and left-out blocks.

A Schedule is what a few-step sampler runs: K steps between K + 1 noise levels from 1 (noise)
down to 0 (data), each step Euler (one model call) or Heun (two; the last step, to sigma = 0, is
always Euler), and each step may leave out chosen DiT blocks (DiT(skip_blocks=...)), so a step
can cost less than a whole model call. Its cost is counted in model calls and in block calls.

Schedules have names, resolved by `resolve` for sample.py --schedule, python -m eval
--schedule and config.sample.schedule:
  ""              the config's sample.num_steps and sample.sampler (the default)
  "uniform-K"     K Euler steps, uniform in t and then shifted (the config's sampling shift)
  "heun-K"        as many Heun steps as K model calls allow (K odd: (K + 1) / 2 steps)
  "searched-K"    <workdir>/schedules/searched-K.json, written by python -m eval.search_schedule
                  (any other name: <workdir>/schedules/<name>.json, e.g. a search's --name)
  a path          a .json file written by Schedule.save
`sample_schedule` takes a schedule as arrays (noise levels, solvers, skipped blocks), so one
compilation of it serves every schedule of K steps (the search compiles once per K; a
VideoSampler bakes its one schedule in).
"""
import dataclasses
import json
import os
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.flow_matching import shift_timesteps
from diffusion.samplers import FULL_INTERVAL, SAMPLERS, guided

SCHEDULES_DIR = "schedules"  # in a run's workdir


@dataclasses.dataclass(frozen=True)
class Schedule:
  sigmas: tuple[float, ...]                # K + 1 noise levels, 1 down to 0, decreasing
  solvers: tuple[str, ...]                 # K: "euler" or "heun" (the last step runs Euler)
  skip: tuple[tuple[int, ...], ...] = ()   # K: block indices each step leaves out; () none
  name: str = ""
  meta: dict = dataclasses.field(default_factory=dict, compare=False)  # how it was made

  def __post_init__(self):
    if not self.skip:
      object.__setattr__(self, "skip", ((),) * len(self.solvers))
    if errors := self.errors():
      raise ValueError(f"schedule {self.name or ''}: " + "; ".join(errors))

  def errors(self, depth: int | None = None) -> list[str]:
    """What is wrong with this schedule ([] if nothing), for a DiT of `depth` blocks if given."""
    errors = []
    s = np.asarray(self.sigmas, np.float64)
    if s.ndim != 1 or len(s) < 2 or s[0] != 1.0 or s[-1] != 0.0 or np.any(np.diff(s) >= 0):
      errors.append(f"sigmas {list(self.sigmas)} must decrease strictly from 1 to 0")
    if len(self.solvers) != len(s) - 1 or any(x not in SAMPLERS for x in self.solvers):
      errors.append(f"solvers {list(self.solvers)} must be {len(s) - 1} of {list(SAMPLERS)}")
    if len(self.skip) != len(self.solvers):
      errors.append(f"skip must list the left-out blocks of each of the {len(self.solvers)} "
                    "steps")
    bad = [b for blocks in self.skip for b in blocks
           if b < 0 or (depth is not None and b >= depth)]
    if bad:
      errors.append(f"skipped blocks {bad} are not blocks of the model (0..{depth - 1})"
                    if depth is not None else f"skipped blocks {bad} must be at least 0")
    return errors

  @property
  def num_steps(self) -> int:
    return len(self.solvers)

  def evaluations(self) -> list[int]:
    """Model evaluations of each step: Heun 2, Euler and the last step 1."""
    last = self.num_steps - 1
    return [2 if solver == "heun" and k < last else 1 for k, solver in enumerate(self.solvers)]

  def calls(self) -> int:
    """Model calls of one sample (a guided call, both halves in one batch, counts once)."""
    return sum(self.evaluations())

  def block_calls(self, depth: int) -> int:
    """DiT block evaluations of one sample: each call runs depth blocks less those skipped."""
    return sum(n * (depth - len(set(skip))) for n, skip in zip(self.evaluations(), self.skip))

  def arrays(self, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigmas float32 [K + 1], heun bool [K], skip bool [K, depth]): sample_schedule's input."""
    if errors := self.errors(depth):
      raise ValueError(f"schedule {self.name}: " + "; ".join(errors))
    skip = np.zeros((self.num_steps, depth), bool)
    for k, blocks in enumerate(self.skip):
      skip[k, list(blocks)] = True
    heun = np.asarray(self.evaluations()) == 2
    return np.asarray(self.sigmas, np.float32), heun, skip

  def describe(self, depth: int | None = None) -> str:
    steps = " ".join(f"{s:.3f}" for s in self.sigmas)
    cost = f"{self.calls()} calls"
    if depth and any(self.skip):
      cost = (f"{self.calls()} evaluations of {self.block_calls(depth)} block calls in all: "
              f"{self.block_calls(depth) / depth:g} calls' worth")
    return f"{self.name or 'schedule'}: sigmas {steps}; {', '.join(self.solvers)}; {cost}"

  def to_dict(self) -> dict:
    return dict(name=self.name, sigmas=[float(s) for s in self.sigmas],
                solvers=list(self.solvers), skip=[list(b) for b in self.skip], meta=self.meta)

  @classmethod
  def from_dict(cls, d: dict) -> "Schedule":
    return cls(sigmas=tuple(float(s) for s in d["sigmas"]), solvers=tuple(d["solvers"]),
               skip=tuple(tuple(int(b) for b in blocks) for blocks in d.get("skip", ())),
               name=d.get("name", ""), meta=d.get("meta", {}))

  def save(self, path: str) -> None:
    """Writes the schedule as JSON (a temporary file, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(self.to_dict(), f, indent=1)
    os.replace(path + ".tmp", path)

  @classmethod
  def load(cls, path: str) -> "Schedule":
    with open(path) as f:
      return cls.from_dict(json.load(f))


def uniform(num_steps: int, shift: float = 1.0, solver: str = "euler") -> Schedule:
  """num_steps steps of one solver, uniform in t and then shifted (samplers.sigma_schedule)."""
  if num_steps < 1:
    raise ValueError(f"a schedule needs at least one step, got {num_steps}")
  sigmas = shift_timesteps(np.linspace(1.0, 0.0, num_steps + 1), shift)
  sigmas[0], sigmas[-1] = 1.0, 0.0
  name = (f"uniform-{num_steps}" if solver == "euler" else f"heun-{2 * num_steps - 1}")
  return Schedule(tuple(float(s) for s in sigmas), (solver,) * num_steps, name=name,
                  meta=dict(shift=float(shift)))


def saved_path(workdir: str, name: str) -> str:
  """Where a run keeps a named schedule: <workdir>/schedules/<name>.json."""
  return os.path.join(workdir, SCHEDULES_DIR, f"{name}.json")


def searched_path(workdir: str, calls: int) -> str:
  return saved_path(workdir, f"searched-{calls}")


def _calls(spec: str, kind: str) -> int | None:
  """K of a name "<kind>-K" (K >= 1), else None."""
  head, _, count = spec.partition("-")
  return int(count) if head == kind and count.isdigit() and int(count) >= 1 else None


def schedule_name_errors(spec) -> list[str]:
  """What is wrong with a schedule's name (not whether its file exists): [] if nothing."""
  if not isinstance(spec, str):
    return [f"sample.schedule={spec!r} must be a string"]
  if not spec or spec.endswith(".json"):
    return []
  if spec.partition("-")[0] in ("uniform", "heun"):  # generated: K must be a count
    if _calls(spec, "uniform") or _calls(spec, "heun"):
      return []
  elif re.fullmatch(r"[\w.-]+", spec):  # a schedule saved in the run
    return []
  return [f"sample.schedule={spec!r}: use uniform-K or heun-K (K model calls), a schedule the "
          "run saved (searched-K), a .json file, or '' for sample.num_steps and sample.sampler"]


def resolve(spec: str, workdir: str | None, shift: float) -> Schedule | None:
  """The schedule a name or file stands for (module docstring); None for "" (the config's
  sample.num_steps and sampler). Errors say which names exist."""
  if not spec:
    return None
  if errors := schedule_name_errors(spec):
    raise ValueError(errors[0])
  if calls := _calls(spec, "uniform"):
    return uniform(calls, shift)
  if calls := _calls(spec, "heun"):  # K calls: (K + 1) / 2 steps, the last one Euler
    return dataclasses.replace(uniform((calls + 1) // 2, shift, "heun"), name=spec)
  if spec.endswith(".json"):
    if not os.path.exists(spec):
      raise FileNotFoundError(f"schedule file {spec} does not exist")
    return Schedule.load(spec)
  path = saved_path(workdir or ".", spec)
  if not os.path.exists(path):
    folder = os.path.dirname(path)
    found = sorted(n.removesuffix(".json") for n in os.listdir(folder)) if os.path.isdir(
        folder) else []
    calls = _calls(spec, "searched")
    raise FileNotFoundError(
        f"schedule {spec!r}: {path} does not exist (the run has: {found or 'none'}); search "
        f"it with python -m eval.search_schedule --workdir={workdir}"
        + (f" --calls={calls}" if calls else f" --name={spec}"))
  return Schedule.load(path)


def sample_schedule(velocity_fn: Callable, x: jax.Array, sigmas: jax.Array, heun: jax.Array,
                    skip: jax.Array) -> jax.Array:
  """Integrates from noise x [B, ...] along a schedule's arrays (Schedule.arrays): step k goes
  from sigmas[k] to sigmas[k + 1] by Euler, or Heun where heun[k], with velocity_fn(x, sigma,
  skip[k]) -> v. A Heun corrector runs only where chosen (lax.cond), so a sample costs the
  schedule's model calls, not twice them."""
  def step(k, x):
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    v = velocity_fn(x, sigma, skip[k])
    euler = x + (sigma_next - sigma) * v
    return jax.lax.cond(
        heun[k],
        lambda: x + (sigma_next - sigma) * (v + velocity_fn(euler, sigma_next, skip[k])) / 2,
        lambda: euler)

  return jax.lax.fori_loop(0, sigmas.shape[0] - 1, step, x)


def guided_skipping_velocity(model, cond: dict, guidance_scale: float,
                             interval: tuple[float, float] = FULL_INTERVAL) -> Callable:
  """The model's guided velocity (x, sigma, skip bool [depth]) -> v, skipping those blocks."""
  def velocity(x, sigma, skip):
    fn = guided(lambda x, t, drop, cond: (model(x, t, drop_cond=drop, skip_blocks=skip, **cond),
                                          None), cond, guidance_scale, interval)
    return fn(x, sigma)[0]

  return velocity


def sample(model, key: jax.Array, shape: tuple[int, ...], cond: dict, schedule: Schedule, *,
           guidance_scale: float = 1.0,
           guidance_interval: tuple[float, float] = FULL_INTERVAL) -> jax.Array:
  """Videos float32 `shape` [B, T, H, W, C] from noise N(0, I) made from `key`, along
  `schedule`."""
  sigmas, heun, skip = schedule.arrays(model.config.depth)
  noise = jax.random.normal(key, shape, jnp.float32)
  return sample_schedule(guided_skipping_velocity(model, cond, guidance_scale, guidance_interval),
                         noise, jnp.asarray(sigmas), jnp.asarray(heun), jnp.asarray(skip))
