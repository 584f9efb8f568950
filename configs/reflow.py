"""Reflow and one-step distillation of a trained run: fewer model calls per video.

  python -m data.reflow_pairs --workdir=runs/quickstart --out=runs/quickstart_pairs \
      --num_examples=4096
  python train.py --config=configs/reflow.py --workdir=runs/quickstart_reflow
  python train.py --config=configs/reflow.py:teacher=runs/quickstart_reflow,distill=1 \
      --workdir=runs/quickstart_distilled
  python -m eval --workdir=runs/quickstart_distilled --schedule=uniform-1 --metrics=digits

Reflow (rectified flow, Liu et al. 2023): the teacher's many-step sampler pairs noise with the
video it flows to (data/reflow_pairs.py); fine-tuning on the straight paths between them
straightens the flow, so few Euler steps land where many did. The pairs were drawn with the
teacher's guidance, so the student learns the guided flow: it samples with guidance 1, one
model call a step, not two halves of a batch (cond_dropout 0: it never sees the null prompt).

distill=1 (InstaFlow's distillation, with a squared error): train only at t = 1, the one-step
map from noise to the teacher's video; start it from the reflowed run (teacher=<reflow run>),
on the same pairs.

Everything else (model, data shape, text encoder, sampling shift) is the teacher's: its
config.json is read here, so the student has its architecture; the run records what it
started from (train.init_from, init_step) and the pairs their teacher (pairs.json).

Variants, as `--config=configs/reflow.py:teacher=runs/x,pairs=runs/x_pairs,steps=1000`:
  teacher  the run whose weights start the student (the original for reflow, the reflowed one
           for distillation)
  pairs    the folder of reflow pairs
  steps    training steps (default 2000, distillation 3000: about 4 and 9 minutes on 2 CPU
           cores)
  lr       the learning rate, constant after a short warm-up (default 3e-4, distillation 1e-3)
  distill  1: one-step distillation (t = 1 only)
"""
import os

import ml_collections

from configs.common import parse_arg
from configs.saved_run import load_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, teacher="runs/quickstart", pairs="runs/quickstart_pairs", steps=0,
                  distill=False, lr=0.0)
  if not arg.steps:  # the measured defaults (issue 23's note)
    arg.steps = 3000 if arg.distill else 2000
  if not arg.lr:
    arg.lr = 1e-3 if arg.distill else 3e-4
  if not os.path.exists(os.path.join(arg.teacher, "config.json")):
    raise FileNotFoundError(f"configs/reflow.py: teacher={arg.teacher} is not a train.py run "
                            "(no config.json); train it first or pass teacher=<its workdir>")
  config = load_config(arg.teacher)
  config.train.update(init_from=arg.teacher, init_step=0, num_steps=arg.steps,
                      checkpoint_every=min(400, arg.steps), sample_every=0)
  config.data = ml_collections.ConfigDict(dict(
      config.data.to_dict(), name="reflow_pairs", kwargs=dict(folder=os.path.abspath(arg.pairs)),
      batching="fixed"))
  config.optim.update(lr=arg.lr, warmup_steps=min(50, arg.steps // 10), decay_steps=arg.steps,
                      final_lr_ratio=1.0)
  config.flow.update(cond_dropout=0.0, distill_timesteps=(1.0,) if arg.distill else ())
  config.sample.update(guidance_scale=1.0, num_steps=1 if arg.distill else 4, sampler="euler",
                       schedule="")
  config.eval.metrics = ("digits",)  # python -m eval judges against the teacher's real data
  return config
