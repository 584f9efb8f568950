"""Opening a trained run: its config, checked once; its parameters restored onto a mesh; its
text encoder; samplers for its model. sample.py, python -m eval and eval.sparse_fidelity all
open a run this way.

    with open_run("runs/quickstart") as run:          # the latest checkpoint, EMA weights
      videos = run.sampler(prompts=["the digit 3 moves up"]).generate(run.params, key)

Inside the `with`, the run's mesh and sharding rules are in context (sampling with sequence
parallelism needs them); the parameters are restored straight into that mesh's shards.
"""
import contextlib
import dataclasses
import os

import jax
import ml_collections
from flax import nnx

from configs.checks import validate_config
from diffusion.frame_sampling import FrameTask, frame_task, token_frames
from diffusion.video_sampler import VideoSampler
from dit.config import DiTConfig
from rundir.config_file import load_config
from rundir.open_vae import latent_decoder, latent_encoder, open_latent_vae, video_shape
from sharding.logical import use_mesh
from sharding.mesh import make_mesh
from text_encoders.encoders import text_encoder_for
from rundir.init_from import lora_base
from training import checkpoints
from training.layout import train_state_layout
from training.lora import merged_params, saved_part, uses_lora


@dataclasses.dataclass
class Run:
  """A trained run, opened: what sampling or evaluating it needs."""
  workdir: str
  config: ml_collections.ConfigDict  # checked by configs.checks.validate_config
  model: DiTConfig
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef
  params: nnx.State                  # the EMA parameters (or the raw ones: ema=False)
  model_state: nnx.State
  step: int
  text_encoder: object               # captions -> the model's text input; None for labels
  decoder: object = None             # latents -> videos, for a DiT in a VAE's latent space
  encoder: object = None             # videos -> latents, for a DiT in a VAE's latent space
  temporal_factor: int = 0           # its VAE's frames per latent frame (0: pixel space)
  ema: bool = True                   # params are the EMA weights (else the raw ones)
  _context: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

  def __enter__(self) -> "Run":
    self._context.enter_context(use_mesh(self.mesh, self.config.sharding.rules))
    return self

  def __exit__(self, *exc) -> None:
    self._context.close()

  def sampler(self, prompts=None, labels=None,
              config: ml_collections.ConfigDict | None = None,
              task: FrameTask | None = None) -> VideoSampler:
    """A VideoSampler of this run's model for `prompts` (text) or `labels` (default: the
    config's train.sample_prompts or sample_labels), with the run's sample settings or those of
    `config` (a variant of run.config, checked by the caller); task (frame_task): the frames
    its videos are given."""
    return VideoSampler(self.graphdef, self.model_state, config or self.config,
                        self.text_encoder, prompts=prompts, labels=labels, decoder=self.decoder,
                        workdir=self.workdir, task=task, encoder=self.encoder)

  def frame_task(self, name: str, count: int = 1, level: float = 0.0) -> FrameTask:
    """The FrameTask `name` ("text", "image", "extend" from `count` frames, "keyframes") on
    this run's videos, holding its given frames at noise `level`."""
    num_frames = video_shape(self.config)[0]
    frames = token_frames(num_frames, self.model.patch_size[0], self.temporal_factor)
    return frame_task(name, count, frames, level)


def open_run(workdir: str, step: int | None = None, ema: bool = True,
             mesh: jax.sharding.Mesh | dict | None = None,
             config: ml_collections.ConfigDict | None = None, merge_lora: bool = False) -> Run:
  """Opens the run in `workdir` at checkpoint `step` (default: the latest).

  ema: the EMA parameters (else the raw ones). mesh: a Mesh, or axis sizes such as
  {"data": -1} (default: the run's config.mesh). config: the run's config with the caller's
  overrides (default: its config.json); it is checked here, before anything is restored.
  A LoRA run (training/lora.py) opens with its adapters attached to its base run's weights,
  or with merge_lora merged into them (a plain DiT; attached and merged compute the same;
  sparse attention, config.sample.sparse, always takes them merged).
  """
  config = load_config(workdir) if config is None else config
  check_dit_run(workdir, config)
  return restore_run(workdir, config, validate_config(config), step=step, ema=ema, mesh=mesh,
                     merge_lora=merge_lora)


def check_dit_run(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Sampling and evaluating open DiT runs; a VAE run's workdir is an error that says what
  opens it."""
  if config.get("trains") == "vae":
    raise ValueError(f"{workdir} is a VAE run (config.trains='vae'): it has no videos to "
                     "sample; score its reconstructions with python -m eval.reconstruction "
                     f"--vae={workdir}, or train a DiT in its latent space with "
                     f"--config.latents.vae={workdir}")


def restore_run(workdir: str, config: ml_collections.ConfigDict, model: DiTConfig, *,
                step: int | None = None, ema: bool = True,
                mesh: jax.sharding.Mesh | dict | None = None, merge_lora: bool = False) -> Run:
  """open_run for a config its caller has checked already (model: what
  configs.checks.validate_config returned for it), e.g. after checks of its own."""
  check_dit_run(workdir, config)
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    raise FileNotFoundError(f"{workdir} has no checkpoints/: train first")
  if not isinstance(mesh, jax.sharding.Mesh):
    mesh = make_mesh(dict(config.mesh) if mesh is None else mesh)
  lora = config.lora if uses_lora(config) else None
  # Sparse attention runs DiT.with_attention, which qwix's adapters (on __call__) do not see.
  merge_lora = merge_lora or (lora is not None and config.sample.sparse.attention != "none")
  if merge_lora and lora is None:
    raise ValueError(f"{workdir} is not a LoRA run (config.lora.rank is 0): there are no "
                     "adapters to merge")
  with use_mesh(mesh, config.sharding.rules):
    graphdef, abstract, _ = train_state_layout(model, config.optim, mesh, config.sharding.rules,
                                               lora)
    saved = saved_part(abstract) if lora is not None else abstract
    params, model_state, step = checkpoints.restore_params(workdir, saved, use_ema=ema,
                                                          step=step)
    if lora is not None:  # the adapters' base: the run they fine-tuned
      model_state = lora_base(config, abstract.model_state)
      if merge_lora:
        graphdef, params, model_state = merged_params(graphdef, params, model_state, model,
                                                      lora)
  vae = open_latent_vae(config)  # None in pixel space
  return Run(workdir=workdir, config=config, model=model, mesh=mesh, graphdef=graphdef,
             params=params, model_state=model_state, step=step,
             text_encoder=text_encoder_for(config),
             decoder=latent_decoder(vae) if vae is not None else None,
             encoder=latent_encoder(vae) if vae is not None else None,
             temporal_factor=vae.config.temporal_factor if vae is not None else 0, ema=ema)
