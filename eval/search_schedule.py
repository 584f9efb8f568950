"""python -m eval.search_schedule: search a run's few-step sampling schedule (AutoDiffusion).

  python -m eval.search_schedule --workdir=runs/quickstart --calls=4
  python -m eval.search_schedule --workdir=runs/quickstart --calls=2 --max_skip=2
  python sample.py --workdir=runs/quickstart --schedule=searched-4
  python -m eval --workdir=runs/quickstart --schedule=searched-4 --metrics=digits

One process. An evolutionary search (diffusion/schedule_search.py) over the noise levels, each step's solver
and, with --max_skip, the DiT blocks each step leaves out, within --calls model calls per video
(block calls / depth when blocks are skipped). A schedule is scored by the Fréchet distance of
features of --num_videos videos sampled along it (the same noise and prompts for every
candidate) against as many real videos: the digit classifier's features for moving digits
(cached in <workdir>/eval/ as python -m eval does), I3D's otherwise. The real videos and prompts
are drawn apart from python -m eval's (another seed), so an eval of the result is held out.

The best schedule goes to <workdir>/schedules/<name>.json (--name, default searched-<calls>)
with how it was found (score, start, seed, evaluations, the history per generation); an earlier
file is kept as <name>.<n>.json.
"""
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from data.reflow_pairs import with_real_data
from diffusion import schedules
from diffusion.samplers import guidance_interval, sampling_shift
from diffusion.schedule_search import SearchSpace, search
from dit.patchify import num_video_tokens
from eval.frechet import frechet_distance, gaussian_fit
from rundir.config_file import load_config
from rundir.logs import quiet_library_logs
from rundir.keep import keep_earlier
from rundir.open_run import open_run

flags.DEFINE_string("workdir", None, "The train.py run whose latest checkpoint is searched for.")
flags.DEFINE_integer("calls", 4, "The budget: model calls per video.")
flags.DEFINE_integer("max_skip", 0, "Blocks a step may leave out (0: none); the budget is then "
                     "calls x depth block calls.")
flags.DEFINE_integer("num_videos", 128, "Videos sampled per candidate schedule.")
flags.DEFINE_integer("population", 12, "Schedules per generation.")
flags.DEFINE_integer("generations", 8, "Generations after the first.")
flags.DEFINE_integer("parents", 4, "The best schedules kept as each generation's parents.")
flags.DEFINE_integer("seed", 0, "Seed of the search's random choices.")
flags.DEFINE_string("name", None, "The schedule's name in the run (default: searched-<calls>); "
                    "sample with --schedule=<name>.")
flags.DEFINE_string("features", None, "digits (the digit classifier; moving digits only) or "
                    "i3d (default: digits where the data allows, else i3d).")
FLAGS = flags.FLAGS
SEARCH_SEED_OFFSET = 17  # the search's real videos and noise, apart from python -m eval's


def feature_network(name: str, workdir: str, config, frames: int, channels: int):
  """videos [N, T, H, W, C] in [-1, 1] -> features [N, F], by the digit classifier or I3D."""
  if name == "digits":
    from eval import digit_classifier  # noqa: PLC0415
    model, _ = digit_classifier.trained_classifier(
        workdir, config.data, frames, channels, steps=config.eval.classifier_steps)
    return lambda videos: digit_classifier.predict(model, videos)["features"]
  from eval import i3d  # noqa: PLC0415
  network = i3d.fvd_network(config.eval.feature_batch_size, i3d.weights_path())
  return lambda videos: network(i3d.fit_frames(videos, config.eval.fvd_frames))


