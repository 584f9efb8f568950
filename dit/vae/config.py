"""The causal VAE's settings: a frozen dataclass checked when it is made (the network's boundary).

The architecture is Wan2.1's (https://github.com/Wan-Video/Wan2.1, wan/modules/vae.py): causal
3D convolutions, channel RMS norms, one per-frame attention in the middle of each half, and
resampling layers that
halve (encoder) or double (decoder) height and width at every level but the last, and the frame
count at the levels `temporal_downsample` names. `WAN21` is the published model's configuration.
"""
import dataclasses
from collections.abc import Mapping

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """What a causal video VAE is: its widths, depth, compression and latent statistics."""
  in_channels: int = 3                    # video channels (3: RGB, 1: grey)
  base_channels: int = 96                 # width of the first level; level i has
  channel_multipliers: tuple = (1, 2, 4, 4)  # base_channels * channel_multipliers[i]
  num_res_blocks: int = 2                 # per encoder level (the decoder has one more)
  temporal_downsample: tuple = (False, True, True)  # per downsampling level (len(mult) - 1)
  latent_channels: int = 16
  decoder_base_channels: int = 0          # 0: base_channels
  latents_mean: tuple = ()                # per latent channel; () = zeros. The DiT sees
  latents_std: tuple = ()                 # (z - mean) / std; () = ones
  dtype: str = "float32"                  # compute dtype; the weights stay float32
  discriminator_channels: int = 0         # width of a 3D patch discriminator trained with it
  discriminator_layers: int = 3           # (vae_loss.adversarial); 0: none

  def __post_init__(self):
    for name in ("channel_multipliers", "temporal_downsample",
                 "latents_mean", "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in
                                                          self.temporal_downsample))
    errors = _errors(self)
    if errors:
      raise ValueError("invalid VAE config:\n  " + "\n  ".join(errors))

  @classmethod
  def from_dict(cls, fields: Mapping) -> "VAEConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields.keys()) - names
    if unknown:
      raise ValueError(f"VAE config: unknown fields {sorted(unknown)}; the fields are "
                       f"{sorted(names)}")
    return cls(**dict(fields))

  def to_dict(self) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}

  def replace(self, **changes) -> "VAEConfig":
    return dataclasses.replace(self, **changes)

  @property
  def levels(self) -> int:
    return len(self.channel_multipliers)

  @property
  def spatial_factor(self) -> int:
    """Height and width of a frame over those of its latent."""
    return 2 ** (self.levels - 1)

  @property
  def temporal_factor(self) -> int:
    """1 + temporal_factor * k frames encode to 1 + k latent frames."""
    return 2 ** sum(self.temporal_downsample)

  @property
  def decoder_channels(self) -> int:
    return self.decoder_base_channels or self.base_channels

  def latent_shape(self, video_shape) -> tuple[int, int, int, int]:
    """[T, H, W, C] of a video -> [T', H', W', latent_channels]."""
    frames, height, width = video_shape[:3]
    return (1 + (frames - 1) // self.temporal_factor, height // self.spatial_factor,
            width // self.spatial_factor, self.latent_channels)

  def compression(self, video_shape=(81, 480, 832)) -> float:
    """Input values per latent value for a video of `video_shape` (T, H, W)."""
    latent = self.latent_shape(video_shape)
    frames, height, width = video_shape[:3]
    return frames * height * width * self.in_channels / (
        latent[0] * latent[1] * latent[2] * latent[3])

  def video_shape_errors(self, shape, what: str = "video") -> list[str]:
    """Why a video of shape [T, H, W, C] cannot be coded whole, or []."""
    frames, height, width, channels = shape
    errors = []
    if frames < 1 or (frames - 1) % self.temporal_factor:
      k = max(0, (frames - 1) // self.temporal_factor)
      errors.append(f"{what} has {frames} frames; the VAE codes 1 + {self.temporal_factor}k "
                    f"frames (the first alone, then groups of {self.temporal_factor}): use "
                    f"{1 + k * self.temporal_factor} or {1 + (k + 1) * self.temporal_factor}")
    if height % self.spatial_factor or width % self.spatial_factor:
      errors.append(f"{what} is {height}x{width}; height and width must be multiples of the "
                    f"VAE's spatial factor {self.spatial_factor}")
    if channels != self.in_channels:
      errors.append(f"{what} has {channels} channels; the VAE takes {self.in_channels}")
    return errors


def _errors(config: VAEConfig) -> list[str]:
  errors = [f"vae.{field}={getattr(config, field)} must be positive"
            for field in ("in_channels", "base_channels", "num_res_blocks", "latent_channels")
            if not getattr(config, field) > 0]
  if config.decoder_base_channels < 0:
    errors.append(f"vae.decoder_base_channels={config.decoder_base_channels} must be >= 0 "
                  "(0: base_channels)")
  if not config.channel_multipliers or any(m < 1 for m in config.channel_multipliers):
    errors.append(f"vae.channel_multipliers={config.channel_multipliers} must be one or more "
                  "positive ints, one per level")
  elif len(config.temporal_downsample) != config.levels - 1:
    errors.append(f"vae.temporal_downsample has {len(config.temporal_downsample)} entries; it "
                  f"needs one per downsampling level: {config.levels - 1} (len of "
                  "channel_multipliers - 1)")
  if config.decoder_channels * min(config.channel_multipliers or (1,)) % 2:
    errors.append("the decoder's upsampling layers halve the width: base channels times each "
                  "multiplier must be even")
  for field in ("latents_mean", "latents_std"):
    values = getattr(config, field)
    if values and len(values) != config.latent_channels:
      errors.append(f"vae.{field} has {len(values)} values for {config.latent_channels} latent "
                    "channels: give one per channel, or () for the default")
  if any(s <= 0 for s in config.latents_std):
    errors.append("vae.latents_std must be positive")
  if config.discriminator_channels < 0 or config.discriminator_layers < 1:
    errors.append(f"vae.discriminator_channels={config.discriminator_channels} must be >= 0 "
                  f"(0: no discriminator) and vae.discriminator_layers="
                  f"{config.discriminator_layers} positive")
  if config.dtype not in DTYPES:
    errors.append(f"vae.dtype={config.dtype!r}; choose one of {list(DTYPES)}")
  return errors


# Wan2.1's VAE (Wan2.1_VAE.pth, diffusers' AutoencoderKLWan): 4x8x8, 16 latent channels, with
# the latent statistics its DiT was trained with.
WAN21 = VAEConfig(
    in_channels=3, base_channels=96, channel_multipliers=(1, 2, 4, 4), num_res_blocks=2,
    temporal_downsample=(False, True, True), latent_channels=16,
    latents_mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    latents_std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160))
