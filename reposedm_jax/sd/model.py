"""RePoseSD's parts and their math: the SD 2.x U-Net with the pose-latent input, the frozen text tower, VAE and
HigherHRNet guide; the noise schedule, ε / v parameterisations, the multi-person PIF reference and the loss.

The U-Net reads concat(noisy latent, pose latent) (4 + 4 channels, HumanSD's `c_concat`: the VAE latent of the
rendered pose image) and cross-attends to the penultimate text-tower states. Prediction by config
(`sd.prediction`): 'epsilon' (SD-2.1-base, HumanSD's base) or 'v_prediction' (SD-2.1-768). Schedule: SD's
"scaled linear" betas (sqrt-linear from 0.00085 to 0.012, squared; ldm's 'linear'), 1000 steps.

PIF (paper eq. 10-11, 15, 17) runs on x̂0 decoded through the frozen VAE, read by the guide, against a
multi-person reference: each person's Gaussian targets at the guide's strides, the pixel-wise max over people
(HigherHRNet's own multi-person target), aggregated as its output is. The modes are `config.pif.train_mode`'s.
"""

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax import checkpoint, pif, pose_estimator
from reposedm_jax.convert import sd as sd_convert
from reposedm_jax.convert import sd_text as sd_text_convert
from reposedm_jax.diffusion import schedule as schedule_lib
from reposedm_jax.models import hrnet
from reposedm_jax.models.autoencoder import AutoencoderKL, vae_config_for
from reposedm_jax.sd import tokenizer as tokenizer_lib
from reposedm_jax.sd.text import TextConfig, TextEncoder
from reposedm_jax.sd.unet import UNet2DConditionModel, UNetConfig

PREDICTIONS = ('epsilon', 'v_prediction')
TEXT_PRESETS = {'vit_h14': TextConfig(), 'tiny': TextConfig(width=32, layers=3, heads=4)}
POSE_CHANNELS = 4  # the pose latent


# ----------------------------------------------------------------------------- schedule and parameterisation

def sd_schedule(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
  """SD's scaled-linear schedule (ldm 'linear'): betas = linspace(sqrt(b0), sqrt(b1), T)^2 in float64."""
  betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), num_timesteps, dtype=np.float64) ** 2
  return schedule_lib.from_betas(betas)


def target(prediction: str, x0, noise, acp):
  """The regression target: ε, or v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0."""
  if prediction == 'epsilon':
    return noise
  return jnp.sqrt(acp) * noise - jnp.sqrt(1.0 - acp) * x0


def to_eps(prediction: str, out, x_t, acp):
  """The network output as ε: v -> sqrt(ᾱ) v + sqrt(1-ᾱ) x_t."""
  if prediction == 'epsilon':
    return out
  return jnp.sqrt(acp) * out + jnp.sqrt(1.0 - acp) * x_t


def from_eps(prediction: str, eps, x_t, acp):
  """Inverse of to_eps at the same x_t: v = (ε - sqrt(1-ᾱ) x_t) / sqrt(ᾱ)."""
  if prediction == 'epsilon':
    return eps
  return (eps - jnp.sqrt(1.0 - acp) * x_t) / jnp.sqrt(acp)


def x0_from_eps(x_t, eps, acp):
  return (x_t - jnp.sqrt(1.0 - acp) * eps) / jnp.sqrt(acp)


# ----------------------------------------------------------------------------- the multi-person reference

