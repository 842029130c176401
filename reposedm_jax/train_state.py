"""Optimizers, learning-rate schedules and train states: what a run trains and what its checkpoints hold.

Shared by the diffusion trainer (train.py), the sampler (sample.py: a checkpoint's shapes), the pose
estimator's trainer (pose_train.py) and the benchmarks in tools/. States are plain pytrees:
diffusion {params, opt_state, ema_params, step[, guide]}, pose estimator {params, batch_stats, opt_state, step}.
"""

import jax
import jax.numpy as jnp
import optax

from reposedm_jax import rpa_training
from reposedm_jax.models import factory, hrnet


# ----------------------------------------------------------------------------- diffusion model

def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with PIDM's linear warm-up (from lr * warmup_init_frac) then a flat lr, and global-norm clipping.

  Runs with RPA pre-training (rpa.pretrain_steps > 0) optimise RPA and the rest apart (rpa_training.py).
  """
  tcfg = config.train
  lr = optax.join_schedules(
      [optax.linear_schedule(tcfg.lr * tcfg.warmup_init_frac, tcfg.lr, max(tcfg.warmup_steps, 1)),
       optax.constant_schedule(tcfg.lr)], [tcfg.warmup_steps])
  parts = [optax.clip_by_global_norm(tcfg.grad_clip)] if tcfg.grad_clip > 0 else []
  parts.append(optax.adamw(lr, b1=tcfg.b1, b2=tcfg.b2, weight_decay=tcfg.weight_decay))
  return rpa_training.phased_optimizer(optax.chain(*parts), config)


def learning_rate(tcfg, step):
  """The warm-up schedule of `make_optimizer` as a value (logged with the metrics)."""
  frac = jnp.clip(step / max(tcfg.warmup_steps, 1), 0.0, 1.0)
  return tcfg.lr * (tcfg.warmup_init_frac + (1 - tcfg.warmup_init_frac) * frac)


def init_state(model, tx, config, rng):
  params = factory.init_params(model, config, rng)
  # The EMA must own its buffers: the step donates the state, and aliased leaves cannot be donated twice.
  return {'params': params, 'opt_state': tx.init(params), 'ema_params': jax.tree.map(jnp.copy, params),
          'step': jnp.zeros((), jnp.int32)}


def abstract_state(model, tx, config, rng, guide_vars=None, vae_vars=None):
  """Shapes/dtypes of the train state (what checkpoints hold); variant full adds the frozen 'guide' (PIF's
  estimator), latent mode the frozen 'vae'."""
  abstract = jax.eval_shape(lambda r: init_state(model, tx, config, r), rng)
  for key, frozen in (('guide', guide_vars), ('vae', vae_vars)):
    if frozen is not None:
      abstract = {**abstract, key: jax.eval_shape(lambda f=frozen: f)}
  return abstract


# ----------------------------------------------------------------------------- pose estimator (mode=train_pose)

def make_pose_optimizer(pcfg) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay to lr * final_lr_frac, and global-norm clipping (config.pose)."""
  lr = optax.warmup_cosine_decay_schedule(0.0, pcfg.lr, max(pcfg.warmup_steps, 1),
                                          max(pcfg.num_steps, pcfg.warmup_steps + 1), pcfg.lr * pcfg.final_lr_frac)
  parts = [optax.clip_by_global_norm(pcfg.grad_clip)] if pcfg.grad_clip > 0 else []
  parts.append(optax.adamw(lr, weight_decay=pcfg.weight_decay))
  return optax.chain(*parts)


def init_pose_state(module, tx, rng):
  variables = hrnet.init_variables(module, rng)
  return {'params': variables['params'], 'batch_stats': variables['batch_stats'],
          'opt_state': tx.init(variables['params']), 'step': jnp.zeros((), jnp.int32)}
