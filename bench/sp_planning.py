"""Adaptive sequence parallelism (FlexSP, sharding/sp_planner.py) on long-tail mixes of video
lengths (lognormal token counts, clipped to 4K-256K):

  1. planning time of the heuristic and the exact MILP (HiGHS, with a time limit) for 8, 64 and
     1,024 devices with 4x as many sequences, and the heuristic's plan time over the MILP's
     (its best plan, and its proven lower bound);
  2. simulated step time, with the published H100 figures (sharding/sp_cost.py) and the 7B
     DiT's workload (training/flops.py), of adaptive plans against every static degree over
     many steps: the best fixed degree for the whole run, and the best degree chosen per step;
  3. measured on this machine's 8 devices (simulated CPU devices by default): the executor's
     gradient step of a small DiT on one long-tail mix, the adaptive plan (from the measured
     cost model) against each static degree.

    python -m bench.sp_planning         # results in bench/results/sp_planning-<device>-<time>.*
"""
import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import dataclasses  # noqa: E402
import importlib.metadata  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from bench import records  # noqa: E402
from configs.common import DEFAULT_RULES, flow_config, model_config  # noqa: E402
from data.packing import pack_rows  # noqa: E402
from data.planned_batches import row_length  # noqa: E402
from dit.config import DiTConfig  # noqa: E402
from dit.model import DiT  # noqa: E402
from rundir.logs import quiet_library_logs  # noqa: E402
from sharding.mesh import make_mesh  # noqa: E402
from sharding.sp_calibration import measure_hardware  # noqa: E402
from sharding.sp_cost import PUBLISHED, CostModel  # noqa: E402
from sharding.sp_planner import (heuristic_plan, lower_bound, make_plan,  # noqa: E402
                                 milp_plan, static_plan)
from training.adaptive_step import group_grad_fn_for  # noqa: E402
from training.flops import sequence_workload  # noqa: E402
from sharding.sp_executor import PlanExecutor  # noqa: E402

flags.DEFINE_list("devices", ["8", "64", "1024"], "device counts for the planning time")
flags.DEFINE_integer("batches", 3, "random batches per device count (planning time)")
flags.DEFINE_float("milp_seconds", 30.0, "the MILP's time limit per batch")
flags.DEFINE_integer("milp_max_devices", 64, "run the MILP up to this many devices")
flags.DEFINE_integer("sim_devices", 64, "devices of the simulated step times")
flags.DEFINE_integer("sim_steps", 50, "simulated steps per mix")
flags.DEFINE_integer("cpu_steps", 3, "timed steps per method on this machine (0: skip)")
flags.DEFINE_list("cpu_static", ["1", "2", "4", "8"], "static degrees measured on this machine")
flags.DEFINE_string("out", str(records.RESULTS), "results folder")
FLAGS = flags.FLAGS

SHORTEST, LONGEST = 4096, 262144


def long_tail(rng, count: int, median: float, sigma: float) -> np.ndarray:
  return np.clip(rng.lognormal(np.log(median), sigma, count), SHORTEST, LONGEST).astype(int)


def step_lengths(rng, budget: int, median: float, sigma: float) -> np.ndarray:
  """Lognormal sequences drawn until the next would pass the step's token budget."""
  lengths, total = [], 0
  while True:
    length = int(long_tail(rng, 1, median, sigma)[0])
    if lengths and total + length > budget:
      return np.array(lengths)
    lengths.append(length)
    total += length


def h100_7b(remat: str) -> CostModel:
  config = DiTConfig.from_dict(model_config("7B", remat=remat, dtype="bfloat16"))
  # The state sharded over all devices (ZeRO-3), as FlexSP trains: the executor here keeps it
  # whole on every device, which a 7B model on 80 GB would not fit.
  return CostModel(PUBLISHED["h100"], sequence_workload(config, zero_shards=FLAGS.sim_devices))


def planning_time() -> list[dict]:
  cost = h100_7b("full")
  rows = []
  for devices in map(int, FLAGS.devices):
    rng = np.random.default_rng(devices)
    for batch in range(FLAGS.batches):
      lengths = long_tail(rng, 4 * devices, 8192, 1.0)
      start = time.perf_counter()
      plan = heuristic_plan(lengths, devices, cost)
      row = dict(devices=devices, sequences=len(lengths), batch=batch,
                 heuristic_s=time.perf_counter() - start, heuristic_time=plan.time)
      bound = lower_bound(lengths, devices, cost)
      if devices <= FLAGS.milp_max_devices:
        start = time.perf_counter()
        exact, milp_bound = milp_plan(lengths, devices, cost, time_limit=FLAGS.milp_seconds)
        row.update(milp_s=time.perf_counter() - start, milp_time=exact.time,
                   milp_bound=milp_bound, over_milp=plan.time / exact.time)
        bound = max(bound, milp_bound)
      row.update(bound=bound, over_bound=plan.time / bound)
      print(row, flush=True)
      rows.append(row)
  return rows