def person_targets(kpts: jax.Array, image_hw, stride: int, sigma: float) -> jax.Array:
  """[B, P, 17, 3] -> one head's targets [B, ceil(H/s), ceil(W/s), 17]: each person's Gaussians
  (pif.render_heatmaps, the trainer's rendering), the max over people."""
  b, p = kpts.shape[:2]
  hw = (-(-image_hw[0] // stride), -(-image_hw[1] // stride))
  xy = jnp.where(kpts[..., 2:] > 0, kpts[..., :2], -1.0).reshape(b * p, kpts.shape[2], 2)
  m = pif.render_heatmaps(xy, (hw[0] * stride, hw[1] * stride), hw, sigma)
  return jnp.max(m.reshape(b, p, *m.shape[1:]), axis=1)


def reference_multi(kpts: jax.Array, image_hw, heads) -> jax.Array:
  """[B, P, 17, 3] COCO keypoints (score > 0 = present) -> the guide's ideal output [B, h, w, 17].

  Per head: each person's Gaussians rendered as the estimator's trainer renders them (pif.render_heatmaps), the
  max over people; two heads are aggregated as HigherHRNet's output is (hrnet.aggregate_heatmaps).
  """
  maps = [person_targets(kpts, image_hw, stride, sigma) for stride, sigma in heads]
  if len(maps) == 1:
    return maps[0]
  return hrnet.aggregate_heatmaps({'heatmaps_s4': maps[0], 'heatmaps_s2': maps[1]})


# ----------------------------------------------------------------------------- parts

@dataclasses.dataclass
class Parts:
  """The modules and the frozen variables; `unet` params are the trained state's, not held here."""
  unet: UNet2DConditionModel
  text: TextEncoder
  vae: AutoencoderKL
  guide: Any  # HigherHRNet module
  frozen: dict  # {'text': {'params'}, 'vae': {'params'}, 'guide': {'params', 'batch_stats'}}
  heads: tuple
  tokenizer: tokenizer_lib.Tokenizer

  def text_context(self, frozen, tokens):
    return self.text.apply(frozen['text'], tokens)

  def encode(self, frozen, images):
    return self.vae.apply(frozen['vae'], images, method=AutoencoderKL.to_latent)

  def decode(self, frozen, z):
    return self.vae.apply(frozen['vae'], z, method=AutoencoderKL.from_latent)

  def heat_fn(self, frozen):
    """The guide on latents: decode (eq. 10's D), clip to the image range, HigherHRNet's aggregated output."""
    def heat(z):
      out = self.guide.apply(frozen['guide'], jnp.clip(self.decode(frozen, z), -1.0, 1.0), train=False)
      return {'heatmaps': hrnet.aggregate_heatmaps(out), 'features': out['features']}
    return heat


def unet_config(scfg, in_channels: int | None = None) -> UNetConfig:
  base = sd_convert.PRESETS[scfg.unet_preset]
  meta = _read_meta(scfg.unet_dir, sd_convert.META_FILE)
  if meta:
    base = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()
                         if k in {f.name for f in dataclasses.fields(UNetConfig)}})
  return dataclasses.replace(base, in_channels=in_channels or base.in_channels, dtype=scfg.dtype, remat=scfg.remat)


def text_config(scfg) -> TextConfig:
  if scfg.text_dir and not os.path.isfile(os.path.join(scfg.text_dir, sd_text_convert.META_FILE)):
    logging.info('%s has no %s (an older conversion): sd.text_preset=%r', scfg.text_dir,
                 sd_text_convert.META_FILE, scfg.text_preset)
    return TEXT_PRESETS[scfg.text_preset]
  meta = _read_meta(scfg.text_dir, sd_text_convert.META_FILE)
  if meta:
    return TextConfig(**{k: v for k, v in meta.items() if k in {f.name for f in dataclasses.fields(TextConfig)}})
  return TEXT_PRESETS[scfg.text_preset]


def _read_meta(directory: str, name: str) -> Optional[dict]:
  if not directory:
    return None
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: missing (a directory written by `python -m reposedm_jax.convert ...`)')
  with open(path) as f:
    return json.load(f)


