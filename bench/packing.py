"""Varied shapes on a long-tailed mix of lengths (most examples short, a few long):

  1. packing against padding, measured: training-step tokens/s of the same examples packed into
     rows (data/packing.py, several examples a row) and padded each to the longest one (one
     example a row, the rest padding), with the share of the padded run's tokens that were
     padding. Real (non-padding) video tokens per second of a jitted step (forward + backward
     of the packed flow-matching loss) of a small text-conditioned DiT on this machine.
  2. runtime balance, estimated: the rank imbalance (slowest data-parallel rank's estimated
     cost over the mean's, data/packing.py:example_cost) of packed global batches over 8 ranks,
     with the examples placed in order (first fit) and with Seaweed's runtime balance.

    python -m bench.packing                # results in bench/results/packing-<device>-<time>.*
"""
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from bench import records
from configs.common import flow_config, model_config
from data.batching import PackedBatches
from data.packing import imbalance, rank_costs
from diffusion.flow_matching import packed_flow_matching_loss
from dit.config import DiTConfig
from dit.model import DiT
from rundir.logs import quiet_library_logs

flags.DEFINE_integer("steps", 6, "timed steps per method (after one untimed)")
flags.DEFINE_integer("rows", 4, "rows per step, both methods")
flags.DEFINE_integer("batches", 200, "global batches planned for the imbalance")
flags.DEFINE_string("out", str(records.RESULTS), "results folder")
FLAGS = flags.FLAGS

PATCH = (1, 4, 4)
# (frames, share of the examples) at 32x32 pixels = 64 tokens a frame: images, then videos.
MIX = ((1, 0.70), (4, 0.20), (8, 0.08), (16, 0.02))
TEXT_TOKENS = 16


class SyntheticShapes:
  """A source of random videos [T, 32, 32, 1] whose durations follow a mix, for planning and
  packing (the content does not change the step's cost)."""

  def __init__(self, frames: np.ndarray, seed: int = 0):
    self.frames, self.seed = frames, seed

  def __len__(self):
    return len(self.frames)

  def example_shape(self, index):
    return (int(self.frames[index]), 32, 32)

  def __getitem__(self, index):
    rng = np.random.default_rng([self.seed, index])
    return {"video": rng.uniform(-1, 1, (*self.example_shape(index), 1)).astype(np.float32),
            "caption": "", "label": 0}


def long_tail_frames(count: int, seed: int) -> np.ndarray:
  frames, shares = zip(*MIX)
  return np.random.default_rng(seed).choice(frames, size=count, p=shares)


def timed_tokens_per_second(model, batches: list[dict]) -> tuple[float, float]:
  """(real video tokens per second, median step seconds) of a jitted step over `batches`."""
  graphdef, params = nnx.split(model)
  flow = flow_config(shift_base_tokens=0)

  @jax.jit
  def step(params, batch, key):
    loss_fn = lambda p: packed_flow_matching_loss(nnx.merge(graphdef, p), batch, key, flow)[0]
    return jax.value_and_grad(loss_fn)(params)

  key = jax.random.key(0)
  jax.block_until_ready(step(params, batches[0], key))  # compile
  times, tokens = [], 0
  for i, batch in enumerate(batches[1:]):
    start = time.perf_counter()
    jax.block_until_ready(step(params, batch, jax.random.fold_in(key, i)))
    times.append(time.perf_counter() - start)
    tokens += int(np.count_nonzero(batch["segment_ids"]))
  return tokens / sum(times), statistics.median(times)


def with_text(batch: dict, vocab: int, rng: np.random.Generator) -> dict:
  rows, slots = batch["slot_shapes"].shape[:2]
  batch = {k: v for k, v in batch.items() if k not in ("caption", "label", "slot_shapes")}
  batch["text"] = rng.integers(1, vocab, (rows, slots, TEXT_TOKENS), np.int32)
  batch["text_mask"] = np.ones((rows, slots, TEXT_TOKENS), bool)
  return batch


def packing_against_padding(model_cfg: DiTConfig) -> dict:
  longest = max(frames for frames, _ in MIX) * 64
  rows = FLAGS.rows
  source = SyntheticShapes(long_tail_frames(4096, seed=1))
  rng = np.random.default_rng(0)
  common = dict(patch_size=PATCH, num_rows=rows, row_tokens=longest, ranks=1, balance=False,
                seed=0, text_tokens=TEXT_TOKENS, hidden_size=model_cfg.hidden_size)
  packed = PackedBatches(source, max_slots=16, **common)
  padded = PackedBatches(source, max_slots=1, **common)
  count = FLAGS.steps + 1
  make = lambda batches: [with_text(batches[k], model_cfg.text_vocab_size, rng)
                          for k in range(count)]
  packed_batches, padded_batches = make(packed), make(padded)
  model = DiT(model_cfg, rngs=nnx.Rngs(0))
  result = {}
  for name, batches in (("padding", padded_batches), ("packing", packed_batches)):
    tokens_per_s, step_s = timed_tokens_per_second(model, batches)
    real = sum(int(np.count_nonzero(b["segment_ids"])) for b in batches)
    examples = sum(int(b["segment_ids"].max(1).sum()) for b in batches)
    result[name] = dict(tokens_per_s=tokens_per_s, step_ms=1e3 * step_s,
                        padding_share=1 - real / (count * rows * longest),
                        examples_per_step=examples / count)
  result["speedup"] = result["packing"]["tokens_per_s"] / result["padding"]["tokens_per_s"]
  result["row_tokens"] = longest
  return result


