"""AutoencoderKL in Flax: Stable Diffusion's kl-f8 VAE (the paper's latent space, §3.1, eq. 9-10).

Layout and parameter names follow diffusers' `AutoencoderKL` (numbered parts joined with '_', as the PIDM
converter does: `encoder.down_blocks.0.resnets.1.conv1.weight` -> encoder/down_blocks_0/resnets_1/conv1/kernel),
so `convert/vae.py` maps a checkpoint by renaming and re-laying out only. Channel-last (NHWC) throughout.
  Encoder: conv_in -> per level `layers_per_block` ResNets (+ a stride-2 conv, padded (0, 1, 0, 1), except the last
    level) -> mid (ResNet, single-head attention, ResNet) -> GroupNorm, SiLU, conv_out (2 x latent channels).
  Decoder: conv_in -> mid -> per level (reversed) `layers_per_block + 1` ResNets (+ nearest x2 and a conv, except
    the last) -> GroupNorm, SiLU, conv_out (3).
  quant_conv / post_quant_conv: 1x1 convs around the latent; the posterior is N(mean, exp(logvar)), logvar clamped
  to [-30, 20]. Latents fed to the diffusion model are scaled by `scaling_factor` (SD: 0.18215).
GroupNorm eps 1e-6 everywhere (diffusers' VAE); the attention softmax and all norms run in float32.
"""

import dataclasses
import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  block_out_channels: Sequence[int] = (128, 256, 512, 512)  # SD kl-f8
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_groups: int = 32
  in_channels: int = 3
  scaling_factor: float = 0.18215

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


TINY = VAEConfig(block_out_channels=(32, 64), layers_per_block=1, norm_groups=8)
PRESETS = {'sd': VAEConfig(), 'tiny': TINY}
META_FILE = 'vae.json'  # the architecture, next to a converted VAE's params/ (convert/vae.py writes it)


def vae_config_for(lcfg) -> VAEConfig:
  """The architecture config.latent names: <vae_dir>/vae.json, else `random_preset` (tests, smoke runs)."""
  if lcfg.vae_dir:
    meta_path = os.path.join(lcfg.vae_dir, META_FILE)
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f'latent.vae_dir={lcfg.vae_dir!r} has no {META_FILE}: convert the VAE with '
                              '`python -m reposedm_jax.convert vae --src FILE --dst DIR`')
    with open(meta_path) as f:
      meta = json.load(f)
    return VAEConfig(block_out_channels=tuple(meta['block_out_channels']), layers_per_block=meta['layers_per_block'],
                     latent_channels=meta['latent_channels'], norm_groups=meta['norm_groups'],
                     scaling_factor=meta['scaling_factor'])
  if lcfg.random_preset in PRESETS:
    return PRESETS[lcfg.random_preset]
  raise ValueError("model.space='latent' needs --config.latent.vae_dir=DIR (a `convert vae` output) or, for tests, "
                   f"latent.random_preset in {tuple(PRESETS)}")


class ResnetBlock(nn.Module):
  out: int
  groups: int

  @nn.compact
  def __call__(self, x):
    h = nn.GroupNorm(self.groups, epsilon=EPS, name='norm1')(x)
    h = nn.Conv(self.out, (3, 3), padding=1, name='conv1')(nn.silu(h))
    h = nn.GroupNorm(self.groups, epsilon=EPS, name='norm2')(h)
    h = nn.Conv(self.out, (3, 3), padding=1, name='conv2')(nn.silu(h))
    if x.shape[-1] != self.out:
      x = nn.Conv(self.out, (1, 1), name='conv_shortcut')(x)
    return x + h


