"""A small AutoencoderKL trained on RePoseSD's images (`mode=sd_train_vae`), for the tiny CPU runs where SD's own VAE
(convert vae) is too large: with a random VAE the decoded samples are not images and every pose metric reads 0.

Loss: L1 reconstruction of the posterior sample + `sd.vae_kl_weight` x KL to N(0, I) (SD's recipe without its
LPIPS and patch-GAN terms). At the end the scaling factor is set as SD's was chosen, 1 / std of the latents on
training images, and the workdir is written in the converter's layout (params/ + vae.json), so
`--config.latent.vae_dir=<workdir>` reads it. `vae_eval.json`: reconstruction PSNR on the validation images.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reposedm_jax import checkpoint, logs
from reposedm_jax.convert import vae as vae_convert
from reposedm_jax.models.autoencoder import AutoencoderKL, PRESETS
from reposedm_jax.sd import data, loop

EVAL_FILE = 'vae_eval.json'


def train_step(state, images, rng, *, module, tx, kl_weight):
  def loss_fn(params):
    mean, logvar = module.apply({'params': params}, images, method=AutoencoderKL.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    rec = module.apply({'params': params}, z, method=AutoencoderKL.decode)
    l1 = jnp.mean(jnp.abs(rec - images))
    kl = 0.5 * jnp.mean(jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1))
    return l1 + kl_weight * kl, {'l1': l1, 'kl': kl}

  (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  return {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state,
          'step': state['step'] + 1}, {**m, 'loss': loss}


def run_train_vae(config, workdir: str) -> dict:
  s = config.sd
  checkpoint.lock_workdir(workdir, 'VAE training')
  cfg = PRESETS[config.latent.random_preset or 'tiny']
  module = AutoencoderKL(cfg)
  records = data.read_mapping(s.train_root, s.train_mapping)
  kw = dict(size=s.image_size, max_persons=s.max_persons, threshold=s.keypoint_threshold)
  x = jnp.zeros((1, s.image_size, s.image_size, 3))
  params = jax.jit(module.init)(jax.random.key(config.seed), x)['params']
  tx = optax.adam(s.vae_lr)
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  manager = checkpoint.make_manager(workdir, 2)
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state))
  state = restored if restored is not None else state
  step_fn = jax.jit(functools.partial(train_step, module=module, tx=tx, kl_weight=s.vae_kl_weight), donate_argnums=0)

  def inputs_at(step):
    b = data.batch_at(records, step, s.batch_size, seed=config.seed, hflip=0.5, **kw)
    return b['image'], jax.random.fold_in(jax.random.key(config.seed + 1), step)

  state, step, _, stopped = loop.run(state, manager, total=s.vae_steps, log_every=s.log_every,
                                     ckpt_every=s.ckpt_every, step_fn=step_fn, inputs_at=inputs_at)
  if stopped:
    return {}
  encode = jax.jit(lambda p, im: module.apply({'params': p}, im, method=AutoencoderKL.encode)[0])
  lat = np.concatenate([np.asarray(encode(state['params'], data.batch_at(records, 10_000 + i, 16, seed=config.seed,
                                                                          hflip=0.0, **kw)['image'])) for i in range(4)])
  cfg = dataclasses.replace(cfg, scaling_factor=float(1.0 / lat.std()))
  vae_convert.save_vae(state['params'], workdir, cfg, source=workdir)
  result = evaluate_vae(config, AutoencoderKL(cfg), state['params'])
  with open(os.path.join(workdir, EVAL_FILE), 'w') as f:
    json.dump({**result, 'step': step, 'scaling_factor': cfg.scaling_factor}, f, indent=1)
  logs.log_line(f'VAE: validation PSNR {result["psnr"]:.2f} dB, scaling factor {cfg.scaling_factor:.4f}')
  return result


def evaluate_vae(config, module, params) -> dict:
  s = config.sd
  records = data.read_mapping(s.eval_root, s.eval_mapping)[:s.num_eval or None]
  rec = jax.jit(lambda p, im: module.apply({'params': p}, im))
  mse = []
  for _, b in data.eval_batches(records, s.eval_batch_size, size=s.image_size, max_persons=s.max_persons,
                                threshold=s.keypoint_threshold):
    out = np.clip(np.asarray(rec(params, b['image'])), -1, 1)
    mse += list(np.mean(np.square((out - b['image']) / 2.0), axis=(1, 2, 3)))
  return {'psnr': float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))}