def _random(what: str, init, seed: int):
  """Random variables of `init`'s structure, drawn per leaf in numpy: lecun-normal kernels / embeddings, zero biases
  and means, unit scales and variances. The modules' own initialisers would compile one init program per part
  (10-25 s each for the tiny VAE and HigherHRNet on 2 CPU cores); smoke runs and tests need only the structure."""
  logging.warning('RePoseSD: RANDOMLY INITIALISED %s (no weights dir given): for tests and smoke runs only.', what)
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name in ('bias', 'mean'):
      return jnp.zeros(a.shape, a.dtype)
    if name in ('scale', 'var') or a.ndim == 0:
      return jnp.ones(a.shape, a.dtype)
    fan_in = int(np.prod(a.shape[:-1])) if a.ndim > 1 else a.shape[0]
    if name == 'embedding' or (a.ndim == 2 and 'position' in name):
      fan_in = a.shape[-1]
    return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), a.shape), a.dtype)

  return jax.tree_util.tree_map_with_path(leaf, jax.eval_shape(init, jax.random.key(seed)))


def build(config) -> Parts:
  """Modules and frozen variables of config.sd (weights from the converted dirs, else random with a warning)."""
  scfg = config.sd
  tcfg = text_config(scfg)
  text = TextEncoder(tcfg)
  tokens = jnp.zeros((1, tcfg.context_length), jnp.int32)
  if scfg.text_dir:
    abstract = jax.eval_shape(lambda: text.init(jax.random.key(0), tokens)['params'])
    text_vars = {'params': checkpoint.load_params(os.path.join(scfg.text_dir, 'params'), abstract)}
  else:
    text_vars = _random('text tower', lambda r: text.init(r, tokens), config.seed + 11)
  vae = AutoencoderKL(vae_config_for(config.latent))
  f = vae.cfg.downsample
  if config.latent.vae_dir:
    x = jnp.zeros((1, 8 * f, 8 * f, 3))
    abstract = jax.eval_shape(lambda: vae.init(jax.random.key(0), x)['params'])
    vae_vars = {'params': checkpoint.load_params(os.path.join(config.latent.vae_dir, 'params'), abstract)}
  else:
    vae_vars = _random('VAE', lambda r: vae.init(r, jnp.zeros((1, 8 * f, 8 * f, 3))), config.seed + 7919)
  guide = hrnet.build_hrnet(config.pose)
  if config.pose.checkpoint:
    guide_vars, guide = pose_estimator.load_pose_estimator(config, config.pose.checkpoint)
  else:
    guide_vars = _random('HigherHRNet guide / detector', lambda r: hrnet.init_variables(guide, r), config.seed + 13)
  heads = ((4, float(config.pose.sigma_s4)), (2, float(config.pose.sigma)))
  tok = tokenizer_lib.Tokenizer(scfg.vocab, context_length=tcfg.context_length)
  return Parts(UNet2DConditionModel(unet_config(scfg, unet_in_channels(scfg))), text, vae, guide,
               {'text': text_vars, 'vae': vae_vars, 'guide': guide_vars}, heads, tok)


def unet_in_channels(scfg) -> int:
  return sd_convert.PRESETS[scfg.unet_preset].in_channels + POSE_CHANNELS


def init_unet_params(config, parts: Parts):
  """The trainable U-Net: SD's converted weights with conv_in widened by zero pose-latent weights (HumanSD's
  `keep_finetune_dims`; a conversion already made with --extra_in_channels 4 is read as is), else random."""
  scfg = config.sd
  cfg = parts.unet.cfg
  x = jnp.zeros((1, 8, 8, cfg.in_channels))
  t, c = jnp.zeros((1,)), jnp.zeros((1, 2, cfg.cross_attention_dim))
  if not scfg.unet_dir:
    return _random('SD U-Net', lambda r: parts.unet.init(r, x, t, c)['params'], config.seed)
  stored_in = _read_meta(scfg.unet_dir, sd_convert.META_FILE).get('in_channels', cfg.in_channels)
  stored = UNet2DConditionModel(dataclasses.replace(cfg, in_channels=stored_in))
  abstract = jax.eval_shape(lambda: stored.init(jax.random.key(0), jnp.zeros((1, 8, 8, stored_in)), t, c)['params'])
  params = checkpoint.load_params(os.path.join(scfg.unet_dir, 'params'), abstract)
  extra = cfg.in_channels - stored_in
  if extra < 0:
    raise ValueError(f'{scfg.unet_dir}: conv_in has {stored_in} inputs, more than the {cfg.in_channels} RePoseSD uses')
  if extra:
    k = params['conv_in']['kernel']
    params['conv_in']['kernel'] = jnp.concatenate([k, jnp.zeros(k.shape[:2] + (extra,) + k.shape[3:], k.dtype)], 2)
  return params