MIXES = (  # (name, median tokens, sigma, step budget in tokens per device)
    ("median 8K, sigma 1.0", 8192, 1.0, 12288),
    ("median 8K, sigma 1.5", 8192, 1.5, 12288),
    ("median 16K, sigma 1.0", 16384, 1.0, 16384),
)


def simulated_step_time() -> list[dict]:
  devices = FLAGS.sim_devices
  degrees = [2**k for k in range(int(np.log2(devices)) + 1)]
  rows = []
  for remat in ("full", "none"):
    cost = h100_7b(remat)
    for name, median, sigma, per_device in MIXES:
      rng = np.random.default_rng(0)
      adaptive, static = [], {d: [] for d in degrees}
      for _ in range(FLAGS.sim_steps):
        lengths = step_lengths(rng, per_device * devices, median, sigma)
        adaptive.append(heuristic_plan(lengths, devices, cost).time)
        for d in degrees:
          plan = static_plan(lengths, devices, d, cost)
          static[d].append(np.inf if plan is None else plan.time)
      totals = {d: float(np.sum(v)) for d, v in static.items()}
      best = min(totals, key=totals.get)
      per_step = float(np.sum(np.min([static[d] for d in degrees], axis=0)))
      row = dict(remat=remat, mix=name, devices=devices, steps=FLAGS.sim_steps,
                 tokens_per_device=cost.capacity(1), adaptive_s=float(np.sum(adaptive)),
                 static_s={str(d): t for d, t in totals.items()}, best_static=best,
                 speedup_vs_best_static=totals[best] / float(np.sum(adaptive)),
                 speedup_vs_per_step_static=per_step / float(np.sum(adaptive)))
      print(row, flush=True)
      rows.append(row)
  return rows


