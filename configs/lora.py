"""LoRA fine-tuning of a trained run (training/lora.py): low-rank adapters on the blocks'
linear layers learn a new behaviour while the base weights stay frozen; the checkpoints hold
only the adapters and config.json names the base run and step.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/lora.py --workdir=runs/quickstart_lora
  python sample.py --workdir=runs/quickstart_lora                 # adapters attached
  python sample.py --workdir=runs/quickstart_lora --merge_lora    # merged into the weights

The default new behaviour is the quick start's moving digits drawn dark on a white canvas
(data.kwargs.inverted), with the same captions: the base model has never seen it.

Variants, as `--config=configs/lora.py:base=runs/x,rank=8,steps=800`:
  base      the run to fine-tune (default runs/quickstart)
  rank      the adapters' rank (default 8: 3.6% of the quick start's parameters); alpha = rank
  layers    which linears get adapters: all (the blocks' qkv, out and MLP, the patch
            embedding and the final layer; default), blocks (every linear of the blocks, the
            adaLN modulations too) or attention (the blocks' qkv and out)
  steps     training steps (default 2000)
  lr        learning rate, constant after a short warm-up (default 2e-3)
  inverted  fine-tune on inverted digits (default True; False: the base run's own data)
"""
import os

import ml_collections

from configs.common import LORA_LAYERS, lora_config, parse_arg
from configs.saved_run import load_config

# The blocks' attention and MLP, and the patch embedding and final layer that read and write
# pixels (a new look needs them); the blocks' adaLN modulations (a third of the block weights)
# only with layers=blocks.
LAYERS = dict(
    all=(r"(dual|single)_blocks/\d+/(video|text|stream)/(qkv|out|mlp/gate_up|mlp/down)"
         r"|patch_embed|final/(modulation|proj)"),
    blocks=LORA_LAYERS,
    attention=r"(dual|single)_blocks/\d+/(video|text|stream)/(qkv|out)")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, base="runs/quickstart", rank=8, layers="all", steps=2000, lr=2e-3,
                  inverted=True)
  if not os.path.exists(os.path.join(arg.base, "config.json")):
    raise FileNotFoundError(f"configs/lora.py: base={arg.base} is not a train.py run (no "
                            "config.json); train it first or pass base=<its workdir>")
  if arg.layers not in LAYERS:
    raise ValueError(f"configs/lora.py: layers={arg.layers!r}; choose one of {sorted(LAYERS)}")
  config = load_config(arg.base)
  if config.get("lora") and config.lora.rank:
    raise ValueError(f"configs/lora.py: base={arg.base} is itself a LoRA run; fine-tune its "
                     "base instead")
  config.lora = lora_config(rank=arg.rank, layers=LAYERS[arg.layers])
  config.train.update(init_from=arg.base, init_step=0, num_steps=arg.steps,
                      checkpoint_every=min(200, arg.steps), sample_every=0)
  config.optim.update(lr=arg.lr, warmup_steps=min(50, arg.steps // 10), decay_steps=arg.steps,
                      final_lr_ratio=1.0, weight_decay=0.0)
  if config.data.name == "moving_digits":
    config.data.kwargs.inverted = bool(arg.inverted)
  elif arg.inverted:
    raise ValueError(f"configs/lora.py: inverted digits need the moving_digits data; base="
                     f"{arg.base} trains on {config.data.name}: pass inverted=False")
  return config
