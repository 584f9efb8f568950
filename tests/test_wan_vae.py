"""Wan2.1's VAE: both published layouts load into dit.vae.CausalVAE and give diffusers' numbers.

The pinned values come from diffusers 0.42.1's AutoencoderKLWan (torch 2.13.0+cpu) on the same
weights and video, run once in a throwaway environment by tests/wan_vae_diffusers_check.py
(whose docstring has the commands). diffusers encodes the first frame alone and then four
frames at a time and decodes one latent frame at a time; here the whole video is coded at once.
"""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from torch_files import write_state_dict
from wan_vae_reference import SMALL_WAN, random_wan_state, reference_video
from weights.wan_vae import load_wan_vae

# diffusers' posterior mean [0, :, 0, 0], log-variance [0, :, 1, 1] ([T'=3, Z=4]) and decoded
# video [0, :, 5, 7] ([T=9, C=3]), and the sums of their absolute values.
DIFFUSERS_MEAN = [[-0.139657, 0.228828, -0.026597, -0.206729],
                  [-0.273239, -0.123193, -0.189887, -0.237231],
                  [0.077323, 0.480442, -0.531745, -0.021368]]
DIFFUSERS_LOGVAR = [[0.043717, -0.16925, 0.002551, 0.250212],
                    [0.167812, -0.156302, 0.240297, 0.176677],
                    [0.083337, -0.373532, 0.296954, 0.214793]]
DIFFUSERS_DECODED = [[-0.318389, 0.304694, -0.533836], [0.5785, 0.209021, -0.137613],
                     [-0.13045, -0.297979, -0.132609], [0.197089, 0.3261, -0.037326],
                     [-0.834294, -0.745903, 0.295563], [0.680883, 0.06932, 0.493998],
                     [-0.684513, -0.691313, -0.174724], [-0.182671, 0.066805, 0.207656],
                     [-1.0, -0.5633, -0.52772]]
DIFFUSERS_ABS_SUMS = {"mean": 13.15836, "logvar": 17.766373, "decoded": 4133.599}


@pytest.fixture(scope="module")
def diffusers_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("wan") / "diffusion_pytorch_model.safetensors"
  save_file(random_wan_state(SMALL_WAN, "diffusers"), str(path))
  return str(path)


def test_the_diffusers_layout_gives_diffusers_numbers(diffusers_file):
  vae = load_wan_vae(diffusers_file, SMALL_WAN)
  (mean, logvar), _ = vae.encode(jnp.asarray(reference_video()))
  decoded, _ = vae.decode(mean)
  assert mean.shape == (1, 3, 3, 2, 4) and decoded.shape == (1, 9, 24, 16, 3)
  np.testing.assert_allclose(mean[0, :, 0, 0], DIFFUSERS_MEAN, atol=3e-6)
  np.testing.assert_allclose(logvar[0, :, 1, 1], DIFFUSERS_LOGVAR, atol=3e-6)
  np.testing.assert_allclose(decoded[0, :, 5, 7], DIFFUSERS_DECODED, atol=5e-6)
  for name, value in (("mean", mean), ("logvar", logvar), ("decoded", decoded)):
    assert float(jnp.abs(value).sum()) == pytest.approx(DIFFUSERS_ABS_SUMS[name], rel=2e-6)
  # The files hold no latent statistics: the config's (none here: zero mean, unit std).
  np.testing.assert_array_equal(vae.normalize(mean), mean)


def test_the_original_layout_loads_the_same_weights(diffusers_file, tmp_path):
  path = tmp_path / "Wan2.1_VAE.pth"
  write_state_dict(path, random_wan_state(SMALL_WAN, "original"))
  original = nnx.to_flat_state(nnx.state(load_wan_vae(str(path), SMALL_WAN), nnx.Param))
  diffusers = dict(nnx.to_flat_state(nnx.state(load_wan_vae(diffusers_file, SMALL_WAN),
                                               nnx.Param)))
  assert len(original) == len(diffusers) == 194
  for name, param in original:
    np.testing.assert_array_equal(param[...], diffusers[name][...])


def test_weights_of_another_shape_are_refused_with_each_misfit(diffusers_file, tmp_path):
  with pytest.raises(ValueError, match=r"(?s)does not fit.*decoder.conv_in.weight is "
                                       r"\(32, 4, 3, 3, 3\), the model needs \(64, 4, 3, 3, 3\)"
                                       r".*168 more"):
    load_wan_vae(diffusers_file, SMALL_WAN.replace(base_channels=16))
  state = random_wan_state(SMALL_WAN, "diffusers")
  del state["decoder.conv_out.bias"]
  state["encoder.extra.weight"] = np.zeros(2, np.float32)
  path = tmp_path / "broken.safetensors"
  save_file(state, str(path))
  with pytest.raises(ValueError, match=r"(?s)missing decoder.conv_out.bias.*unexpected "
                                       r"encoder.extra.weight"):
    load_wan_vae(str(path), SMALL_WAN)
  with pytest.raises(ValueError, match=r"\.safetensors .* or \.pth"):
    (tmp_path / "vae.bin").write_bytes(b"")
    load_wan_vae(str(tmp_path / "vae.bin"), SMALL_WAN)


def test_a_latent_dit_can_pin_its_own_statistics_on_wan_weights(diffusers_file, monkeypatch):
  import weights.wan_vae  # noqa: PLC0415
  from rundir.open_vae import open_vae  # noqa: PLC0415
  monkeypatch.setattr(weights.wan_vae, "load_wan_vae", lambda path: load_wan_vae(path, SMALL_WAN))
  mean, std = (0.5, -1.0, 0.0, 2.0), (2.0, 0.5, 1.0, 4.0)
  pinned = open_vae(diffusers_file, statistics=(mean, std))
  np.testing.assert_array_equal(pinned.latents_mean[...], np.float32(mean))
  np.testing.assert_array_equal(pinned.latents_std[...], np.float32(std))
  own = open_vae(diffusers_file)  # the config's (here none: zero mean, unit std)
  np.testing.assert_array_equal(own.latents_std[...], np.ones(4, np.float32))
  with pytest.raises(ValueError, match="latent statistics of 2 and 2 channels .* of 4"):
    open_vae(diffusers_file, statistics=((0.0, 0.0), (1.0, 1.0)))
