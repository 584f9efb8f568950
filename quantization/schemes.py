"""Quantization schemes by name (sample.py and python -m eval --quantize) and the qwix rules
that apply one to the DiT's transformer blocks.

What is quantized: every linear layer inside a block (qkv, attention output, the MLP's
gate_up and down, the adaLN modulation), which hold nearly all of a DiT's parameters and
matmul FLOPs. The patch and condition embedders and the final layer stay in full precision,
as in ViDiT-Q and the LLM practice of keeping the first and last layers exact. Attention's own
matmuls (q k^T, p v) are not quantized.

Weights are quantized symmetrically per output channel; activations (W8A8) per tensor with a
static scale calibrated on sampling trajectories (quantization/calibration.py).
"""
import dataclasses
import re

import jax.numpy as jnp
import qwix

from dit.model import BLOCK_LINEARS  # the block linears' module paths


@dataclasses.dataclass(frozen=True)
class Scheme:
  """One way to quantize a layer: its weights' type, and its input activations' (None: kept
  in the compute dtype, weight-only)."""
  name: str
  weight: str
  activation: str | None = None
  help: str = ""

  @property
  def weight_qtype(self):
    return jnp.dtype(self.weight)

  @property
  def act_qtype(self):
    return None if self.activation is None else jnp.dtype(self.activation)

  @property
  def weight_bits(self) -> int:
    return self.weight_qtype.itemsize * 8 if self.weight != "int4" else 4


SCHEMES = {s.name: s for s in [
    Scheme("w8", "int8", help="int8 weights, activations in the compute dtype"),
    Scheme("w4", "int4", help="int4 weights, activations in the compute dtype"),
    Scheme("w8a8", "int8", "int8", help="int8 weights and activations (static scales)"),
    Scheme("w8a8_fp8", "float8_e4m3fn", "float8_e4m3fn",
           help="fp8 (e4m3) weights and activations (static scales)"),
]}


def get_scheme(name: str) -> Scheme:
  if name not in SCHEMES:
    raise ValueError(f"unknown quantization scheme {name!r}; choose one of {sorted(SCHEMES)} "
                     "(or 'mixed' after python -m quantization.mixed)")
  return SCHEMES[name]


def rule(scheme: Scheme, module_path: str = BLOCK_LINEARS) -> qwix.QuantizationRule:
  """The qwix rule quantizing the layers at `module_path` (a regex) with `scheme`: static
  per-tensor activation scales (act_batch_axes covers every non-channel axis of a block's
  [B, L, D] or [B, D] input)."""
  activations = {}
  if scheme.act_qtype is not None:
    activations = dict(act_qtype=scheme.act_qtype, act_static_scale=True,
                       act_batch_axes=(0, 1))
  return qwix.QuantizationRule(module_path=module_path, op_names=("dot_general",),
                               weight_qtype=scheme.weight_qtype, **activations)


def rules(layer_schemes: dict[str, Scheme]) -> list[qwix.QuantizationRule]:
  """One rule per layer path (exact match) for a mixed-precision choice {path: scheme}."""
  return [rule(scheme, re.escape(path)) for path, scheme in layer_schemes.items()]
