"""Trains what one config file describes: a video DiT with flow matching, or (config.trains =
"vae") the causal video VAE.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/vae_quickstart.py --workdir=runs/vae
  python train.py --config=configs/video_dit.py:size=B --workdir=runs/b \
      --config.optim.lr=3e-4 --config.train.batch_size=128
  python train.py --config=configs/quickstart.py --workdir=runs/sp \
      --config.mesh.fsdp=2 --config.mesh.seq=4 --config.model.sequence_parallel=ulysses

The devices form the mesh config.mesh describes (data, fsdp, seq, tensor; -1 takes the rest),
the same code on one CPU, a GPU node or a multi-host cluster: under SLURM, Open MPI or on a TPU
pod run one process per host (or per GPU) and JAX finds the others; elsewhere pass
--coordinator_address, --num_processes and --process_id to every process.

Running it again with the same workdir resumes from the latest checkpoint there (parameters,
optimizer, EMA, step, RNG and the data iterator's position), so an interrupted run continues
exactly where it left off; a config that changes the saved run's model or video shape is an
error before anything is written. SIGTERM or Ctrl-C saves a checkpoint and exits, at a step
every process agrees on (a second Ctrl-C stops without saving); a non-finite loss stops the run
and leaves the last good checkpoint as it was. One process trains in a workdir at a time (train.lock; a second one exits with an error).

A config with stages (config.stages, configs/stages.py; e.g. configs/mixed_shapes.py) runs
them in order, each with its own data, shapes, batch and learning-rate schedule, the weights
carried across; examples of varied shapes come in buckets or packed rows (data.batching,
data/batching.py).

The workdir holds: config.json (the resolved config), checkpoints/, metrics.jsonl,
tensorboard/, samples/step_<N>/ (videos from the EMA parameters every train.sample_every; a
VAE's are the data's first videos beside their reconstructions) and train.lock.
"""
import contextlib
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_flags

from configs.checks import trains, validate_config
from configs.common import latent_shards_folder, latent_vae
from configs.stages import Stage, resolve_stages, stage_at
from data.encode_latents import shards_identity
from data.latent_shards import LatentShards, manifest_mismatches
from data.batching import BucketBatches, PackedBatches
from data.planned_batches import PlannedBatches
from data.pipeline import make_dataset, make_iterator, make_shaped_dataset, model_inputs
from data.sources import make_source
from diffusion import schedules
from diffusion.video_sampler import VideoSampler
from dit.config import DiTConfig
from dit.patchify import num_video_tokens
from rundir.config_file import identity_changes, load_config, write_config
from rundir.workdir_lock import WorkdirInUse, WorkdirLock
from rundir.logs import quiet_library_logs
from rundir.metric_writers import MetricWriter
from rundir.open_vae import (STATISTICS_FILE, is_weights_file, latent_decoder, latent_encoder,
                             latent_normalizer, open_latent_vae, pin_latent_vae, pixel_shape,
                             write_latent_statistics)
from rundir.videos import write_videos
from sharding import distributed
from sharding.logical import use_mesh
from sharding.mesh import make_mesh
from sharding.sp_calibration import hardware_for, save_hardware
from text_encoders.encoders import text_encoder_for
from training import checkpoints
from training.layout import (adaptive_plan, batch_degree, check_fits_mesh, global_batch,
                             init_sharded_train_state, jit_train_step, train_state_layout)
from training.adaptive_step import HARDWARE_FILE, AdaptiveStep, cost_model_for
from rundir.init_from import initial_state, lora_base, pin_init_run
from training.optimizer import learning_rate_schedule
from training.train_state import optimizer_for
from training.lora import saved_part, uses_lora
from training.train_step import make_train_step
from training.vae_step import make_vae_train_step, reconstruct

config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. "
                                "configs/quickstart.py or configs/video_dit.py:size=B.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, metrics, samples. "
                    "An existing one is resumed.")
