"""Post-training on the quick start: quantized sampling (each scheme's digit, direction and
digit-feature Fréchet distance, and its model bytes) and a LoRA fine-tune to a new behaviour,
from the eval files the runs hold (this collects; it samples nothing).

    python train.py --config=configs/quickstart.py --workdir=runs/quickstart
    python -m quantization.mixed --workdir=runs/quickstart --bits=8 --activations=0.9
    python -m eval --workdir=runs/quickstart --metrics=digits --num_videos=1024
    for q in w8 w4 w8a8 w8a8_fp8 mixed; do
      python -m eval --workdir=runs/quickstart --metrics=digits --num_videos=1024 --quantize=$q
    done
    python train.py --config=configs/lora.py --workdir=runs/quickstart_lora
    python -m eval --workdir=runs/quickstart_lora --metrics=digits --num_videos=1024
    python -m eval --workdir=runs/quickstart --config=configs/lora.py:rank=0 --metrics=digits \\
        --num_videos=1024 --out=runs/quickstart_lora/eval/base_model.json
    python train.py --config=configs/lora.py:rank=0 --workdir=runs/quickstart_finetune
    python -m eval --workdir=runs/quickstart_finetune --metrics=digits --num_videos=1024
    python -m bench.post_training      # results in bench/results/post_training-*

The LoRA run's eval draws inverted digits (its data), and so does the base model's with the
LoRA config at rank 0 (the base run's weights, the new data): the base draws its old look.
A missing eval file is a missing row, listed.
"""
import json
import os

from absl import app, flags

from bench import records

flags.DEFINE_string("run", "runs/quickstart", "The quantized run.")
flags.DEFINE_list("schemes", ["w8", "w4", "w8a8", "w8a8_fp8", "mixed"], "Its quantized models.")
flags.DEFINE_string("lora", "runs/quickstart_lora", "The LoRA run.")
flags.DEFINE_string("finetune", "runs/quickstart_finetune", "The same fine-tune of all the "
                    "parameters (configs/lora.py:rank=0), for reference.")
flags.DEFINE_string("lora_base_eval", None, "The base model's eval on the LoRA run's data "
                    "(default: <lora>/eval/base_model.json).")
flags.DEFINE_string("out", str(records.RESULTS), "Results folder.")
FLAGS = flags.FLAGS
COLUMNS = (("digit", "digit_accuracy"), ("direction", "direction_accuracy"),
           ("digit and direction", "digit_and_direction_accuracy"),
           ("digit FD", "digit_frechet_distance"))


def manifest(run: str, step: int, name: str) -> dict | None:
  path = os.path.join(run, "quantized", str(step), name, "quantization.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def metrics_row(name: str, results: dict, **extra) -> dict:
  return dict(name=name, step=results["step"], num_videos=results["num_videos"],
              **{key: results["metrics"].get(key) for _, key in COLUMNS}, **extra)


def quantization_rows(run: str, schemes: list[str]) -> tuple[list[dict], list[str]]:
  rows, missing = [], []
  full = records.newest_eval(run, "")
  if full is None:
    return [], [f"{run} full precision"]
  for name in ["full precision", *schemes]:
    results = full if name == "full precision" else records.newest_eval(run, name)
    if results is None:
      missing.append(f"{run} {name}")
      continue
    saved = manifest(run, results["step"], "w8" if name == "full precision" else name)
    size = None if saved is None else saved["bytes"]["full_precision" if name == "full precision"
                                                     else "quantized"]
    mixed = (saved or {}).get("mixed")
    rows.append(metrics_row(name, results, model_bytes=size, mixed=mixed and dict(
        bits=mixed["bits"], activations=mixed["activations"], spent=mixed["spent"],
        schemes={s: list(mixed["choice"].values()).count(s)
                 for s in sorted(set(mixed["choice"].values()))})))
  return rows, missing


def lora_rows(lora: str, base_eval: str, finetune: str) -> tuple[list[dict], list[str], dict]:
  rows, missing, sizes = [], [], {}
  if os.path.exists(base_eval):
    with open(base_eval) as f:
      rows.append(metrics_row("base model", json.load(f)))
  else:
    missing.append(base_eval)
  results = records.newest_eval(lora, "")
  if results is None:
    missing.append(f"{lora} eval")
  else:
    rows.append(metrics_row("LoRA fine-tune", results))
    sizes = adapter_sizes(lora)
  results = records.newest_eval(finetune, "")
  if results is None:
    missing.append(f"{finetune} eval")
  else:
    rows.append(metrics_row("full fine-tune", results))
  return rows, missing, sizes


def adapter_sizes(lora: str) -> dict:
  """The LoRA run's trained and frozen parameter counts."""
  import jax  # noqa: PLC0415

  from rundir.open_run import open_run  # noqa: PLC0415
  with open_run(lora) as run:
    count = lambda tree: int(sum(leaf.size for leaf in jax.tree.leaves(tree)))
    adapters, base = count(run.params), count(run.model_state)
    return dict(rank=int(run.config.lora.rank), layers=run.config.lora.layers,
                adapters=adapters, base=base, share=adapters / base)


def table(rows: list[dict], first: str) -> str:
  fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else f"{v}"
  extra = "model bytes" if first == "model" else None
  head = [first] + [title for title, _ in COLUMNS] + ([extra] if extra else [])
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for r in rows:
    cells = [r["name"]] + [fmt(r[key]) for _, key in COLUMNS]
    if extra:
      cells.append(fmt(r.get("model_bytes")))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  quantized, missing = quantization_rows(FLAGS.run, FLAGS.schemes)
  base_eval = FLAGS.lora_base_eval or os.path.join(FLAGS.lora, "eval", "base_model.json")
  lora, missing_lora, sizes = lora_rows(FLAGS.lora, base_eval, FLAGS.finetune)
  missing += missing_lora
  text = f"Quantized sampling ({FLAGS.run}):\n\n" + table(quantized, "model")
  for r in quantized:
    if r.get("mixed"):
      m = r["mixed"]
      text += (f"\n{r['name']}: {m['schemes']} at a budget of {m['bits']} weight bits and "
               f"{m['activations']:.0%} quantized activations; spent "
               f"{m['spent']['bits']:.2f} bits, {m['spent']['activations']:.1%}\n")
  text += f"\nLoRA ({FLAGS.lora}, on its data):\n\n" + table(lora, "sampled by")
  if sizes:
    text += (f"\nadapters of rank {sizes['rank']}: {sizes['adapters']} parameters, "
             f"{sizes['share']:.2%} of the base's {sizes['base']}\n")
  if missing:
    text += "\nnot evaluated: " + "; ".join(missing) + "\n"
  meta = records.environment() | dict(run=FLAGS.run, lora=FLAGS.lora)
  base = records.write("post_training", "Quantization and LoRA on the quick start", meta,
                       dict(quantized=quantized, lora=lora, adapters=sizes, missing=missing),
                       text, FLAGS.out)
  print(text)
  print(f"wrote {base}.json and .md")


if __name__ == "__main__":
  app.run(main)
