"""Videos for a fixed list of prompts or labels, from any parameters of one model: what
train.py samples every train.sample_every steps, sample.py on demand and python -m eval in
batches. rundir/videos.py writes them."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import PartitionSpec as P

from diffusion import schedules
from diffusion.frame_sampling import FrameTask, sample_given_frames
from diffusion.samplers import guidance_interval, sampling_shift
from diffusion.sparse_sampling import (check_schedule, sample_scheduled, search_report,
                                       search_steps)
from dit.patchify import num_video_tokens


class VideoSampler:
  """Draws videos for a fixed list of prompts (or labels) from any parameters of one model.

  The conditioning is encoded once and the sampler is jitted once, so train.py can call it
  every few thousand steps cheaply.
  """

  def __init__(self, graphdef: nnx.GraphDef, model_state: nnx.State,
               config: ml_collections.ConfigDict, text_encoder=None,
               prompts=None, labels=None, decoder=None, workdir: str | None = None,
               task: FrameTask | None = None, encoder=None):
    """config: the experiment (checked by configs.checks.validate_config); text_encoder: the
    run's caption encoder (text models); prompts or labels: what to sample (default: the
    config's train.sample_prompts or train.sample_labels); decoder: latents -> videos, for a
    DiT of a VAE's latents (rundir.open_vae.latent_decoder), run in the same compiled call;
    workdir: the run, where config.sample.schedule's "searched-K" schedules are found;
    task: frames the videos are given (image-to-video, extension, keyframes: generate takes
    them), with encoder (videos -> latents) for a latent DiT."""
    self.config = config
    self.text_encoder = text_encoder
    if config.model.conditioning == "text" and labels:
      raise ValueError("the model is conditioned on text: pass prompts, not labels")
    if config.model.conditioning == "label" and prompts:
      raise ValueError("the model is conditioned on class labels: pass labels, not prompts")
    if config.model.conditioning == "text":
      prompts = list(prompts or config.train.sample_prompts)
      if not prompts:
        raise ValueError("no prompts: pass --prompt or set train.sample_prompts")
    else:
      prompts = list(labels or config.train.sample_labels)
    self.prompts, self.cond = self.condition(prompts)
    self.shape = (len(self.prompts), *config.train.video_shape, config.model.in_channels)
    num_tokens = num_video_tokens(config.train.video_shape, config.model.patch_size)
    shift = sampling_shift(config, num_tokens)
    sample_cfg = config.sample
    sparse = sample_cfg.sparse
    # Errors now, not at the first sample hours into training.
    check_schedule(sparse, config.model, num_tokens,
                   self.cond["text"].shape[1] if "text" in self.cond else 0)
    # A few-step schedule (diffusion/schedules.py) in place of num_steps and sampler.
    self.schedule = schedules.resolve(sample_cfg.schedule, workdir, shift)
    if self.schedule is not None:
      self.schedule.arrays(config.model.depth)  # its skipped blocks are the model's
    self.search_steps = [] if self.schedule else search_steps(sample_cfg.num_steps, sparse)
    self.task = None if task is None or task.name == "text" else task
    self._encoder = encoder
    self._given_shapes = set()  # checked already
    if self.task is not None:
      self._check_task(self.task)
    guidance = dict(guidance_scale=sample_cfg.guidance_scale,
                    guidance_interval=guidance_interval(sample_cfg))
    options = dict(num_steps=sample_cfg.num_steps, method=sample_cfg.sampler, shift=shift,
                   **guidance)

    def generate(params, key, cond, given):
      model = nnx.merge(graphdef, params, model_state)
      if self.task is not None:
        # Pusa: the given latent frames held at their level while the others denoise.
        given = given if encoder is None else encoder(given)
        videos = sample_given_frames(model, key, given, jnp.asarray(self.task.mask), cond,
                                     given_level=self.task.level, **options)
        return (videos if decoder is None else decoder(videos)), {}
      if self.schedule is not None:
        videos, searches = schedules.sample(model, key, self.shape, cond, self.schedule,
                                            **guidance), {}
      else:
        videos, searches = sample_scheduled(model, key, self.shape, cond, config=sparse,
                                            **options)
      return (videos if decoder is None else decoder(videos)), searches

    # Under a mesh (jax.set_mesh) the videos come back whole on every process.
    mesh = jax.sharding.get_abstract_mesh()
    self._generate = jax.jit(generate, out_shardings=None if mesh.empty else P())

  def _check_task(self, task: FrameTask) -> None:
    """What sampling with given frames cannot combine with, as errors that say what to drop."""
    frames = self.config.train.video_shape[0] // self.config.model.patch_size[0]
    if len(task.mask) != frames:
      raise ValueError(f"the {task.name} task holds {len(task.mask)} latent frames; this "
                       f"model's videos have {frames}")
    if self.schedule is not None:
      raise ValueError(f"--schedule ({self.config.sample.schedule}) samples text-to-video only; "
                       f"drop it for the {task.name} task")
    if self.config.sample.sparse.attention != "none":
      raise ValueError(f"sparse attention ({self.config.sample.sparse.attention}) samples "
                       f"text-to-video only; set it to none for the {task.name} task")
    if not self.config.flow.get("frame_timesteps", 0.0):
      logging.warning("this run trained with one noise level for all frames "
                      "(flow.frame_timesteps=0): it was not taught the %s task; fine-tune it "
                      "with configs/frame_timesteps.py", task.name)

  def _check_given(self, given: jax.Array) -> None:
    """Given videos of the sampler's shape (a latent DiT's: videos its VAE encodes to it)."""
    if given.shape in self._given_shapes:
      return
    ok = given.ndim == 5 and given.shape[:2] == (self.shape[0], len(self.task.given))
    if ok and self._encoder is not None:
      try:
        ok = jax.eval_shape(self._encoder, given).shape == self.shape
      except (ValueError, TypeError):  # the VAE cannot code frames of that size
        ok = False
    elif ok:
      ok = given.shape == self.shape
    if not ok:
      raise ValueError(f"the given videos are {tuple(given.shape)}; this sampler makes "
                       f"{self.shape[0]} videos of {len(self.task.given)} frames"
                       + ("" if self._encoder else f", {tuple(self.shape)} in all"))
    self._given_shapes.add(given.shape)

  def calls(self) -> int:
    """Model calls per video: the schedule's, or the configured sampler's (a guided call, both
    halves in one batch, counts once)."""
    if self.schedule is not None:
      return self.schedule.calls()
    return schedules.uniform(self.config.sample.num_steps, 1.0,
                             self.config.sample.sampler).calls()

  def condition(self, prompts) -> tuple[list[str], dict]:
    """(names, cond) for captions (text models) or class labels (label models): what generate
    takes as `cond` to sample other prompts than the sampler's own, as many of them."""
    if self.config.model.conditioning == "text":
      prompts = [str(p) for p in prompts]
      return prompts, {k: jnp.asarray(v) for k, v in self.text_encoder(prompts).items()}
    labels = [int(l) for l in prompts]
    num_classes = self.config.model.num_classes
    if not labels or not all(0 <= l < num_classes for l in labels):
      raise ValueError(f"labels {labels} must be given and lie in [0, "
                       f"model.num_classes={num_classes})")
    return [f"label {l}" for l in labels], {"labels": jnp.asarray(labels, jnp.int32)}

  def generate(self, params: nnx.State, key: jax.Array, cond: dict | None = None,
               given: np.ndarray | None = None) -> np.ndarray:
    """Videos float32 [N, T, H, W, C], nominally in [-1, 1]."""
    return self.generate_with_report(params, key, cond, given)[0]

  def generate_with_report(self, params: nnx.State, key: jax.Array,
                           cond: dict | None = None,
                           given: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """(videos, report): the report gives, for each AdaSpa search, the recall of attention mass
    and the sparsity of every layer's pattern, and their means ({} without AdaSpa).

    cond (from condition()) samples other prompts than the sampler's own, as many of them,
    with the same compiled sampler. given: with a task, the videos [N, T, H, W, C] in [-1, 1]
    whose task.held frames are kept, as many as the prompts; the other frames are ignored in
    pixel space, and read by a causal VAE's encoder (frame_sampling.fill_held makes them)."""
    cond = self.cond if cond is None else cond
    count = len(next(iter(cond.values())))
    if count != self.shape[0]:
      raise ValueError(f"this sampler draws {self.shape[0]} videos at a time; cond holds "
                       f"{count} prompts (pad or split them)")
    if (given is None) != (self.task is None):
      raise ValueError("given frames go with a task (image, extend, keyframes) and only then")
    if given is not None:
      given = jnp.asarray(given, jnp.float32)
      self._check_given(given)
    videos, searches = self._generate(params, key, cond, given)
    report = search_report(jax.device_get(searches), self.search_steps) if searches else {}
    return np.asarray(videos), report