class Attention(nn.Module):
  """diffusers' VAE mid-block attention: one head over all H*W positions, residual."""
  groups: int

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    t = nn.GroupNorm(self.groups, epsilon=EPS, name='group_norm')(x).reshape(b, h * w, c)
    q = nn.Dense(c, name='to_q')(t)
    k = nn.Dense(c, name='to_k')(t)
    v = nn.Dense(c, name='to_v')(t)
    acc = jnp.promote_types(q.dtype, jnp.float32)  # float32 softmax for bfloat16 / float32 (float64 stays)
    logits = jnp.einsum('bqc,bkc->bqk', q, k).astype(acc) / jnp.sqrt(jnp.asarray(c, acc))
    out = jnp.einsum('bqk,bkc->bqc', jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    return x + nn.Dense(c, name='to_out_0')(out).reshape(b, h, w, c)


class MidBlock(nn.Module):
  channels: int
  groups: int

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(self.channels, self.groups, name='resnets_0')(x)
    x = Attention(self.groups, name='attentions_0')(x)
    return ResnetBlock(self.channels, self.groups, name='resnets_1')(x)


class Downsample(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # diffusers' padding=0: pad right and bottom by one
    return nn.Conv(self.channels, (3, 3), strides=2, padding='VALID', name='conv')(x)


class Upsample(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
    return nn.Conv(self.channels, (3, 3), padding=1, name='conv')(x)


class LevelBlock(nn.Module):
  """diffusers' DownEncoderBlock2D (`resample='down'`: ResNets, then the stride-2 conv) and UpDecoderBlock2D
  ('up': ResNets, then nearest x2 and a conv); '' at the last level, which keeps its resolution."""
  out: int
  layers: int
  groups: int
  resample: str

  @nn.compact
  def __call__(self, x):
    for j in range(self.layers):
      x = ResnetBlock(self.out, self.groups, name=f'resnets_{j}')(x)
    if self.resample == 'down':
      return Downsample(self.out, name='downsamplers_0')(x)
    if self.resample == 'up':
      return Upsample(self.out, name='upsamplers_0')(x)
    return x


class Encoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    n = len(c.block_out_channels)
    h = nn.Conv(c.block_out_channels[0], (3, 3), padding=1, name='conv_in')(x)
    for i, ch in enumerate(c.block_out_channels):
      h = LevelBlock(ch, c.layers_per_block, c.norm_groups, 'down' if i < n - 1 else '', name=f'down_blocks_{i}')(h)
    h = MidBlock(c.block_out_channels[-1], c.norm_groups, name='mid_block')(h)
    h = nn.GroupNorm(c.norm_groups, epsilon=EPS, name='conv_norm_out')(h)
    return nn.Conv(2 * c.latent_channels, (3, 3), padding=1, name='conv_out')(nn.silu(h))


class Decoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, z):
    c = self.cfg
    chans = list(reversed(c.block_out_channels))
    h = nn.Conv(chans[0], (3, 3), padding=1, name='conv_in')(z)
    h = MidBlock(chans[0], c.norm_groups, name='mid_block')(h)
    for i, ch in enumerate(chans):
      h = LevelBlock(ch, c.layers_per_block + 1, c.norm_groups, 'up' if i < len(chans) - 1 else '',
                     name=f'up_blocks_{i}')(h)
    h = nn.GroupNorm(c.norm_groups, epsilon=EPS, name='conv_norm_out')(h)
    return nn.Conv(c.in_channels, (3, 3), padding=1, name='conv_out')(nn.silu(h))


class AutoencoderKL(nn.Module):
  """`encode(x) -> (mean, logvar)` of the latent posterior, `decode(z) -> image`; images in [-1, 1], NHWC.

  The diffusion model sees `scaling_factor * z` (`to_latent` / `from_latent`)."""
  cfg: VAEConfig = VAEConfig()

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)
    self.quant_conv = nn.Conv(2 * self.cfg.latent_channels, (1, 1))
    self.post_quant_conv = nn.Conv(self.cfg.latent_channels, (1, 1))

  def encode(self, x):
    moments = self.quant_conv(self.encoder(x))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x):
    return self.decode(self.encode(x)[0])

  def to_latent(self, x, rng=None):
    """Scaled latent of images: the posterior mean, or a sample of it with `rng`."""
    mean, logvar = self.encode(x)
    if rng is not None:
      mean = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.cfg.scaling_factor * mean

  def from_latent(self, z):
    return self.decode(z / self.cfg.scaling_factor)