distributed.define_flags()


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the last good checkpoint is left as it was."""


SIGNAL_CODES = {"SIGTERM": 1, "SIGINT": 2}


class TerminationRequest:
  """Remembers a SIGTERM or a Ctrl-C (SIGINT), so the loop can save a checkpoint and exit
  between two steps; a second Ctrl-C stops at once (KeyboardInterrupt), losing the steps since
  the last checkpoint."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None  # the name of the signal received, once one is
    self._previous = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass
    return self

  def agreed(self) -> str | None:
    """The signal to stop for, agreed by every process (a signal often reaches one host only;
    the save is collective, so all must stop at the same step): one small all-gather per step
    when there are several processes."""
    if jax.process_count() == 1:
      return self.requested
    names = multihost_utils.process_allgather(np.array(SIGNAL_CODES.get(self.requested, 0)))
    code = int(np.max(names))
    return next((name for name, c in SIGNAL_CODES.items() if c == code), None)

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt(f"a second {name}: stopped without saving")
    logging.warning("%s received: saving a checkpoint after this step, then exiting%s", name,
                    " (Ctrl-C again: stop at once)" if signum == signal.SIGINT else "")
    self.requested = self.requested or name

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def make_data(config: ml_collections.ConfigDict, text_encoder, expected: tuple,
              ranks: int = 1, sp_cost=None):
  """The data source and iterator, after checking that the source's videos have the `expected`
  shape (T, H, W, C): the model's input, or what the VAE encodes to its latents. With
  config.latents.shards the source is those shards, checked against the config. With
  data.batching "buckets" or "packing" examples keep their own shapes (only the channels are
  checked) and make batches over `ranks` data-parallel devices (data/batching.py)."""
  if latent_shards_folder(config):
    source = open_latent_shards(config)
    dataset = make_dataset(source, global_batch_size=config.train.batch_size, seed=config.seed,
                           text_encoder=text_encoder)
    return source, make_iterator(dataset, num_threads=config.data.num_threads)
  source = make_source(config.data.name, seed=config.seed, **config.data.kwargs)
  video = source[0]["video"]
  batching = config.data.get("batching", "fixed")
  if batching != "fixed":
    if video.shape[-1] != expected[-1]:
      raise ValueError(f"data {source!r} gives videos of {video.shape[-1]} channels but "
                       f"model.in_channels={expected[-1]}: make them agree")
    return source, make_iterator(make_shaped_dataset(
        shaped_batches(config, source, ranks, sp_cost), text_encoder),
        num_threads=config.data.num_threads)
  if video.shape != tuple(expected):
    section = "vae" if trains(config) == "vae" else "model"
    what = (f"(train.video_shape, {section}.in_channels)" if not latent_vae(config) else
            f"(what the VAE {latent_vae(config)} decodes train.video_shape's latents to)")
    raise ValueError(f"data {source!r} gives videos of shape {video.shape} (T, H, W, C) but the "
                     f"config expects {tuple(expected)} {what}: make them agree")
  dataset = make_dataset(source, global_batch_size=config.train.batch_size, seed=config.seed,
                         text_encoder=text_encoder)
  return source, make_iterator(dataset, num_threads=config.data.num_threads)


def shaped_batches(config: ml_collections.ConfigDict, source, ranks: int, sp_cost=None):
  """data.batching's BucketBatches or PackedBatches of `source` for this process; under an
  adaptive sequence-parallel plan (sp_cost, the planner's cost model), PlannedBatches."""
  data, model = config.data, config.model
  if sp_cost is not None:
    return PlannedBatches(source, patch_size=model.patch_size, num_devices=jax.device_count(),
                          max_slots=data.max_slots, cost=sp_cost, seed=config.seed,
                          planner=config.sharding.sp_planner,
                          text_tokens=config.text.max_length if model.conditioning == "text"
                          else 0)
  split = dict(seed=config.seed, process_index=jax.process_index(),
               process_count=jax.process_count())
  if data.batching == "buckets":
    return BucketBatches(source, patch_size=model.patch_size,
                         tokens_per_device=data.tokens_per_device, ranks=ranks, **split)
  text_tokens = config.text.max_length if model.conditioning == "text" else 0
  return PackedBatches(source, patch_size=model.patch_size, num_rows=config.train.batch_size,
                       row_tokens=data.row_tokens, max_slots=data.max_slots, ranks=ranks,
                       balance=data.balance, text_tokens=text_tokens,
                       hidden_size=model.hidden_size, **split)


