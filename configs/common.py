"""Every section of an experiment config with its defaults, and the helpers the experiment files
in configs/ share (big_vision style). It imports only ml_collections: a config file is read
without loading JAX. The sections are checked once per entry point, after the command line's
overrides, by configs/checks.py.
"""
import ml_collections

# Parameter axes: "embed" (model width) is what FSDP shards; "mlp" and "heads" are the tensor-
# parallel axes; the rest are small or read whole. Activation axes: the batch over data x fsdp,
# the token sequence over seq.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("patch", None),
    ("text_embed", None),
    ("vocab", None),
    ("classes", None),
    ("freq", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "seq"),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
)

CONDITIONINGS = ("text", "label")  # model.conditioning (checked with the model: dit/config.py)

# The named model sizes: only what differs between them; the rest are `model_config`'s defaults.
MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=4, num_heads=4, dual_stream_depth=2),
    "S": dict(hidden_size=384, depth=12, num_heads=6, dual_stream_depth=4),
    "B": dict(hidden_size=768, depth=12, num_heads=12, dual_stream_depth=4),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, dual_stream_depth=8),
    # XL: DiT-XL's width and depth in 18 heads of 64 (not 16 of 72, which the GPU kernels pad to
    # 128); Ulysses then splits over 2, 3, 6, 9 or 18 devices, USP over any seq degree.
    "XL": dict(hidden_size=1152, depth=28, num_heads=18, dual_stream_depth=8),
    # 7B (Seaweed-7B's scale): head dim 128, SwiGLU width 8192, the first 9 of 32 blocks
    # dual-stream.
    "7B": dict(hidden_size=3072, depth=32, num_heads=24, dual_stream_depth=9,
               text_dim=4096),
}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'size=B,runlocal' -> ConfigDict(size='B', runlocal=True), typed by the defaults.

  A bare name is a flag set to True; an unknown key is an error that lists the known ones.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config variant {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      truth = {"": True, "true": True, "1": True, "false": False, "0": False}
      if value.lower() not in truth:
        raise ValueError(f"config variant {key}={value!r} must be true or false")
      parsed[key] = truth[value.lower()]
    elif value == "":
      raise ValueError(f"config variant {key!r} needs a value, as in {key}=...")
    else:
      try:
        parsed[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config variant {key}={value!r} must be a "
                         f"{type(default).__name__}") from None
  return parsed


def _section(overrides: dict, **defaults) -> ml_collections.ConfigDict:
  """A config section of these fields and defaults, locked (a misspelt override is an error),
  with `overrides` applied."""
  config = ml_collections.ConfigDict(defaults)
  config.lock()
  for key, value in overrides.items():
    setattr(config, key, value)  # an unknown key: AttributeError, with the closest field named
  return config


def model_config(size: str = "B", **overrides) -> ml_collections.ConfigDict:
  """config.model: the DiT of a named size (MODEL_SIZES), with `overrides` applied (an unknown
  field is an error). dit.config.DiTConfig.from_dict(config.model) builds the network's config."""
  if size not in MODEL_SIZES:
    raise ValueError(f"unknown model size {size!r}; choose one of {list(MODEL_SIZES)}")
  defaults = dict(
      size=size,
      patch_size=(1, 2, 2),       # (pt, ph, pw) over latent (T, H, W)
      in_channels=16,             # latent channels (3 for pixel-space models)
      mlp_ratio=4.0,              # SwiGLU width = 2/3 * mlp_ratio * hidden, rounded up to 64
      conditioning="text",        # "text": hybrid-stream text tokens; "label": class labels
      text_dim=384,               # width of the text encoder's token states
      text_vocab_size=0,          # > 0: text is token ids embedded by a learned [vocab, text_dim]
                                  # table (text_encoders: hashed_words), not states
      num_classes=10,             # for conditioning="label"; index num_classes is the null label
      attention="auto",           # an implementation in dit.attention; "auto": per machine and
                                  # call, cuDNN (dense) or our kernel on GPUs, our kernel on
                                  # TPUs, XLA on CPU; or "xla", "cudnn", "block_sparse"
      sparse_pattern="full",      # static block-sparsity pattern (dit.sparsity.PATTERNS); any
                                  # pattern but "full" needs attention auto, xla or block_sparse
      sparse_window=(1, 4, 4),    # "window": half-widths (dt, dh, dw) in patches
      sparse_block=128,           # block size of the pattern (query and key blocks)
      sequence_parallel="none",   # "ulysses", "ring" or "usp" (Ulysses x ring): attention with
                                  # the sequence split over the mesh's "seq" axis
                                  # (sharding/sequence_parallel.py)
      ulysses_degree=0,           # usp: Ulysses group size, ring degree = seq / it; 0: the largest
                                  # that divides model.num_heads and the seq degree
      remat="none",               # name in dit.remat.REMAT_POLICIES
      scan_layers=True,           # lax.scan over blocks: compile one block, not `depth`
      dtype="bfloat16",           # compute dtype
      param_dtype="float32",
      rope_theta=10_000.0,
      prediction="velocity",      # what the final layer predicts: "velocity", or "data" (the
                                  # clean video x0, returned as the velocity (x_t - x0) / t: for
                                  # patches as wide as the model, JiT, Li & He 2025)
  )
  return _section(overrides, **(defaults | MODEL_SIZES[size]))


def flow_config(**overrides) -> ml_collections.ConfigDict:
  """config.flow: the flow-matching objective (diffusion/flow_matching.py)."""
  return _section(overrides,
      logit_mean=0.0,         # logit-normal timestep sampling: t = sigmoid(mean + std * N(0,1))
      logit_std=1.0,
      shift=1.0,              # timestep shift at `shift_base_tokens` video tokens
      shift_base_tokens=0,    # 0: the shift is the same at every resolution
      cond_dropout=0.1,       # probability a sample's condition is replaced by the null one
      distill_timesteps=(),   # distillation: t drawn uniformly from these noise levels in
                              # (0, 1] (unshifted) instead; (1.0,): one-step (InstaFlow)
      frame_timesteps=0.0,    # probability a video draws its own noise level per latent frame
                              # (Pusa's vectorized timesteps); else one for all its frames
  )


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """config.optim: AdamW with linear warmup and cosine decay, global-norm clipping
  (training/optimizer.py)."""
  return _section(overrides,
      lr=1e-4, warmup_steps=1000, decay_steps=100_000, final_lr_ratio=0.1,
      b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0,
  )


def sparse_config(**overrides) -> ml_collections.ConfigDict:
  """config.sample.sparse: attention modes over the denoising steps
  (diffusion/sparse_sampling.py)."""
  return _section(overrides,
      attention="none",      # "none" | "adaspa" | a static pattern (window, temporal, ...)
      sparsity=0.5,          # AdaSpa: average fraction of video key blocks dropped
      warmup=0.2,            # fraction of the steps with full attention first
      searches=(10, 30),     # AdaSpa's search steps out of `searches_of`, scaled to the steps
      searches_of=50,
      block=0,               # pattern block size in tokens (0: model.sparse_block)
      recall_threshold=0.8,  # heads keeping more mass than this move sparser (kernels/adaspa.py)
  )


def sample_config(sparse: dict | None = None, **overrides) -> ml_collections.ConfigDict:
  """config.sample: how sample.py, python -m eval and train.py's samples draw videos; `sparse`
  overrides fields of sparse_config."""
  return _section(overrides,
      num_steps=50,
      sampler="euler",        # euler | heun
      guidance_scale=5.0,     # classifier-free guidance; 1 turns it off
      guidance_interval=(0.0, 1.0),  # noise levels sigma (1: noise) where guidance applies
      shift=ml_collections.config_dict.placeholder(float),  # None: as in training, at the
                              # sampled resolution; --config.sample.shift=3 sets one
      upscale=1,              # videos written this many times larger (nearest neighbour)
      schedule="",            # a few-step schedule in place of num_steps and sampler:
                              # "uniform-K", "heun-K", "searched-K" (the run's search) or a
                              # .json file (diffusion/schedules.py)
      sparse=sparse_config(**(sparse or {})),
  )


def data_config(name: str = "moving_digits", **kwargs) -> ml_collections.ConfigDict:
  """config.data: a source from data.sources.SOURCES by name, its keyword arguments, and how
  examples of varied shapes make batches (data/batching.py; set the fields after, e.g.
  config.data.update(batching="packing", row_tokens=256))."""
  return ml_collections.ConfigDict(dict(
      name=name, kwargs=kwargs, num_threads=2,
      batching="fixed",     # "fixed": every example has train.video_shape, train.batch_size a
                            # step; "buckets": batches of one shape each, as many as fit
                            # tokens_per_device; "packing": train.batch_size rows of
                            # row_tokens video tokens holding whole examples of any shapes
      tokens_per_device=0,  # buckets: video tokens per data-parallel device and step;
                            # adaptive sequence parallelism: video and text tokens a device holds
      row_tokens=0,         # packing: video tokens per row
      max_slots=8,          # packing: examples per row at most
      balance=True,         # packing: examples to data-parallel ranks by estimated cost
                            # (Seaweed's runtime balance), not in order
  ))


# What a stage of a multi-stage run may change (config.stages; configs/stages.py).
STAGE_SECTIONS = ("data", "train", "optim", "flow", "sample")


def stage_config(name: str, num_steps: int, *, optimizer: str = "reset",
                 **sections: dict) -> dict:
  """One stage of config.stages: `num_steps` steps with these sections' fields changed (dicts
  keyed by section, among STAGE_SECTIONS; data.kwargs is replaced whole). optimizer "reset"
  starts the optimizer state (and the learning-rate schedule) afresh at the stage's start;
  "carry" keeps the previous stage's moments. The weights and their EMA always carry over."""
  return dict(name=name, num_steps=num_steps, optimizer=optimizer, **sections)


def text_config(**overrides) -> ml_collections.ConfigDict:
  """config.text: the caption encoder (text_encoders/) for conditioning="text"."""
  return _section(overrides, encoder="minilm", max_length=16, vocab_size=4096)


# LoRA's default layers: every linear layer of the blocks (dit.model.BLOCK_LINEARS).
LORA_LAYERS = (r"(dual|single)_blocks/\d+/(video|text|stream)/"
               r"(qkv|out|modulation|mlp/gate_up|mlp/down)")


def lora_config(rank: int = 0, alpha: float | None = None, layers: str = LORA_LAYERS
                ) -> ml_collections.ConfigDict:
  """config.lora (training/lora.py): rank > 0 trains LoRA adapters of that rank on the layers
  whose module paths match `layers` (a regex), the base run (train.init_from) frozen; alpha
  scales them by alpha / rank (default: rank). Absent or rank 0: the whole model trains."""
  return ml_collections.ConfigDict(dict(rank=rank, alpha=float(alpha or rank or 1),
                                        layers=layers))


def uses_lora(config: ml_collections.ConfigDict) -> bool:
  """Whether a config trains LoRA adapters on a frozen base."""
  return "lora" in config and config.lora.rank > 0


def train_config(**overrides) -> ml_collections.ConfigDict:
  """config.train: the loop of train.py."""
  return _section(overrides,
      batch_size=64,            # global, over all processes and microbatches
      grad_accum=1,             # microbatches per step, for batches larger than memory
      num_steps=200_000,
      video_shape=(16, 32, 32),  # (T, H, W) of the model's input (C = model.in_channels)
      ema_decay=0.9999,
      log_every=100,
      checkpoint_every=2000,
      keep_checkpoints=3,
      sample_every=10_000,      # 0: no samples during training
      sample_prompts=("the digit 0 moves up",),
      sample_labels=(0,),
      init_from="",             # a train.py run whose EMA weights a new run starts from (reflow,
                                # distillation); its architecture must match
      init_step=0,              # that run's checkpoint; 0: its newest, pinned when training starts
  )


def eval_config(**overrides) -> ml_collections.ConfigDict:
  """config.eval: what python -m eval computes (eval/evaluate.py)."""
  return _section(overrides,
      num_videos=256,          # generated videos, compared with as many real ones
      batch_size=32,           # videos sampled per call of the compiled sampler
      seed=0,                  # the sampling noise and the draw of real videos
      # fvd: I3D (Kinetics-400) Frechet distance; fid: InceptionV3 over frames (needs
      # inception_weights); digits: the quick-start classifier's accuracies and distances
      # (moving_digits only). A metric that cannot run is skipped and says why.
      metrics=("fvd", "fid", "digits"),
      fvd_frames=16,           # clip length for I3D: longer videos are cut, shorter repeat frames
      inception_weights="",    # FID's InceptionV3 weights (.pth, .safetensors, .npz); "": no FID
      feature_batch_size=8,    # videos (I3D) or 8x frames (Inception) per feature batch
      classifier_steps=1000,   # training steps of the digit classifier (cached in the workdir)
  )


def mesh_config(**sizes) -> ml_collections.ConfigDict:
  """config.mesh: devices per mesh axis (sharding/mesh.py); -1 takes the devices left over.

  data: data parallel; fsdp: data parallel with parameters, gradients, optimizer state and EMA
  sharded (FSDP); seq: each video's tokens split (model.sequence_parallel picks Ulysses, ring or
  USP for attention); tensor: the MLP and attention heads split (by the sharding rules).
  """
  return _section(sizes, data=-1, fsdp=1, seq=1, tensor=1)


def sharding_config() -> ml_collections.ConfigDict:
  """config.sharding: the rules from logical axis names to mesh axes (sharding/logical.py), and
  the sequence-parallel plan of each step.

  sequence_parallel_plan "static": the mesh's seq axis for every video (model.sequence_parallel);
  "adaptive" (FlexSP, sharding/sp_planner.py): every step of data.batching="packing" splits the
  devices into groups of its own sizes and gives each group videos, so long videos run on wide
  groups and short ones on narrow ones, with data.tokens_per_device and data.max_slots per
  device; every device on the data axis. Stages of plain batches (one shape, one length) run
  data parallel.
  """
  return ml_collections.ConfigDict(dict(
      rules=DEFAULT_RULES,
      sequence_parallel_plan="static",
      sp_hardware="measure",  # the cost model's device: measured at the run's start (and kept
                              # in the run), or published figures: "h100", "h200", "tpu-v5p"
      sp_planner="heuristic",  # or "milp": exact (HiGHS), for small device counts
      sp_memory_gib=0.0,      # the memory per device plans keep under; 0: the device's
  ))


# What an experiment trains (config.trains): "dit" (the default when absent: config.model and
# flow matching) or "vae" (config.vae and config.vae_loss).
TRAINS = ("dit", "vae")


def vae_config(**overrides) -> ml_collections.ConfigDict:
  """config.vae: the causal VAE (dit/vae/config.py: VAEConfig holds the same fields and checks
  them); the defaults are Wan2.1's architecture without its latent statistics."""
  return _section(overrides,
      in_channels=3,                  # video channels
      base_channels=96,               # width of the first level
      channel_multipliers=(1, 2, 4, 4),  # level widths; every level but the last halves H, W
      num_res_blocks=2,
      temporal_downsample=(False, True, True),  # levels that also halve the frames after the
                                      # first: 1 + 4k frames -> 1 + k latent frames
      latent_channels=16,
      decoder_base_channels=0,        # 0: base_channels
      latents_mean=(),                # per latent channel, what the DiT's latents are centred
      latents_std=(),                 # and scaled by; (): measured after training
      dtype="float32",                # compute dtype
      discriminator_channels=0,       # a 3D patch discriminator, trained with the VAE when
      discriminator_layers=3,         # vae_loss.adversarial > 0 (0 channels: none)
  )


def vae_loss_config(**overrides) -> ml_collections.ConfigDict:
  """config.vae_loss: the VAE's training objective (training/vae_step.py)."""
  return _section(overrides,
      l1=1.0,                 # weight of the mean absolute reconstruction error
      l2=0.0,                 # weight of the mean squared reconstruction error
      kl=1e-6,                # weight of the KL to N(0, 1), per latent value
      perceptual=0.0,         # weight of the I3D feature distance (eval/i3d.py's Kinetics
                              # weights; grey videos are repeated to RGB)
      perceptual_layers=("Conv3d_2c_3x3", "Mixed_3c"),  # I3D layers compared, unit-normalised
      reconstructions=4,      # videos reconstructed in samples/step_<N>/ (train.sample_every)
      adversarial=0.0,        # weight of the hinge GAN loss of vae.discriminator_channels'
                              # 3D patch discriminator (0: none)
      adversarial_start=0,    # step from which the discriminator and that loss train
      image_steps=0,          # the first steps train on each video's first frame alone (an
                              # image: the causal VAE codes it alone), ~T times cheaper a step:
                              # the spatial layers learn shapes before motion is asked of them
  )


def latents_config(**overrides) -> ml_collections.ConfigDict:
  """config.latents: a DiT trained in a VAE's latent space (absent or vae="": pixel space).
  train.video_shape and model.in_channels are then the latents' (T', H', W') and channels; the
  data gives the videos the VAE encodes, and samples are decoded with it."""
  return _section(overrides,
      vae="",   # a VAE run's workdir (train.py with config.trains="vae"), or Wan2.1's VAE
                # weights (Wan2.1_VAE.pth, or diffusers' .safetensors)
      shards="",  # "": encode each batch on the fly; else a folder of latent shards of the data
                  # (python -m data.encode_latents) to train on
      vae_step=0,  # the VAE run's checkpoint: 0 takes its newest when training starts and
                   # records it, so the run trains and decodes with one VAE throughout
      latents_mean=(),  # the VAE run's per-channel latent statistics the DiT's latents are
      latents_std=(),   # normalized by; () takes its latent_statistics.json's when training
                        # starts and records them (a VAE run that trains on re-measures them);
                        # with Wan2.1's weights () keeps their published ones, values replace them
  )


def latent_vae(config: ml_collections.ConfigDict) -> str:
  """The VAE a DiT experiment trains in the latent space of, or "" (pixel space)."""
  latents = config.get("latents")
  return latents.vae if latents is not None else ""


def latent_vae_step(config: ml_collections.ConfigDict) -> int | None:
  """The VAE run checkpoint a latent DiT uses (None: the newest)."""
  latents = config.get("latents")
  return (latents.get("vae_step") or None) if latents is not None else None


def latent_statistics(config: ml_collections.ConfigDict) -> tuple | None:
  """The (mean, std) per latent channel a latent DiT pinned (None: its VAE's own)."""
  latents = config.get("latents")
  if latents is None or not latents.get("latents_std"):
    return None
  return tuple(latents.latents_mean), tuple(latents.latents_std)


def latent_shards_folder(config: ml_collections.ConfigDict) -> str:
  """The latent shards a latent DiT trains on, or "" (it encodes its data on the fly)."""
  latents = config.get("latents")
  return latents.get("shards", "") if latents is not None and latents.vae else ""