def balance_on_8_ranks() -> dict:
  """Estimated imbalance of packed global batches of 16 rows (2 per rank) of 16,384 tokens,
  lengths lognormal from one 256-token frame to 64 frames, an XL-width cost model."""
  ranks, rows, row_tokens, hidden = 8, 16, 16_384, 1152
  frames = np.clip(np.random.default_rng(2).lognormal(np.log(6), 1.0, 20_000), 1, 64)
  source = _FramesSource(frames.astype(int), height=32, width=32)  # (1, 2, 2): 256 a frame
  out = {}
  for balance in (False, True):
    plan = PackedBatches(source, patch_size=(1, 2, 2), num_rows=rows, row_tokens=row_tokens,
                         max_slots=64, ranks=ranks, balance=balance, seed=0,
                         text_tokens=TEXT_TOKENS, hidden_size=hidden)
    per_batch, slowest, mean, tokens = [], 0.0, 0.0, 0
    for k in range(FLAGS.batches):
      batch_rows, _ = plan.plans[k]
      costs = rank_costs(batch_rows, plan.costs, ranks)
      per_batch.append(imbalance(costs))
      slowest += costs.max()  # a step lasts as long as its slowest rank
      mean += costs.mean()
      tokens += sum(int(plan.tokens[i]) for row in batch_rows for i in row)
    out["balanced" if balance else "in_order"] = dict(
        mean_imbalance=float(np.mean(per_batch)), p95_imbalance=float(np.percentile(per_batch,
                                                                                      95)),
        max_imbalance=float(np.max(per_batch)), step_cost_over_ideal=slowest / mean,
        tokens_per_step=tokens / FLAGS.batches, tokens_per_slowest_cost=tokens / slowest)
  # Throughput: tokens trained per unit of (slowest-rank) step time, balanced over in order.
  out["estimated_speedup"] = (out["balanced"]["tokens_per_slowest_cost"]
                              / out["in_order"]["tokens_per_slowest_cost"])
  out.update(ranks=ranks, rows_per_rank=rows // ranks, row_tokens=row_tokens, hidden=hidden,
             batches=FLAGS.batches)
  return out


class _FramesSource:
  def __init__(self, frames, height, width):
    self.frames, self.size = frames, (height, width)

  def __len__(self):
    return len(self.frames)

  def example_shape(self, index):
    return (int(self.frames[index]), *self.size)


def main(argv):
  del argv
  quiet_library_logs()
  model_cfg = DiTConfig.from_dict(model_config(
      "tiny", hidden_size=128, depth=4, num_heads=4, dual_stream_depth=2, patch_size=PATCH,
      in_channels=1, dtype="float32", text_vocab_size=1024, text_dim=64))
  packing = packing_against_padding(model_cfg)
  balance = balance_on_8_ranks()
  meta = records.environment() | dict(
      model=dict(hidden=model_cfg.hidden_size, depth=model_cfg.depth, heads=model_cfg.num_heads,
                 patch=list(PATCH), dtype=model_cfg.dtype, attention=model_cfg.attention,
                 text_tokens=TEXT_TOKENS),
      mix={f"{frames}x32x32": share for frames, share in MIX}, rows=FLAGS.rows,
      steps=FLAGS.steps)
  pad, pack = packing["padding"], packing["packing"]
  table = (
      "| method | real tokens/s | step ms | examples/step | padding share |\n"
      "|---|---|---|---|---|\n"
      + "".join(f"| {name} | {r['tokens_per_s']:.4g} | {r['step_ms']:.1f} | "
                f"{r['examples_per_step']:.1f} | {100 * r['padding_share']:.1f}% |\n"
                for name, r in (("padding", pad), ("packing", pack)))
      + f"\npacking / padding tokens/s: **{packing['speedup']:.2f}x**\n\n"
      "| 8 ranks, estimated | mean imbalance | p95 | max | step cost / ideal | tokens/step |\n"
      "|---|---|---|---|---|---|\n"
      + "".join(f"| {name} | {r['mean_imbalance']:.3f} | {r['p95_imbalance']:.3f} | "
                f"{r['max_imbalance']:.3f} | {r['step_cost_over_ideal']:.3f} | "
                f"{r['tokens_per_step']:.0f} |\n"
                for name, r in (("in order", balance["in_order"]),
                                ("runtime balance", balance["balanced"])))
      + "\nestimated throughput gain of runtime balance (tokens per slowest-rank cost): "
      f"**{balance['estimated_speedup']:.2f}x**")
  base = records.write("packing", "Packing and runtime balance", meta,
                       dict(packing=packing, balance=balance), table, FLAGS.out)
  print(table)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