def measured_on_this_machine() -> dict:
  """The executor's gradient step on this machine's first 8 devices: adaptive against static."""
  devices = jax.devices()[:8]
  config = DiTConfig.from_dict(model_config(
      "tiny", hidden_size=64, depth=2, num_heads=8, dual_stream_depth=1, patch_size=(1, 4, 4),
      in_channels=1, dtype="float32", conditioning="label", attention="xla"))
  model = DiT(config, rngs=nnx.Rngs(0))
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  tokens_per_device, slots = 256, 8
  hardware = measure_hardware(devices, config.hidden_size)
  cost = CostModel(hardware, sequence_workload(config), tokens_per_device=tokens_per_device,
                   slots_per_device=slots)
  # A long-tail mix: frames of 8x8 patches (64 tokens a frame), lognormal durations from 1 to
  # 8 frames; the longest (512 tokens) needs a group of 2 devices' memory, so static plans run
  # every video at degree 2 or more.
  rng = np.random.default_rng(0)
  frames = np.concatenate([[8], np.clip(rng.lognormal(np.log(2), 0.8, 64), 1, 8)]).astype(int)
  lengths, budget = [], len(devices) * tokens_per_device * 3 // 4
  for f in frames:
    if sum(lengths) + 64 * f > budget:
      continue
    lengths.append(64 * int(f))
  lengths = np.array(lengths)
  examples = [dict(video=rng.standard_normal((n // 64, 32, 32, 1)).astype(np.float32),
                   label=np.int32(rng.integers(10))) for n in lengths]
  executor = PlanExecutor(group_grad_fn_for(config, flow_config()), make_mesh(
      {"data": len(devices)}, devices), DEFAULT_RULES, num_heads=config.num_heads)
  replicated = NamedSharding(executor.flat, P())
  params, model_state = jax.device_put((params, model_state), replicated)

  def row_of(members, degree):
    row = pack_rows([examples[i] for i in members], [list(range(len(members)))],
                    patch_size=(1, 4, 4), row_tokens=row_length(
                        int(lengths[list(members)].sum()), degree, cost.capacity(degree)),
                    max_slots=degree * slots)
    return {k: v for k, v in row.items() if k in ("patches", "segment_ids", "positions",
                                                   "label")}

  def seconds(plan, steps):
    rows = [None if not members else row_of(members, degree) for degree, members in plan.groups]
    key = jax.random.key(0)
    run = lambda: jax.block_until_ready(executor.gradients(
        params, model_state, plan, rows, key, sum(len(m) for _, m in plan.groups)))
    run()  # compiles
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    return float(np.median(times))

  # Calibration on the model itself: one group of each degree running the same sequences,
  # measured over predicted, scales the cost model's times at that degree.
  probe = tuple(int(i) for i in np.flatnonzero(lengths <= tokens_per_device)[:2])
  factors = []
  for d in (1, 2, 4, 8):
    plan = make_plan([(d, probe)], lengths, cost, len(devices))
    factors.append((d, seconds(plan, FLAGS.cpu_steps) / plan.time))
  cost = dataclasses.replace(cost, degree_factors=tuple(factors))
  print("measured / predicted per degree:", factors, flush=True)

  plans = {"adaptive": heuristic_plan(lengths, len(devices), cost)}
  for d in map(int, FLAGS.cpu_static):
    plan = static_plan(lengths, len(devices), d, cost)
    if plan is not None:
      plans[f"static {d}"] = plan
  results = {}
  for name, plan in plans.items():
    results[name] = dict(step_s=seconds(plan, FLAGS.cpu_steps), predicted_s=plan.time,
                         groups=[d for d, m in plan.groups if m])
    print(name, results[name], flush=True)
  static = {k: v for k, v in results.items() if k.startswith("static")}
  best = min(static, key=lambda k: static[k]["step_s"])
  return dict(devices=len(devices), device=devices[0].device_kind,
              hardware=dataclasses.asdict(hardware), degree_factors=factors,
              lengths=lengths.tolist(),
              tokens_per_device=tokens_per_device, results=results, best_static=best,
              speedup_vs_best_static=static[best]["step_s"] / results["adaptive"]["step_s"])


def main(argv):
  del argv
  quiet_library_logs()
  planning = planning_time()
  simulated = simulated_step_time()
  measured = measured_on_this_machine() if FLAGS.cpu_steps else None
  meta = records.environment() | dict(
      cpus=os.cpu_count(), scipy=importlib.metadata.version("scipy"),
      simulated_hardware=dataclasses.asdict(PUBLISHED["h100"]),
      lengths=f"lognormal token counts clipped to [{SHORTEST}, {LONGEST}]")
  table = ["## Planning time (7B DiT, H100 cost model, 4 sequences per device)\n",
           f"The MILP runs for at most {FLAGS.milp_seconds:.0f} s; the lower bound is the "
           "larger of the MILP's and sp_planner.lower_bound's (no plan can be faster).\n",
           "| devices | sequences | heuristic s | MILP s | heuristic / MILP plan | "
           "heuristic / lower bound |", "|---|---|---|---|---|---|"]
  for r in planning:
    milp = f"{r['milp_s']:.2f} | {r['over_milp']:.4f}" if "milp_s" in r else "- | -"
    table.append(f"| {r['devices']} | {r['sequences']} | {r['heuristic_s']:.3f} | {milp} | "
                 f"{r['over_bound']:.4f} |")
  table += ["", f"## Simulated step time ({FLAGS.sim_devices} H100s, 7B DiT, "
            f"{FLAGS.sim_steps} steps a mix)\n",
            "| remat | mix | tokens/device (memory) | adaptive s | best static (degree) s | "
            "adaptive speedup | vs best degree per step |", "|---|---|---|---|---|---|---|"]
  for r in simulated:
    table.append(f"| {r['remat']} | {r['mix']} | {r['tokens_per_device']} | "
                 f"{r['adaptive_s']:.1f} | {r['static_s'][str(r['best_static'])]:.1f} "
                 f"({r['best_static']}) | **{r['speedup_vs_best_static']:.2f}x** | "
                 f"{r['speedup_vs_per_step_static']:.2f}x |")
  if measured:
    table += ["", f"## Measured on {measured['devices']} {measured['device']} devices "
              f"({len(measured['lengths'])} sequences, {sum(measured['lengths'])} tokens; "
              "cost model scaled per degree by a measured group step: "
              + ", ".join(f"{d}: {f:.1f}x" for d, f in measured["degree_factors"]) + ")\n",
              "| plan | groups | step s (median) | predicted s |", "|---|---|---|---|"]
    for name, r in measured["results"].items():
      table.append(f"| {name} | {r['groups']} | {r['step_s']:.3f} | {r['predicted_s']:.3f} |")
    table.append(f"\nadaptive against the best static ({measured['best_static']}): "
                 f"**{measured['speedup_vs_best_static']:.2f}x**")
  text = "\n".join(table)
  base = records.write("sp_planning", "Adaptive sequence parallelism", meta,
                       dict(planning=planning, simulated=simulated, measured=measured), text,
                       FLAGS.out)
  print(text)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