def batch_tokens(batch: dict, patch_size) -> int:
  """Video tokens in the global batch of which `batch` is this process's numpy share (real
  tokens only, for packed rows)."""
  if "rows" in batch:  # planned groups (one process)
    return sum(int(np.count_nonzero(row["segment_ids"])) for row in batch["rows"]
               if row is not None)
  if "segment_ids" in batch:
    local = int(np.count_nonzero(batch["segment_ids"]))
  else:
    video = batch["video"]
    local = len(video) * num_video_tokens(video.shape[1:4], patch_size)
  return local * jax.process_count()


def open_latent_shards(config: ml_collections.ConfigDict) -> LatentShards:
  """config.latents.shards as a data source, refused unless they were encoded from this
  config's VAE (its current checkpoint), data, seed and latent shape."""
  folder = latent_shards_folder(config)
  source = LatentShards(folder)
  expected = shards_identity(config)
  mismatches = manifest_mismatches(source.manifest, expected)
  if mismatches:
    hint = ""
    same_run = (source.manifest.get("vae") == expected["vae"]
                and not is_weights_file(latent_vae(config)))
    if same_run and any(m.startswith("vae_checkpoint") for m in mismatches):
      hint = (f"; or train with the VAE checkpoint they were encoded with "
              f"(--config.latents.vae_step={source.manifest.get('vae_checkpoint')})")
    raise ValueError(
        f"config.latents.shards={folder!r} were encoded from something else than this config "
        "gives:\n  " + "\n  ".join(mismatches) + "\nEncode them again (python -m "
        "data.encode_latents --config=<this config> --out=<a new folder>), or train with "
        f"--config.latents.shards= (empty) to encode on the fly{hint}")
  return source


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def all_finite(tree) -> bool:
  return bool(_all_finite(tree))


def train(config: ml_collections.ConfigDict, workdir: str):
  """Trains to config.train.num_steps (resuming from workdir) on the mesh config.mesh
  describes, and returns the TrainState (its arrays sharded over that mesh)."""
  model = validate_config(config)
  if latent_vae(config) and os.path.exists(latent_vae(config)):  # found wherever run from
    config.latents.vae = os.path.abspath(latent_vae(config))
  if latent_shards_folder(config):
    config.latents.shards = os.path.abspath(latent_shards_folder(config))
  pin_latent_vae(config, workdir)  # one VAE for the whole run, resumed or not
  pin_init_run(config, workdir)  # the run a new one starts from (train.init_from), checked
  for stage in resolve_stages(config):  # the previews' schedule exists: not hours from now
    sample = stage.config.get("sample")
    if sample and stage.config.train.sample_every and sample.get("schedule"):
      schedules.resolve(sample.schedule, workdir, 1.0)
  mesh = make_mesh(dict(config.mesh))
  for stage in resolve_stages(config):
    check_fits_mesh(stage.config, mesh)
  lead = jax.process_index() == 0  # the one process that writes files other than checkpoints
  with contextlib.ExitStack() as held:

    def claim_workdir():
      if lead:  # first the lock: a second process learns the workdir is in use, whatever else
        os.makedirs(workdir, exist_ok=True)
        held.enter_context(WorkdirLock(workdir))
      check_resumable(config, workdir)  # before anything else is written
      checkpoints.check_writable(workdir)  # every process: each writes its shards

    on_every_process(claim_workdir)
    sp_hardware = None
    if any(adaptive_plan(stage.config) for stage in resolve_stages(config)):
      # the planner's device figures: measured once per run (before the mesh is set: the
      # measurements make meshes of their own) and kept in it, so a resumed run plans as it did
      sp_hardware = hardware_for(config.sharding.sp_hardware, jax.devices(), model.hidden_size,
                                 os.path.join(workdir, HARDWARE_FILE), dtype=model.dtype)
    held.enter_context(use_mesh(mesh, config.sharding.rules))
    return _train(config, model, workdir, mesh, sp_hardware)


