"""Wan2.1's VAE weights into dit.vae.CausalVAE, from either published layout, without PyTorch.

  - diffusers (`AutoencoderKLWan`, `vae/diffusion_pytorch_model.safetensors`): encoder.conv_in,
    encoder.down_blocks.<i>.{norm1,conv1,norm2,conv2,conv_shortcut} or .{resample.1,time_conv},
    encoder.mid_block.{resnets,attentions}, encoder.norm_out/conv_out, quant_conv,
    post_quant_conv, decoder.up_blocks.<level>.resnets.<j> / .upsamplers.0, ...
  - original (`Wan2.1_VAE.pth`, a torch.save state dict): encoder.conv1, encoder.downsamples.<i>
    .residual.{0,2,3,6} / .shortcut, encoder.middle.{0,1,2}, encoder.head.{0,2}, conv1, conv2,
    decoder.upsamples.<i> (the decoder's blocks in one flat list), ...

Both name the same tensors in PyTorch's layouts (convolutions [out, in, (t,) h, w], norm gains
[C, 1, 1(, 1)]). `wan_vae_names` maps each of our parameters to its name and torch shape in a
layout; `load_wan_vae` checks a file has exactly those tensors with those shapes and puts them
into a model. The latent mean and std are not in either file: they come from the VAEConfig
(dit.vae.config.WAN21 holds the published ones).
"""
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit.vae.config import WAN21, VAEConfig
from dit.vae.model import CausalVAE

LAYOUTS = ("diffusers", "original")
_RESIDUAL_ORIGINAL = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
                      "conv2": "residual.6", "shortcut": "shortcut"}
_RESIDUAL_DIFFUSERS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                       "shortcut": "conv_shortcut"}


def _module_name(path: tuple, config: VAEConfig, layout: str) -> str:
  """Our module path (without the CausalConv3d's inner `conv`) -> the layout's module name."""
  original = layout == "original"
  head, *rest = path
  if head in ("quant_conv", "post_quant_conv"):
    return {"quant_conv": "conv1", "post_quant_conv": "conv2"}[head] if original else head
  part, *rest = rest
  if part == "conv_in":
    return f"{head}.conv1" if original else f"{head}.conv_in"
  if part == "head":
    sub = {"norm": ("head.0", "norm_out"), "conv": ("head.2", "conv_out")}[rest[0]]
    return f"{head}.{sub[0] if original else sub[1]}"
  if part == "middle":  # layers: residual, attention, residual
    index, *inner = rest[1:]
    if original:
      prefix = f"{head}.middle.{index}"
    else:
      prefix = (f"{head}.mid_block.attentions.0" if index == 1
                else f"{head}.mid_block.resnets.{index // 2}")
    return ".".join([prefix, *_inner_names(inner, original)])
  index, *inner = rest  # part is "down" or "up": one flat list of layers
  if original:
    prefix = f"{head}.{'downsamples' if part == 'down' else 'upsamples'}.{index}"
  elif part == "down":
    prefix = f"{head}.down_blocks.{index}"
  else:
    per_level = config.num_res_blocks + 2  # residual blocks, then the upsampler
    level, j = divmod(index, per_level)
    prefix = (f"{head}.up_blocks.{level}.upsamplers.0" if j == per_level - 1
              else f"{head}.up_blocks.{level}.resnets.{j}")
  return ".".join([prefix, *_inner_names(inner, original)])


def _inner_names(inner: list, original: bool) -> list[str]:
  """Names inside a residual block, an attention block or a resampler."""
  if not inner:
    return []
  name = inner[0]
  if name in _RESIDUAL_ORIGINAL:
    return [(_RESIDUAL_ORIGINAL if original else _RESIDUAL_DIFFUSERS)[name]]
  return [{"spatial": "resample.1", "time": "time_conv", "qkv": "to_qkv", "proj": "proj",
           "norm": "norm"}[name]]


