"""Quick-start metrics that need no outside weights: a small video classifier trained on the
moving digits of the config's dataset, which reads the digit and the direction of motion of a
generated video.

  python -m eval.digit_classifier --workdir=runs/quickstart   # train once, cached in the workdir

For generated videos with known prompts it gives the accuracy of the prompted digit and of the
prompted direction, and its 128-wide features give Fréchet and kernel distances to real videos
(like FVD, in a space trained on this very data). python -m eval trains it when it is missing.

The cache is <workdir>/eval/digit_classifier/<data hash>/{params.npz, meta.json}: one per data
config (video shape, canvas, digits), so a changed dataset never reuses a stale classifier.
"""
import functools
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from data.moving_digits import DIRECTIONS, STILL, parse_caption
from data.sources import make_source

NUM_DIGITS = 10
NUM_DIRECTIONS = len(DIRECTIONS)
FEATURE_DIM = 128
_TRAIN_SEED = 7_000_001  # seeds of the classifier's own draws, apart from training's (seed 0..)
_HELD_OUT_SEED = 7_000_002


class DigitClassifier(nnx.Module):
  """videos [B, T, H, W, C] in [-1, 1] -> {digit [B, 10], direction [B, 8], features [B, 128]}.

  The frames are stacked on channels, so the first 3x3 convolution already sees the motion;
  four convolutions (three halve H and W) then a global average pool, which makes the
  classifier indifferent to where the digit is.
  """

  def __init__(self, num_frames: int, in_channels: int = 1, *, rngs: nnx.Rngs):
    conv = lambda i, o, s: nnx.Conv(i, o, (3, 3), strides=s, padding="SAME", rngs=rngs)
    self.conv1 = conv(num_frames * in_channels, 32, (2, 2))
    self.conv2 = conv(32, 64, (2, 2))
    self.conv3 = conv(64, 128, (1, 1))
    self.conv4 = conv(128, 128, (2, 2))
    self.features = nnx.Linear(128, FEATURE_DIM, rngs=rngs)
    self.digit = nnx.Linear(FEATURE_DIM, NUM_DIGITS, rngs=rngs)
    self.direction = nnx.Linear(FEATURE_DIM, NUM_DIRECTIONS, rngs=rngs)

  def __call__(self, videos: jax.Array) -> dict:
    b, t, h, w, c = videos.shape
    x = videos.transpose(0, 2, 3, 1, 4).reshape(b, h, w, t * c)  # frames on channels
    for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
      x = jax.nn.gelu(conv(x))
    features = jax.nn.gelu(self.features(x.mean(axis=(1, 2))))  # [B, 128]
    return dict(digit=self.digit(features), direction=self.direction(features),
                features=features)


def check_data(data: ml_collections.ConfigDict) -> None:
  """The classifier reads one moving digit per video: anything else is an error now."""
  if data.name != "moving_digits":
    raise ValueError(f"the digit metrics need data.name='moving_digits', got {data.name!r}; "
                     "leave 'digits' out of eval.metrics for other data")
  if data.kwargs.get("max_digits", 1) != 1:
    raise ValueError("the digit metrics read one digit per video: set "
                     "data.kwargs.max_digits=1 or leave 'digits' out of eval.metrics")


def labels_of(captions) -> tuple[np.ndarray, np.ndarray]:
  """Prompted (digit [N], direction [N]) int32 from moving-digits captions."""
  pairs = [parse_caption(str(c)) for c in captions]
  if any(len(p) != 1 for p in pairs):
    raise ValueError("the digit metrics read one digit per video; a caption names several")
  return (np.array([p[0][0] for p in pairs], np.int32),
          np.array([p[0][1] for p in pairs], np.int32))


def draw_examples(data: ml_collections.ConfigDict, count: int, seed: int):
  """count real videos [count, T, H, W, C] and their (digit, direction) labels."""
  source = make_source(data.name, seed=seed, **dict(data.kwargs, num_examples=count))
  items = [source[i] for i in range(count)]
  videos = np.stack([item["video"] for item in items]).astype(np.float32)
  return (videos, *labels_of([item["caption"] for item in items]))


