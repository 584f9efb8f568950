"""SmoothQuant's equivalent transform: move activation outliers into the weights.

A layer y = x W (x [..., in], W [in, out]) equals y = (x diag(1/s)) (diag(s) W) for any s > 0.
With s_j = max|x_j|^alpha / max|W_j|^(1-alpha) (Xiao et al. 2023) the input channels that
carry outliers are divided down and their weight rows scaled up, so per-tensor activation
scales lose less to a few large channels. In this DiT the 1/s cannot be folded into the
preceding layer (adaLN modulates with 1 + scale per sample), so the quantized layer multiplies
its input by 1/s before quantizing it: qwix's WithSqScale holds the weight and 1/s, and
quantize.QuantizedLinears applies it.
"""
import jax
import jax.numpy as jnp
import numpy as np
from qwix.contrib import smooth_quant


def smoothing_factors(kernel: jax.Array, channel_max: np.ndarray, alpha: float) -> jax.Array:
  """s float32 [in]: the factors for a kernel [in, out] whose inputs reach channel_max [in]."""
  weight_max = jnp.max(jnp.abs(kernel.astype(jnp.float32)), axis=1)
  act_max = jnp.maximum(jnp.asarray(channel_max, jnp.float32), 1e-5)
  return smooth_quant.compute_scales_ratio(act_max, jnp.maximum(weight_max, 1e-5), alpha)


def smoothed(kernel: jax.Array, s: jax.Array) -> jax.Array:
  """diag(s) W: the kernel [in, out] whose input is divided by s."""
  return (kernel.astype(jnp.float32) * s[:, None]).astype(kernel.dtype)


def smoothed_max(channel_max: np.ndarray, s: jax.Array) -> jax.Array:
  """The per-tensor absolute maximum of an input with per-channel maxima channel_max [..., in]
  once divided by s [in]: [...]."""
  return jnp.max(jnp.asarray(channel_max) / s, axis=-1)