def wan_vae_names(model: CausalVAE, layout: str) -> dict[tuple, tuple[str, tuple]]:
  """Each trained parameter's path in `model` -> (its name in `layout`, its torch shape)."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; choose one of {list(LAYOUTS)}")
  names = {}
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    *module, leaf = path
    if module[-1] == "conv":  # a CausalConv3d's nnx.Conv: the layouts name the CausalConv3d
      module = module[:-1]
    name = _module_name(tuple(module), model.config, layout)
    suffix = {"kernel": "weight", "bias": "bias", "gamma": "gamma"}[leaf]
    names[tuple(path)] = (f"{name}.{suffix}", _torch_shape(param.shape, leaf, path))
  return names


def _torch_shape(shape: tuple, leaf: str, path: tuple) -> tuple:
  if leaf == "bias":
    return shape
  if leaf == "gamma":  # [C, 1, 1, 1] in residual blocks and heads, [C, 1, 1] in attention
    return (shape[0], 1, 1) if "middle" in path and path[path.index("middle") + 2] == 1 \
        else (shape[0], 1, 1, 1)
  if len(shape) == 2:  # attention's 1x1 Conv2d as our Linear: [in, out] <- [out, in, 1, 1]
    return (shape[1], shape[0], 1, 1)
  return (shape[-1], shape[-2], *shape[:-2])  # [..spatial, in, out] <- [out, in, ..spatial]


def to_ours(array: np.ndarray, shape: tuple) -> np.ndarray:
  """A torch-layout tensor -> our parameter of `shape`."""
  array = np.asarray(array, np.float32)
  if len(shape) == 1:
    return array.reshape(shape)
  if len(shape) == 2:
    return array.reshape(array.shape[:2]).T
  return np.transpose(array, (*range(2, array.ndim), 1, 0))


def to_torch(array: np.ndarray) -> np.ndarray:
  """Our parameter -> its torch layout (for writing checkpoints; the inverse of to_ours up to
  the norm gains' trailing ones)."""
  array = np.asarray(array)
  if array.ndim == 2:
    return array.T[:, :, None, None]
  if array.ndim == 1:
    return array
  return np.transpose(array, (array.ndim - 1, array.ndim - 2, *range(array.ndim - 2)))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A .safetensors or .pth/.pt file's tensors as numpy arrays."""
  suffix = os.path.splitext(path)[1]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no VAE weights at {path}")
  if suffix == ".safetensors":
    from safetensors.numpy import load_file  # noqa: PLC0415
    return load_file(path)
  if suffix in (".pth", ".pt"):
    from weights.torch_checkpoint import load_torch_state_dict  # noqa: PLC0415
    return load_torch_state_dict(path)
  raise ValueError(f"{path}: VAE weights are .safetensors (diffusers' AutoencoderKLWan) or "
                   ".pth (Wan2.1_VAE.pth)")


def detect_layout(state_dict: dict) -> str:
  if any(k.startswith("encoder.down_blocks.") for k in state_dict):
    return "diffusers"
  if any(k.startswith("encoder.downsamples.") for k in state_dict):
    return "original"
  raise ValueError("these weights are neither diffusers' AutoencoderKLWan layout "
                   "(encoder.down_blocks...) nor Wan2.1_VAE.pth's (encoder.downsamples...)")


def load_wan_vae(path: str, config: VAEConfig = WAN21) -> CausalVAE:
  """A CausalVAE of `config` with the weights of `path` (either layout, found from its keys).
  A ValueError lists every missing, unexpected or misshapen tensor."""
  state_dict = read_state_dict(path)
  model = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))
  set_wan_vae_state(model, state_dict, where=path)
  z = config.latent_channels  # not in the file: the config's (WAN21: the published ones)
  model.latents_mean.set_value(jnp.asarray(config.latents_mean or [0.0] * z, jnp.float32))
  model.latents_std.set_value(jnp.asarray(config.latents_std or [1.0] * z, jnp.float32))
  return model


def set_wan_vae_state(model: CausalVAE, state_dict: dict, where: str = "the weights") -> None:
  """Puts a state dict of either layout into `model` (in place) after checking it."""
  layout = detect_layout(state_dict)
  names = wan_vae_names(model, layout)
  wanted = {name: shape for name, shape in names.values()}
  problems = [f"missing {name} {shape}" for name, shape in wanted.items()
              if name not in state_dict]
  problems += [f"unexpected {name}" for name in state_dict if name not in wanted]
  problems += [f"{name} is {tuple(state_dict[name].shape)}, the model needs {shape}"
               for name, shape in wanted.items()
               if name in state_dict and tuple(state_dict[name].shape) != shape]
  if problems:
    shown = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more"
                                         if len(problems) > 20 else "")
    raise ValueError(f"{where} ({layout} layout) does not fit a VAE of this config (base "
                     f"{model.config.base_channels}, multipliers "
                     f"{model.config.channel_multipliers}, {model.config.latent_channels} "
                     f"latent channels):\n  {shown}")
  state = nnx.state(model, nnx.Param)
  flat = dict(nnx.to_flat_state(state))
  for path, (name, _) in names.items():
    flat[path].set_value(to_ours(state_dict[name], flat[path].shape))
  nnx.update(model, nnx.from_flat_state(flat))