def cache_dir(workdir: str, data: ml_collections.ConfigDict) -> str:
  text = json.dumps(data.to_dict(), sort_keys=True, default=str)
  return os.path.join(workdir, "eval", "digit_classifier",
                      hashlib.sha256(text.encode()).hexdigest()[:12])


def train(data: ml_collections.ConfigDict, *, steps: int = 600, batch_size: int = 64,
          num_examples: int = 20_000, learning_rate: float = 2e-3, seed: int = 0,
          log=print) -> tuple[DigitClassifier, dict]:
  """Trains on fresh draws of the dataset, with light noise as augmentation; returns the model
  and its accuracies on held-out real videos."""
  check_data(data)
  videos, digits, directions = draw_examples(data, num_examples, _TRAIN_SEED + seed)
  model = DigitClassifier(videos.shape[1], videos.shape[-1], rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  schedule = optax.cosine_decay_schedule(learning_rate, steps)
  optimizer = optax.adamw(schedule, weight_decay=1e-4)

  @jax.jit
  def step(params, opt_state, batch, key):
    video, digit, direction = batch
    noise = jax.random.uniform(key, (video.shape[0], 1, 1, 1, 1), maxval=0.2)
    video = jnp.clip(video + noise * jax.random.normal(key, video.shape), -1, 1)

    def loss_fn(params):
      out = nnx.merge(graphdef, params)(video)
      moving = direction != STILL  # still images have no direction to learn
      direction_loss = optax.softmax_cross_entropy_with_integer_labels(
          out["direction"], jnp.where(moving, direction, 0))
      return (optax.softmax_cross_entropy_with_integer_labels(out["digit"], digit).mean()
              + jnp.sum(jnp.where(moving, direction_loss, 0.0)) / jnp.maximum(moving.sum(), 1))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  start = time.perf_counter()
  for i in range(steps):
    chosen = rng.choice(len(videos), batch_size, replace=False)
    key, sub = jax.random.split(key)
    params, opt_state, loss = step(params, opt_state,
                                   (videos[chosen], digits[chosen], directions[chosen]), sub)
    if log and (i + 1) % max(1, steps // 5) == 0:
      log(f"digit classifier step {i + 1}/{steps}: loss {float(loss):.4f}")
  model = nnx.merge(graphdef, params)
  held_out = draw_examples(data, 1000, _HELD_OUT_SEED + seed)
  digit_acc, direction_acc = accuracies(model, *held_out)
  meta = dict(steps=steps, batch_size=batch_size, num_examples=num_examples,
              train_seconds=round(time.perf_counter() - start, 1),
              held_out_digit_accuracy=digit_acc, held_out_direction_accuracy=direction_acc,
              data=data.to_dict())
  return model, meta


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef: nnx.GraphDef, params: nnx.State, videos: jax.Array) -> dict:
  return nnx.merge(graphdef, params)(videos)


def predict(model: DigitClassifier, videos: np.ndarray, batch_size: int = 256) -> dict:
  """Class predictions and features of videos [N, T, H, W, C] in [-1, 1], as numpy."""
  graphdef, params = nnx.split(model)
  outs = [jax.device_get(_apply(graphdef, params,
                                jnp.asarray(videos[i:i + batch_size], jnp.float32)))
          for i in range(0, len(videos), batch_size)]
  out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  return dict(digit=out["digit"].argmax(-1), direction=out["direction"].argmax(-1),
              features=out["features"].astype(np.float32))


def accuracies(model, videos, digits, directions) -> tuple[float, float | None]:
  """(digit accuracy, direction accuracy: None for still images, which have none)."""
  out = predict(model, videos)
  moving = directions != STILL
  return (float(np.mean(out["digit"] == digits)),
          float(np.mean(out["direction"][moving] == directions[moving])) if moving.any()
          else None)


def save(model: DigitClassifier, meta: dict, directory: str) -> None:
  """params.npz and meta.json, written to a temporary name first, then renamed."""
  os.makedirs(directory, exist_ok=True)
  flat = {"/".join(str(k) for k in path): np.asarray(v)
          for path, v in nnx.to_flat_state(nnx.state(model))}
  tmp = os.path.join(directory, "params.tmp.npz")
  np.savez(tmp, **flat)
  os.replace(tmp, os.path.join(directory, "params.npz"))
  with open(os.path.join(directory, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)


def load(directory: str, num_frames: int,
         in_channels: int) -> tuple[DigitClassifier, dict]:
  model = nnx.eval_shape(lambda: DigitClassifier(num_frames, in_channels, rngs=nnx.Rngs(0)))
  with np.load(os.path.join(directory, "params.npz")) as saved:
    for path, variable in nnx.to_flat_state(nnx.state(model)):
      name = "/".join(str(k) for k in path)
      if name not in saved or saved[name].shape != variable.get_value().shape:
        raise ValueError(f"{directory} does not hold this digit classifier ({name}): delete "
                         "it to train a new one")
      variable.set_value(jnp.asarray(saved[name]))
  with open(os.path.join(directory, "meta.json")) as f:
    return model, json.load(f)


def trained_classifier(workdir: str, data: ml_collections.ConfigDict, num_frames: int,
                       in_channels: int, log=print, **train_options) -> tuple[DigitClassifier, dict]:
  """The workdir's cached classifier for this data config, trained first when missing."""
  check_data(data)
  log = log or (lambda message: None)
  directory = cache_dir(workdir, data)
  if os.path.exists(os.path.join(directory, "meta.json")):
    return load(directory, num_frames, in_channels)
  log(f"training the digit classifier for {data.name} (cached in {directory})")
  model, meta = train(data, log=log, **train_options)
  save(model, meta, directory)
  log(f"digit classifier: {held_out_text(meta)} ({meta['train_seconds']} s)")
  return model, meta


def held_out_text(meta: dict) -> str:
  """The classifier's held-out accuracies in words (no direction for still images)."""
  direction = meta["held_out_direction_accuracy"]
  return (f"held-out accuracy digit {meta['held_out_digit_accuracy']:.3f}"
          + ("" if direction is None else f", direction {direction:.3f}"))


def digit_metrics(model: DigitClassifier, generated: np.ndarray, captions,
                  real: np.ndarray) -> dict:
  """Prompted-digit and -direction accuracy of generated videos, and the Fréchet and kernel
  distances between the features of generated and real videos."""
  from eval.frechet import frechet_distance, kernel_distance  # noqa: PLC0415

  digits, directions = labels_of(captions)
  out, real_out = predict(model, generated), predict(model, real)
  kid, kid_std = kernel_distance(out["features"], real_out["features"])
  # Which digits the model draws well: the accuracy of each prompted digit on its own.
  per_digit = {f"digit_{d}_accuracy": float(np.mean(out["digit"][digits == d] == d))
               for d in np.unique(digits)}
  metrics = dict(digit_accuracy=float(np.mean(out["digit"] == digits)))
  if (directions != STILL).all():  # still images (one frame) have no direction to judge
    metrics.update(
        direction_accuracy=float(np.mean(out["direction"] == directions)),
        digit_and_direction_accuracy=float(np.mean((out["digit"] == digits)
                                                   & (out["direction"] == directions))))
  return metrics | dict(
      digit_frechet_distance=frechet_distance(out["features"], real_out["features"]),
      digit_kernel_distance=kid, digit_kernel_distance_std=kid_std) | per_digit


def main(argv):
  from absl import app, flags  # noqa: PLC0415
  from rundir.config_file import load_config  # noqa: PLC0415
  from rundir.logs import quiet_library_logs  # noqa: PLC0415
  from rundir.open_vae import video_shape  # noqa: PLC0415

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  workdir = flags.FLAGS.workdir
  config = load_config(workdir)
  frames, *_, channels = video_shape(config)  # decoded videos' for a DiT of latents
  model, meta = trained_classifier(workdir, config.data, frames, channels,
                                   steps=flags.FLAGS.steps)
  print(f"digit classifier in {cache_dir(workdir, config.data)}: {held_out_text(meta)}")


if __name__ == "__main__":
  from absl import app, flags

  # Defined only when run as a script, so importing this module next to other flags is safe.
  flags.DEFINE_string("workdir", None, "The train.py run whose dataset (config.json) the "
                      "classifier learns; it is cached in <workdir>/eval/.", required=True)
  flags.DEFINE_integer("steps", 1000, "Training steps (when no cached classifier exists).")
  app.run(main)