def latent_step_input(config: ml_collections.ConfigDict, vae):
  """What the DiT's step applies to a batch's "video": None in pixel space; the VAE's encoder
  (to normalized posterior means) on the fly; only the normalization for latent shards."""
  if vae is None:
    return None
  return latent_normalizer(vae) if latent_shards_folder(config) else latent_encoder(vae)


def on_every_process(start) -> None:
  """Runs start() on every process, and raises on every process if it failed on any: a failed
  start never leaves the other processes waiting in a collective."""
  error = None
  try:
    start()
  except Exception as e:  # pylint: disable=broad-except  (re-raised below)
    error = e
  if jax.process_count() > 1:
    failed = np.asarray(multihost_utils.process_allgather(np.array(error is not None)))
    if failed.any() and error is None:
      raise RuntimeError(f"processes {np.flatnonzero(failed).tolist()} failed to start; their "
                         "logs say why")
  if error is not None:
    raise error


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir holding checkpoints resumes only with the model and video shape it was trained
  with; anything else is an error here, before a file is written."""
  if not checkpoints.saved_steps(workdir):
    return
  try:
    saved = load_config(workdir)
  except FileNotFoundError:
    return
  changes = identity_changes(saved, config)
  if changes:
    raise ValueError(
        f"{workdir} holds checkpoints of a run this config cannot resume; it changes\n  "
        + "\n  ".join(changes) + f"\nResume with the run's config ({workdir}/config.json), "
        "or train this one in a new --workdir. Nothing in the workdir was changed.")


class StageRun:
  """What one stage (configs/stages.py; a run without stages is one) trains with: its data
  iterator, its compiled step (and the VAE's image step), its previews and its throughput."""

  def __init__(self, stage: Stage, model, graphdef, shardings, mesh, text_encoder, vae,
               sp_hardware=None, workdir: str | None = None):
    config = stage.config
    self.stage, self.config, self.mesh = stage, config, mesh
    pixels = (*config.train.video_shape, model.in_channels) if vae is None else pixel_shape(
        vae.config, config.train.video_shape)
    sp_cost = None
    if sp_hardware is not None and adaptive_plan(config):
      sp_cost = cost_model_for(config, model, sp_hardware)
    self.source, self.data_iterator = make_data(config, text_encoder, pixels,
                                                ranks=batch_degree(mesh), sp_cost=sp_cost)
    optimizer = optimizer_for(model, config.optim)
    schedule = learning_rate_schedule(config.optim)
    # The optimizer's own count restarts with its state at the latest reset: the logged rate
    # counts from there too.
    options = dict(ema_decay=config.train.ema_decay, grad_accum=config.train.grad_accum,
                   learning_rate=lambda step: schedule(step - stage.schedule_start))
    self.image_step, self.image_pixels = None, None
    if trains(config) == "vae":
      perceptual = perceptual_loss(config.vae_loss)
      step = make_vae_train_step(graphdef, optimizer, config.vae_loss, perceptual=perceptual,
                                 **options)
      if config.vae_loss.image_steps:  # the first steps train on the videos' first frames
        self.image_step = jit_train_step(
            make_vae_train_step(graphdef, optimizer, config.vae_loss, perceptual=perceptual,
                                images=True, **options), shardings, mesh)
      self.make_preview = lambda state: Reconstructions(graphdef, self.source,
                                                        config.vae_loss.reconstructions)
      # pixels a step codes: an image step codes only the first frame of each video
      self.pixels = config.train.batch_size * int(np.prod(config.train.video_shape))
      self.image_pixels = self.pixels // config.train.video_shape[0]
    else:
      step = make_train_step(graphdef, optimizer, config.flow, config.model.patch_size,
                             encode=latent_step_input(config, vae), **options)
      decoder = None if vae is None else latent_decoder(vae)
      self.make_preview = lambda state: Samples(VideoSampler(
          graphdef, state.model_state, config, text_encoder, decoder=decoder,
          workdir=workdir), config)
    self.preview = None
    if sp_cost is not None:  # each step's own groups of devices (FlexSP)
      self.train_step = AdaptiveStep(model, optimizer, config.flow, mesh, config.sharding.rules,
                                     shardings, **options)
    else:
      self.train_step = jit_train_step(step, shardings, mesh)
    self.reset_optimizer = jax.jit(optimizer.init, out_shardings=shardings.opt_state)

  def run_step(self, state, batch: dict, step: int, key):
    """One step on this process's numpy batch -> (state, metrics, units done: video tokens,
    or pixels coded for a VAE)."""
    on_image = self.image_step is not None and step < self.config.vae_loss.image_steps
    if "plan" in batch:
      state, metrics = self.train_step(state, batch, key)
      return state, metrics, batch_tokens(batch, self.config.model.patch_size)
    inputs = global_batch(model_inputs(batch), self.mesh)
    state, metrics = (self.image_step if on_image else self.train_step)(state, inputs, key)
    if trains(self.config) == "vae":
      return state, metrics, self.image_pixels if on_image else self.pixels
    return state, metrics, batch_tokens(batch, self.config.model.patch_size)

  def write_preview(self, state, out_dir: str, lead: bool) -> None:
    """Samples (a DiT) or reconstructions (a VAE) from the EMA parameters, in out_dir."""
    if self.preview is None:
      self.preview = self.make_preview(state)
    self.preview.write(state, out_dir, lead)


def restore_run(manager, abstract, stages, make_run):
  """The newest checkpoint that restores -> (state, rng, the StageRun of the stage that ran its
  last step, its data iterator at the saved position)."""
  newest = manager.latest_step()
  run = make_run(stage_at(stages, newest - 1))
  state, rng = checkpoints.restore_newest(manager, abstract, run.data_iterator)
  step = int(state.step)
  if stage_at(stages, step - 1) is not run.stage:  # fell back across a stage boundary
    run = make_run(stage_at(stages, step - 1))
    state, rng = checkpoints.restore(manager, abstract, run.data_iterator, step=step)
  return state, rng, run


def _train(config: ml_collections.ConfigDict, model: DiTConfig, workdir: str,
           mesh: jax.sharding.Mesh, sp_hardware=None):
  lead = jax.process_index() == 0
  text_encoder = text_encoder_for(config) if trains(config) == "dit" else None
  vae = open_latent_vae(config)  # None in pixel space
  stages = resolve_stages(config)
  lora = config.lora if uses_lora(config) else None  # adapters on a frozen base
  graphdef, abstract, shardings = train_state_layout(model, config.optim, mesh,
                                                     config.sharding.rules, lora)
  # What checkpoints hold: a LoRA run's leave out its base (found again from train.init_from).
  saved = saved_part if lora is not None else (lambda state: state)
  sp_hardware_path = os.path.join(workdir, HARDWARE_FILE)
  make_run = lambda stage: StageRun(stage, model, graphdef, shardings, mesh, text_encoder,
                                    vae, sp_hardware, workdir)
  rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  # A new run's data is checked before anything is written.
  run = None if checkpoints.saved_steps(workdir) else make_run(stages[0])
  # Under the workdir's lock no save is in flight: the temporary folders of saves a kill
  # interrupted are removed (orbax's cleanup_tmp_directories).
  manager = checkpoints.make_manager(workdir, keep=config.train.keep_checkpoints,
                                     cleanup_interrupted=True)
  if manager.latest_step() is not None:  # restored straight into this mesh's shards
    state, rng, run = restore_run(manager, saved(abstract), stages, make_run)
    if lora is not None:
      state = state.replace(model_state=lora_base(config, abstract.model_state))
    print(f"resumed from {manager.directory} at step {int(state.step)}", flush=True)
  else:
    state = init_sharded_train_state(model, config.optim, config.seed, shardings, lora)
    if config.train.get("init_from"):
      state = initial_state(config, state, abstract)
      print(f"started from the EMA weights of {config.train.init_from} (step "
            f"{config.train.init_step})", flush=True)
  if lead:  # only now: the run is known to start or resume with this config
    write_config(config, workdir)
    if (sp_hardware is not None and config.sharding.sp_hardware == "measure"
        and not os.path.exists(sp_hardware_path)):
      save_hardware(sp_hardware, sp_hardware_path)

  throughput_name = "pixels_per_sec" if trains(config) == "vae" else "tokens_per_sec"
  writer = MetricWriter(workdir) if lead else None
  train_cfg = config.train
  start = int(state.step)
  last_saved = start if start else None
  progress = _progress_bar(start, train_cfg.num_steps)
  pending, timer, units, imbalances, planned = [], (time.perf_counter(), start), 0, [], []
  try:
    with TerminationRequest() as termination:
      for step in range(start, train_cfg.num_steps):
        stage = stage_at(stages, step)
        if run is None or run.stage is not stage:
          run = make_run(stage)
          if stage.index and step == stage.start and stage.optimizer == "reset":
            state = state.replace(opt_state=run.reset_optimizer(state.params))
          if len(stages) > 1 and lead:
            print(f"stage {stage.index} ({stage.name!r}): steps {stage.start}-{stage.end - 1}, "
                  f"optimizer {stage.optimizer}", flush=True)
        batch = next(run.data_iterator)
        if "rank_imbalance" in batch:
          imbalances.append(float(batch["rank_imbalance"]))
        if "plan" in batch:  # the adaptive plan's predicted step time and groups
          planned.append((batch["planned_seconds"], len(batch["plan"].shape)))
        state, metrics, done_units = run.run_step(state, batch, step,
                                                  jax.random.fold_in(rng, step))
        units += done_units
        pending.append(metrics)
        done = step + 1
        progress.update(1)
        stop = termination.agreed()  # read once: a signal during this step is seen next step
        save_now = (done % train_cfg.checkpoint_every == 0 or done == train_cfg.num_steps
                    or done == stage.end or stop)
        if save_now or done % train_cfg.log_every == 0:
          logged = _check_and_average(jax.device_get(pending), done - len(pending), manager)
          now = time.perf_counter()
          steps_per_sec = (done - timer[1]) / (now - timer[0])
          logged.update({"steps_per_sec": steps_per_sec,
                         throughput_name: units / (now - timer[0])})
          if imbalances:  # packed rows: the slowest data-parallel rank's estimated cost / mean
            logged["rank_imbalance"] = float(np.mean(imbalances))
          if planned:
            logged["planned_step_seconds"] = float(np.mean([p[0] for p in planned]))
            logged["sp_groups"] = float(np.mean([p[1] for p in planned]))
            logged["sp_programs"] = float(run.train_step.executor.compilations)  # so far
          if len(stages) > 1:
            logged["stage"] = float(stage.index)
          if hasattr(run.source, "num_skipped"):  # unreadable files met so far (video folders)
            logged["skipped_videos"] = run.source.num_skipped
          if writer is not None:
            writer.write(done, logged)
          if progress.disable and lead:  # no terminal (a cluster job's log): one line per log
            print(f"step {done}: " + ", ".join(f"{k}={v:.4g}" for k, v in logged.items()),
                  flush=True)
          progress.set_postfix(loss=f"{logged['loss']:.4f}")
          pending, timer, units, imbalances, planned = [], (now, done), 0, [], []
        if save_now and done != last_saved:
          if not all_finite(state.params):
            raise NonFiniteLossError(_non_finite_message("parameters", done, manager))
          checkpoints.save(manager, saved(state), rng, run.data_iterator, force=True)
          last_saved = done
        sample_every = run.config.train.sample_every
        if sample_every and (done % sample_every == 0 or done == stage.end):
          run.write_preview(state, os.path.join(workdir, "samples", f"step_{done}"), lead)
        if stop:
          print(f"stopped by {stop} after step {done}, checkpoint saved; run again to resume",
                flush=True)
          break
    if trains(config) == "vae" and int(state.step) == train_cfg.num_steps:  # every process
      vae = nnx.merge(graphdef, state.ema_params, state.model_state)
      measured = write_latent_statistics(workdir, vae, run.source, step=int(state.step),
                                         write=lead)
      if lead:
        print(f"latent statistics of {measured['videos']} videos written to {workdir}/"
              f"{STATISTICS_FILE}", flush=True)
  finally:
    progress.close()
    if writer is not None:
      writer.close()
    manager.wait_until_finished()
    manager.close()
  return state


class Samples:
  """The DiT's previews: videos for the config's sample prompts, from the EMA parameters."""

  def __init__(self, sampler: VideoSampler, config: ml_collections.ConfigDict):
    self.sampler, self.config = sampler, config

  def write(self, state, out_dir: str, lead: bool) -> None:
    videos = self.sampler.generate(state.ema_params, jax.random.key(self.config.seed))
    if lead:  # every process samples (the arrays are global); one writes
      write_videos(videos, self.sampler.prompts, out_dir, upscale=self.config.sample.upscale)


class Reconstructions:
  """The VAE's previews: the source's first videos (the same every time) beside their
  reconstructions by the EMA parameters, original left."""

  def __init__(self, graphdef, source, count: int):
    examples = [source[i] for i in range(min(count, len(source)))]
    self.videos = np.stack([e["video"] for e in examples]).astype(np.float32)
    self.captions = [str(e.get("caption", "")) for e in examples]
    self.reconstruct = jax.jit(lambda params, model_state, video: reconstruct(
        graphdef, params, model_state, video))

  def write(self, state, out_dir: str, lead: bool) -> None:
    if not len(self.videos):
      return
    recon = self.reconstruct(state.ema_params, state.model_state, self.videos)
    pairs = np.concatenate([self.videos, np.asarray(jax.device_get(recon))], axis=3)
    if lead:
      write_videos(pairs, [f"original | reconstruction: {c}" for c in self.captions], out_dir,
                   upscale=2)


def perceptual_loss(loss: ml_collections.ConfigDict):
  """(reconstruction, video) -> [B] I3D feature distances when vae_loss.perceptual > 0."""
  if not loss.perceptual:
    return None
  from eval.i3d import load_i3d, perceptual_distance  # noqa: PLC0415  (loads the weights)
  network = load_i3d()
  layers = tuple(loss.perceptual_layers)
  return lambda recon, video: perceptual_distance(network, layers, recon, video)


def _check_and_average(metrics: list[dict], first_step: int, manager) -> dict[str, float]:
  """The mean of each metric over the steps since the last log; stops on a non-finite loss."""
  losses = np.array([m["loss"] for m in metrics])
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    raise NonFiniteLossError(_non_finite_message(
        f"loss ({losses[bad[0]]})", first_step + int(bad[0]) + 1, manager))
  return {name: float(np.mean([m[name] for m in metrics])) for name in metrics[0]}


def _non_finite_message(what: str, step: int, manager) -> str:
  manager.wait_until_finished()
  last = manager.latest_step()
  kept = (f"the last good checkpoint, step {last}, is intact in {manager.directory}"
          if last is not None else "no checkpoint had been saved yet")
  return (f"training stopped: non-finite {what} at step {step}; {kept}. Lower optim.lr, "
          "tighten optim.grad_clip or use a float32 model.dtype (vae.dtype for a VAE), then run "
          "again (it resumes from that checkpoint).")


def _progress_bar(start: int, total: int):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
              disable=not sys.stderr.isatty() or jax.process_index() > 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  distributed.initialize_from_flags()
  try:
    train(FLAGS.config, FLAGS.workdir)
  except (NonFiniteLossError, WorkdirInUse) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:  # a second Ctrl-C
    sys.exit(f"stopped: {e or 'interrupted'}; run again to resume from the last checkpoint")


FLAGS = flags.FLAGS

if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
