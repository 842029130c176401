"""Builds the network for `config.variant` and initialises its parameters."""

import jax
import jax.numpy as jnp

from reposedm_jax.models.autoencoder import vae_config_for
from reposedm_jax.models.b2 import B2Model
from reposedm_jax.models.rpa import RPA
from reposedm_jax.models.unet import PIDMUNet

VARIANTS = ('b1', 'b2', 'full')


def build_model(config):
  """B1 = PIDM's U-Net with its source encoder; B2 = B1 + RPA; 'full' = B2's network + PIF guidance.

  PIF adds no trainable parameters: it changes the loss (train.py) and the sampler (sample.py).
  """
  if config.variant == 'b1':
    return PIDMUNet.from_config(config.model)
  if config.variant in ('b2', 'full'):
    return B2Model(unet=PIDMUNet.from_config(config.model), rpa=RPA.from_config(config.rpa),
                   aligned_path=str(config.rpa.aligned_path), unet_grad=bool(config.rpa.unet_grad),
                   init_flow=str(config.rpa.init_flow), init_flow_sigma=float(config.rpa.init_flow_sigma),
                   init_flow_background=float(config.rpa.init_flow_background))
  raise ValueError(f'config.variant={config.variant!r}: this build provides {VARIANTS}')


def dummy_inputs(config, batch: int = 1):
  """Zero inputs of the model's shapes: images, or latent mode's latents (1/f of the image, f the VAE's)."""
  h, w = config.data.height, config.data.width
  m = config.model
  if m.space == 'latent':
    f = vae_config_for(config.latent).downsample
    h, w = h // f, w // f
  return (jnp.zeros((batch, h, w, m.image_channels)), jnp.zeros((batch,), jnp.int32),
          jnp.zeros((batch, h, w, m.pose_channels)), jnp.zeros((batch, h, w, m.image_channels)))


def dummy_kpts(batch: int = 1):
  """(src_kpts, tgt_kpts), every joint missing: B2's keypoint pre-warp is then the identity."""
  missing = jnp.full((batch, 18, 2), -1.0)
  return missing, missing


def init_params(model, config, rng):
  return model.init({'params': rng}, *dummy_inputs(config), train=False, kpts=dummy_kpts())['params']