def schedule_scorer(run, prompts: list, features, real_features: np.ndarray, batch_size: int,
                    seed: int):
  """schedule -> Fréchet distance of its videos' features to the real ones. One compiled
  sampler per number of steps; every schedule samples the same noise for the same prompts."""
  config = run.config
  shape = (batch_size, *config.train.video_shape, config.model.in_channels)
  sample = config.sample
  guidance = dict(guidance_scale=sample.guidance_scale,
                  interval=guidance_interval(sample))
  decoder = run.decoder

  @jax.jit
  def generate(params, key, cond, sigmas, heun, skip):
    model = nnx.merge(run.graphdef, params, run.model_state)
    velocity = schedules.guided_skipping_velocity(model, cond, guidance["guidance_scale"],
                                                  guidance["interval"])
    videos = schedules.sample_schedule(velocity, jax.random.normal(key, shape, jnp.float32),
                                       sigmas, heun, skip)
    return videos if decoder is None else decoder(videos)

  sampler = run.sampler(prompts=prompts[:batch_size] if config.model.conditioning == "text"
                        else None, labels=None if config.model.conditioning == "text"
                        else prompts[:batch_size])
  chunks = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    real = len(chunk)
    chunks.append((real, sampler.condition(chunk + chunk[-1:] * (batch_size - real))[1]))
  target = gaussian_fit(real_features)

  def score(schedule: schedules.Schedule) -> float:
    arrays = [jnp.asarray(a) for a in schedule.arrays(config.model.depth)]
    videos = [np.asarray(generate(run.params, jax.random.fold_in(jax.random.key(seed), i),
                                  cond, *arrays))[:real]
              for i, (real, cond) in enumerate(chunks)]
    return frechet_distance(features(np.concatenate(videos)), target)

  return score


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("pass --workdir=<train.py run>")
  quiet_library_logs()
  from eval import digit_classifier, videos  # noqa: PLC0415

  config = load_config(FLAGS.workdir)
  config.sample.schedule = ""
  depth = config.model.depth
  try:
    space = SearchSpace(calls=FLAGS.calls, depth=depth, max_skip=FLAGS.max_skip)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  name = FLAGS.name or f"searched-{FLAGS.calls}"
  calls_named = name.partition("-")[2].isdigit() and name.startswith("searched-")
  if (schedules.schedule_name_errors(name) or name.endswith(".json")
      or name.partition("-")[0] in ("uniform", "heun")
      or (calls_named and name != f"searched-{FLAGS.calls}")):
    raise app.UsageError(f"--name={name}: letters, digits, '_', '.' and '-' only, not "
                         f"uniform-K or heun-K, and searched-K only for K = --calls "
                         f"({FLAGS.calls})")
  if not 1 <= FLAGS.parents < FLAGS.population or FLAGS.num_videos < 2:
    raise app.UsageError(f"--parents={FLAGS.parents} must be at least 1 and below "
                         f"--population={FLAGS.population}, and --num_videos at least 2")
  features_name = FLAGS.features
  if features_name is None:
    try:
      digit_classifier.check_data(with_real_data(config).data)
      features_name = "digits"
    except ValueError:
      features_name = "i3d"
  if features_name not in ("digits", "i3d"):
    raise app.UsageError(f"--features={features_name}: choose digits or i3d")
  began = time.perf_counter()
  run = open_run(FLAGS.workdir, config=config)
  config = with_real_data(config)  # a run of reflow pairs is judged by its teacher's data
  seed = config.eval.seed + SEARCH_SEED_OFFSET
  real, captions, labels = videos.real_videos(config, FLAGS.num_videos, seed)
  prompts = captions if config.model.conditioning == "text" else labels
  with run:
    features = feature_network(features_name, FLAGS.workdir, config, real.shape[1],
                               real.shape[-1])
    score = schedule_scorer(run, prompts, features, features(real),
                            min(config.eval.batch_size, FLAGS.num_videos), seed)
    shift = sampling_shift(config, num_video_tokens(config.train.video_shape,
                                                    config.model.patch_size))
    start = schedules.uniform(FLAGS.calls, shift)
    print(f"searching {FLAGS.calls}-call schedules of {FLAGS.workdir} (step {run.step}), "
          f"{features_name} features of {FLAGS.num_videos} videos, from "
          f"{start.describe(depth)}")
    result = search(score, space, start, seed=FLAGS.seed, population=FLAGS.population,
                    generations=FLAGS.generations, parents=FLAGS.parents)
  best = dataclasses.replace(result.best, name=name)
  best.meta.update(features=features_name, num_videos=FLAGS.num_videos, step=run.step,
                   history=result.history, seconds=round(time.perf_counter() - began, 1),
                   block_calls=best.block_calls(depth), depth=depth)
  path = schedules.saved_path(FLAGS.workdir, name)
  keep_earlier(path)
  best.save(path)
  print(json.dumps(dict(start_score=result.start_score, best_score=result.best_score,
                        evaluations=result.evaluations), indent=1))
  print(f"{best.describe(depth)}\nwrote {path}; sample with --schedule={name}")


if __name__ == "__main__":
  app.run(main)
