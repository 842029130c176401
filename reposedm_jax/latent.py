"""Latent mode (`model.space='latent'`, paper §3.1 and eq. 9-10): the frozen VAE between the data and the model.

The diffusion model, RPA and the samplers are space-agnostic: they see [B, h, w, C] arrays. In latent mode
`model_batch` turns a pixel batch into what they see:
  tgt_img, src_img  ->  scaling_factor * E(image)            [B, H/f, W/f, latent_channels]
  tgt_pose          ->  the pose map at latent resolution     (latent.pose: 'resize' or 'encode')
  src_kpts, tgt_kpts->  keypoints in latent pixels            (B2's keypoint pre-warp, RPA's aux-loss region)
so RPA warps and re-encodes the source latent (eq. 9: F_S = Encoder(I_S)), and PIF reads the estimator on the
decoded x̂0 (eq. 10) through `pixel_heat_fn`, the gradient flowing back through the decoder to the latent.
The VAE's variables travel in the train state as state['vae'] (frozen, checkpointed like PIF's estimator), so a
workdir samples with the VAE it was trained with.
"""

import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax import checkpoint
from reposedm_jax.models.autoencoder import AutoencoderKL, VAEConfig, vae_config_for

SPACES = ('pixel', 'latent')
POSE_MODES = ('resize', 'encode')


def vae_key(step_rng):
  """The key of a step's posterior draws (latent.sample_posterior): fold_in, apart from the step's other splits,
  so pixel mode's draws are unchanged by latent mode existing."""
  return jax.random.fold_in(step_rng, 7)


def enabled(config) -> bool:
  return config.model.space == 'latent'


# ----------------------------------------------------------------------------- the VAE

def vae_config(config) -> VAEConfig:
  """The architecture of config.latent's VAE: from <vae_dir>/vae.json, else the random preset."""
  return vae_config_for(config.latent)


def vae_module(config) -> AutoencoderKL:
  return AutoencoderKL(vae_config(config))


def load_vae_variables(config) -> Optional[Any]:
  """{'params': ...} of the frozen VAE (latent mode), else None."""
  if not enabled(config):
    return None
  module = vae_module(config)
  cfg = module.cfg
  x = jnp.zeros((1, 8 * cfg.downsample, 8 * cfg.downsample, cfg.in_channels))
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), x)['params'])
  if config.latent.vae_dir:
    return {'params': checkpoint.load_params(os.path.join(config.latent.vae_dir, 'params'), abstract)}
  logging.warning('Latent mode with a RANDOMLY INITIALISED %r VAE (latent.random_preset): for tests and smoke '
                  'runs only; pass latent.vae_dir for real training.', config.latent.random_preset)
  return {'params': jax.jit(lambda r: module.init(r, x)['params'])(jax.random.key(config.seed + 7919))}


# ----------------------------------------------------------------------------- pixel batch -> model batch

def scale_kpts(kpts: jax.Array, factor: int) -> jax.Array:
  """Keypoints (x, y) in pixels (centre convention) -> latent pixels; -1 (missing) stays -1."""
  present = (kpts[..., :1] != -1) & (kpts[..., 1:] != -1)
  scaled = (kpts + 0.5) / factor - 0.5
  return jnp.where(present, scaled, -1.0)


def pose_rgb(pose_bhwc: jax.Array) -> jax.Array:
  """A fixed RGB rendering of a K-channel pose map in [-1, 1] (one hue per channel), for latent.pose='encode'."""
  k = pose_bhwc.shape[-1]
  hues = np.arange(k) / k
  colours = np.stack([np.abs(((hues * 6 + o) % 6) - 3) - 1 for o in (0, 4, 2)], axis=-1).clip(0, 1)
  rgb = jnp.einsum('bhwk,kc->bhwc', jnp.clip(pose_bhwc, 0, 1), jnp.asarray(colours, pose_bhwc.dtype))
  return 2.0 * jnp.clip(rgb, 0.0, 1.0) - 1.0


def downsample_mask(mask_bhw1: jax.Array, factor: int) -> jax.Array:
  """A region mask at latent resolution: a latent pixel is in the region when any of its pixels is."""
  b, h, w, c = mask_bhw1.shape
  return mask_bhw1.reshape(b, h // factor, factor, w // factor, factor, c).max(axis=(2, 4))


def _at_least_f32(x):
  """The VAE runs in float32 (a bfloat16 model's latents are promoted; float64 stays, for gradient checks)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class Space:
  """Pixel <-> model space for one config; every method is jit-able and takes the VAE variables explicitly."""

  def __init__(self, config):
    self.latent = enabled(config)
    self.pose_mode = config.latent.pose
    self.sample_posterior = bool(config.latent.sample_posterior)
    self.module = vae_module(config) if self.latent else None
    self.factor = self.module.cfg.downsample if self.latent else 1

  def encode(self, vae_vars, images, rng=None):
    if not self.latent:
      return images
    return self.module.apply(vae_vars, _at_least_f32(images), rng, method=AutoencoderKL.to_latent)

  def decode(self, vae_vars, z):
    """Model space -> images in [-1, 1] (clipped: what an estimator or a PNG reads)."""
    if not self.latent:
      return z
    return jnp.clip(self.module.apply(vae_vars, _at_least_f32(z), method=AutoencoderKL.from_latent), -1.0, 1.0)

  def pose(self, vae_vars, pose_bhwc):
    if not self.latent:
      return pose_bhwc
    if self.pose_mode == 'encode':
      return self.encode(vae_vars, pose_rgb(pose_bhwc))
    b, h, w, k = pose_bhwc.shape
    # Antialiased (area-like) resampling keeps a joint's sub-latent-pixel position in the ratio of neighbours.
    return jax.image.resize(pose_bhwc, (b, h // self.factor, w // self.factor, k), 'linear', antialias=True)

  def kpts(self, kpts):
    return kpts if not self.latent else scale_kpts(kpts, self.factor)

  def model_batch(self, vae_vars, batch: dict, rng=None) -> dict:
    """The batch the model sees; `rng` draws posterior samples of the target when latent.sample_posterior."""
    if not self.latent:
      return batch
    out = dict(batch)
    for key in ('src_img', 'tgt_img'):
      if key in batch:
        draw = rng if (key == 'tgt_img' and self.sample_posterior) else None
        out[key] = self.encode(vae_vars, batch[key], draw)
    if 'tgt_pose' in batch:
      out['tgt_pose'] = self.pose(vae_vars, batch['tgt_pose'])
    for key in ('src_kpts', 'tgt_kpts'):
      if key in batch:
        out[key] = self.kpts(batch[key])
    return out

  def pixel_heat_fn(self, heat_fn, vae_vars):
    """PIF's estimator on model-space x̂0: decoded first in latent mode (eq. 10), gradient through the decoder."""
    if not self.latent:
      return heat_fn
    return lambda z: heat_fn(self.decode(vae_vars, z))
