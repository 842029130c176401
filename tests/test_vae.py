"""AutoencoderKL (issue 18): parity with diffusers' PyTorch model on random weights, and the converter's three
layouts (current diffusers, old diffusers, original ldm) at the exact key names and shapes of SD's kl-f8 VAE."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reposedm_jax.convert import vae as vae_convert
from reposedm_jax.models import autoencoder

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch_vae(cfg, seed=0):
  torch.manual_seed(seed)
  n = len(cfg.block_out_channels)
  model = diffusers.AutoencoderKL(block_out_channels=tuple(cfg.block_out_channels),
                                  down_block_types=('DownEncoderBlock2D',) * n, up_block_types=('UpDecoderBlock2D',) * n,
                                  layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_groups,
                                  latent_channels=cfg.latent_channels)
  with torch.no_grad():  # non-trivial norms and biases (diffusers initialises them to 1 / 0)
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def test_encode_and_decode_match_diffusers():
  cfg = autoencoder.TINY
  tm = _torch_vae(cfg)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  params = vae_convert.convert_state_dict(sd, cfg)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 32, 24, 3)).astype(np.float32)
  z = rng.normal(size=(2, 8, 6, cfg.latent_channels)).astype(np.float32)
  with torch.no_grad():
    post = tm.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    t_mean, t_logvar = post.mean.numpy().transpose(0, 2, 3, 1), post.logvar.numpy().transpose(0, 2, 3, 1)
    t_dec = tm.decode(torch.from_numpy(z.transpose(0, 3, 1, 2))).sample.numpy().transpose(0, 2, 3, 1)
  model = autoencoder.AutoencoderKL(cfg)
  mean, logvar = jax.jit(lambda p, x: model.apply({'params': p}, x, method=model.encode))(params, x)
  dec = jax.jit(lambda p, z: model.apply({'params': p}, z, method=model.decode))(params, z)
  scale = np.abs(t_dec).max()
  np.testing.assert_allclose(np.asarray(mean), t_mean, atol=1e-4 * max(1, np.abs(t_mean).max()))
  np.testing.assert_allclose(np.asarray(logvar), t_logvar, atol=1e-4 * max(1, np.abs(t_logvar).max()))
  np.testing.assert_allclose(np.asarray(dec), t_dec, atol=1e-4 * max(1, scale))
  # The scaled latent and back: what the diffusion model sees.
  lat = model.apply({'params': params}, x, method=model.to_latent)
  np.testing.assert_allclose(np.asarray(lat), cfg.scaling_factor * t_mean, atol=1e-4)


def _sd_kl_f8_state_dict():
  """The exact key names and shapes of SD's kl-f8 VAE (diffusers' default AutoencoderKL), random values."""
  model = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                                  down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
                                  layers_per_block=2, latent_channels=4, norm_num_groups=32)
  rng = np.random.default_rng(1)
  return {k: rng.standard_normal(tuple(v.shape)).astype(np.float32) for k, v in model.state_dict().items()}


def _to_ldm(sd, levels=4, prefix='first_stage_model.'):
  """diffusers -> the original ldm names, written out from ldm's module layout (not the converter's inverse)."""
  flip = lambda m: levels - 1 - int(m.group(1))
  out = {}
  for k, v in sd.items():
    k2 = re.sub(r'^encoder\.down_blocks\.(\d)\.resnets\.(\d)', r'encoder.down.\1.block.\2', k)
    k2 = re.sub(r'^encoder\.down_blocks\.(\d)\.downsamplers\.0\.conv', r'encoder.down.\1.downsample.conv', k2)
    k2 = re.sub(r'^decoder\.up_blocks\.(\d)\.resnets\.(\d)', lambda m: f'decoder.up.{flip(m)}.block.{m.group(2)}', k2)
    k2 = re.sub(r'^decoder\.up_blocks\.(\d)\.upsamplers\.0\.conv', lambda m: f'decoder.up.{flip(m)}.upsample.conv', k2)
    k2 = re.sub(r'mid_block\.resnets\.(\d)', lambda m: f'mid.block_{int(m.group(1)) + 1}', k2)
    k2 = k2.replace('mid_block.attentions.0.group_norm', 'mid.attn_1.norm')
    for a, b in (('to_q', 'q'), ('to_k', 'k'), ('to_v', 'v'), ('to_out.0', 'proj_out')):
      k2 = k2.replace(f'mid_block.attentions.0.{a}.', f'mid.attn_1.{b}.')
    k2 = k2.replace('conv_shortcut', 'nin_shortcut').replace('conv_norm_out', 'norm_out')
    if '.attn_1.' in k2 and v.ndim == 2:
      v = v[:, :, None, None]
    out[prefix + k2] = v
  return out


def test_the_three_layouts_convert_to_the_same_parameters():
  sd = _sd_kl_f8_state_dict()
  ldm = _to_ldm(sd)
  for key in ('first_stage_model.encoder.down.0.block.0.norm1.weight', 'first_stage_model.decoder.up.3.block.2.conv2.weight',
              'first_stage_model.decoder.up.1.upsample.conv.weight', 'first_stage_model.encoder.mid.attn_1.q.weight',
              'first_stage_model.encoder.down.1.block.0.nin_shortcut.weight', 'first_stage_model.quant_conv.weight'):
    assert key in ldm, key  # ldm's own names (CompVis' Encoder / Decoder modules)
  ldm['model.diffusion_model.input_blocks.0.0.weight'] = np.zeros((1,), np.float32)  # an SD .ckpt holds more
  old = {re.sub(r'attentions\.0\.to_(q|k|v)\.', lambda m: f'attentions.0.{dict(q="query", k="key", v="value")[m.group(1)]}.',
                k).replace('attentions.0.to_out.0.', 'attentions.0.proj_attn.'): v for k, v in sd.items()}
  cfg = autoencoder.VAEConfig()
  ref = vae_convert.convert_state_dict(sd, cfg)
  for other in (ldm, old):
    jax.tree.map(np.testing.assert_array_equal, vae_convert.convert_state_dict(other, cfg), ref)
  assert ref['decoder']['up_blocks_0']['resnets_0']['conv1']['kernel'].shape == (3, 3, 512, 512)


def test_a_missing_or_misshaped_key_is_listed():
  sd = _sd_kl_f8_state_dict()
  bad = dict(sd)
  del bad['encoder.conv_in.bias']
  bad['decoder.conv_out.weight'] = np.zeros((3, 64, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"1 missing \['encoder/conv_in/bias.*1 mis-shaped \['decoder.conv_out.weight"):
    vae_convert.convert_state_dict(bad, autoencoder.VAEConfig())


def test_the_cli_reads_safetensors_without_torch_and_a_torch_file(tmp_path):
  from safetensors.numpy import save_file
  cfg = autoencoder.TINY
  sd = {k: v.numpy() for k, v in _torch_vae(cfg).state_dict().items()}
  st = str(tmp_path / 'vae.safetensors')
  save_file(sd, st)
  pt = str(tmp_path / 'vae.ckpt')
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in _to_ldm(sd, levels=2).items()}}, pt)
  for src in (st, pt):
    dst = str(tmp_path / os.path.basename(src).replace('.', '_'))
    r = subprocess.run([sys.executable, '-m', 'reposedm_jax.convert', 'vae', f'--src={src}', f'--dst={dst}',
                        '--preset=tiny'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isfile(os.path.join(dst, 'vae.json'))
  r = subprocess.run([sys.executable, '-m', 'reposedm_jax.convert', 'vae', f'--src={st}', f'--dst={tmp_path / "x"}'],
                     cwd=REPO, capture_output=True, text=True, timeout=300)  # preset sd: the tiny file does not fit
  assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith('Cannot convert: VAE state dict')


def test_decoding_is_differentiable_for_pif(tmp_path):
  """PIF decodes x0 through the VAE (eq. 10) and needs the gradient back to the latent: against finite differences."""
  cfg = autoencoder.TINY
  model = autoencoder.AutoencoderKL(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  z = jax.random.normal(jax.random.key(1), (1, 4, 4, cfg.latent_channels))
  f = lambda z: jnp.sum(jnp.sin(model.apply({'params': params}, z, method=model.from_latent)))
  g = jax.grad(f)(z)
  d = jax.random.normal(jax.random.key(2), z.shape)
  eps = 1e-2
  fd = (f(z + eps * d) - f(z - eps * d)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=2e-2)