# ----------------------------------------------------------------------------- the loss (eq. 17)

def loss_fn(params, frozen, batch, rng, *, parts: Parts, config, sched):
  """Eq. 17: ‖target − pred‖² with PIF by `pif.train_mode` ('off' = HumanSD's loss; 'literal' = eq. 15's ε̃ inside
  the loss; 'penalty' = λ·G(x̂0) with its gradient into θ). batch: 'latent', 'pose_latent' [B, h, w, 4],
  'context' [B, L, D], 'keypoints' [B, P, 17, 3] at the image size. Returns (loss, metrics)."""
  scfg, pcfg = config.sd, config.pif
  z0 = batch['latent']
  b = z0.shape[0]
  k_t, k_n = jax.random.split(rng)
  t = jax.random.randint(k_t, (b,), 0, sched.num_timesteps)
  noise = jax.random.normal(k_n, z0.shape, z0.dtype)
  acp = jnp.asarray(sched.alphas_cumprod, jnp.float32)[t][:, None, None, None]
  x_t = jnp.sqrt(acp) * z0 + jnp.sqrt(1.0 - acp) * noise
  out = parts.unet.apply({'params': params}, jnp.concatenate([x_t, batch['pose_latent']], -1), t, batch['context'])
  tgt = target(scfg.prediction, z0, noise, acp)
  metrics, extra = {}, jnp.float32(0.0)
  if pcfg.train_mode != 'off':
    n = pif._guided_rows(pcfg, b)  # noqa: SLF001 -- the same row budget as the pixel model
    eps = to_eps(scfg.prediction, out[:n], x_t[:n], acp[:n])
    active = (t[:n] <= pcfg.train_t_max).astype(jnp.float32)[:, None, None, None]
    image_hw = tuple(d * parts.vae.cfg.downsample for d in z0.shape[1:3])
    ref = reference_multi(batch['keypoints'][:n], image_hw, parts.heads)
    heat = parts.heat_fn(frozen)
    g_kw = dict(threshold=pcfg.threshold, reference='heatmaps', target_support=pcfg.target_support,
                normalize=pcfg.normalize)
    p_tilde = x0_from_eps(x_t[:n], eps, acp[:n])
    if pcfg.train_mode == 'penalty':
      g = pif.g_phi(heat(p_tilde), ref, **g_kw)
      extra = pcfg.penalty_weight * jnp.sum(active[:, 0, 0, 0] * g) / b
    else:
      g, grad = pif.guidance_gradient(heat, jax.lax.stop_gradient(p_tilde), ref, **g_kw)
      grad = jax.lax.stop_gradient(pif.low_pass(grad, pcfg.grad_blur * grad.shape[1]))
      eps_t = pif.correct_eps(eps, grad * active, acp[:n], pcfg.train_scale)
      out = jnp.concatenate([from_eps(scfg.prediction, eps_t, x_t[:n], acp[:n]), out[n:]], 0)
      metrics['pif_grad_rms'] = jnp.sqrt(jnp.mean(jnp.square(grad)))
    metrics['pif_g'] = jnp.mean(jax.lax.stop_gradient(g))
  mse = jnp.mean(jnp.square(out.astype(jnp.float32) - tgt))
  metrics['mse'] = mse
  return mse + extra, metrics
