"""A bottom-up multi-person HigherHRNet trained on RePoseSD's text-image-pose data (`mode=sd_train_detector`).

For the tiny CPU runs on synthetic data, where HumanSD's COCO / Human-Art W48 weights are not available: the guide
(seed s, `config.pose.checkpoint`) and an independent metrics detector (another seed, `sd.detector_dir`) come
from the same recipe. Losses are HigherHRNet's: per head, the MSE to the multi-person Gaussian targets (max over
people, sigma `pose.sigma` / `pose.sigma_s4` at strides 2 / 4); on the stride-4 tags, associative embedding
(pull: each person's tags to their mean; push: exp(-(h_n - h_m)^2) between people), weight `tag_weight`
(HigherHRNet's 1e-3). The checkpoint layout is `mode=train_pose`'s, so `pose_estimator.load_pose_estimator`
reads it; `pose_eval.json` holds the detector's AP on the held-out real images (sd.eval_root).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reposedm_jax import checkpoint, logs
from reposedm_jax.models import hrnet
from reposedm_jax.sd import data, detect, loop, model
from reposedm_jax.sd import metrics as sd_metrics

EVAL_FILE = 'pose_eval.json'


def ae_loss(tags: jax.Array, kpts: jax.Array, stride: int = 4) -> jax.Array:
  """Associative embedding on tags [B, h, w, 17] at the people's joints kpts [B, P, 17, 3] -> scalar."""
  h, w = tags.shape[1:3]
  vis = (kpts[..., 2] > 0).astype(jnp.float32)  # [B, P, 17]
  ys = jnp.clip(jnp.round((kpts[..., 1] + 0.5) / stride - 0.5), 0, h - 1).astype(jnp.int32)
  xs = jnp.clip(jnp.round((kpts[..., 0] + 0.5) / stride - 0.5), 0, w - 1).astype(jnp.int32)
  joint = jnp.arange(kpts.shape[2])[None, None]
  t = jax.vmap(lambda tg, y, x: tg[y, x, jnp.broadcast_to(joint[0], y.shape)])(tags, ys, xs)  # [B, P, 17]
  n_vis = jnp.sum(vis, -1)
  mean = jnp.sum(t * vis, -1) / jnp.maximum(n_vis, 1.0)
  valid = (n_vis > 0).astype(jnp.float32)  # [B, P]
  pull = jnp.sum(vis * jnp.square(t - mean[..., None]), (1, 2)) / jnp.maximum(jnp.sum(vis, (1, 2)), 1.0)
  pairs = valid[:, :, None] * valid[:, None, :] * (1.0 - jnp.eye(valid.shape[1]))[None]
  push = jnp.sum(pairs * jnp.exp(-jnp.square(mean[:, :, None] - mean[:, None, :])), (1, 2))
  push = push / jnp.maximum(jnp.sum(pairs, (1, 2)), 1.0)
  return jnp.mean(pull + push)


def train_step(state, images, kpts, *, module, tx, pcfg, tag_weight):
  hw = images.shape[1:3]

  def loss_fn(params):
    out, upd = module.apply({'params': params, 'batch_stats': state['batch_stats']}, images, train=True,
                            mutable=['batch_stats'])
    l2 = jnp.mean(jnp.square(out['heatmaps_s2'] - model.person_targets(kpts, hw, 2, pcfg.sigma)))
    l4 = jnp.mean(jnp.square(out['heatmaps_s4'] - model.person_targets(kpts, hw, 4, pcfg.sigma_s4)))
    tag = ae_loss(out['tags_s4'], kpts)
    return l2 + l4 + tag_weight * tag, (upd['batch_stats'], {'heat_s2': l2, 'heat_s4': l4, 'tag': tag})

  (loss, (stats, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  return ({'params': optax.apply_updates(state['params'], updates), 'batch_stats': stats, 'opt_state': opt_state,
           'step': state['step'] + 1}, {**m, 'loss': loss})


def detect_all(apply, variables, images_u8: np.ndarray, scfg) -> list:
  out = apply(variables, images_u8.astype(np.float32) / 127.5 - 1.0)
  heat, tags = np.asarray(hrnet.aggregate_heatmaps(out)), np.asarray(out['tags_s4'])
  size = (images_u8.shape[1], images_u8.shape[2])
  return [detect.pose_nms(detect.group(heat[j], tags[j], size, detection_threshold=scfg.detection_threshold,
                                       tag_threshold=scfg.tag_threshold, nms_kernel=scfg.nms_kernel),
                          scfg.pose_nms_threshold)[:20]
          for j in range(len(images_u8))]


def run_train_detector(config, workdir: str) -> dict:
  s, pcfg = config.sd, config.pose
  checkpoint.lock_workdir(workdir, 'detector training')
  module = hrnet.build_hrnet(pcfg)
  records = data.read_mapping(s.train_root, s.train_mapping)
  kw = dict(size=s.image_size, max_persons=s.max_persons, threshold=s.keypoint_threshold)
  variables = hrnet.init_variables(module, jax.random.key(config.seed), (s.image_size, s.image_size))
  warmup = min(pcfg.warmup_steps, pcfg.num_steps - 1)  # optax needs the decay to outlast the warm-up
  sched = optax.warmup_cosine_decay_schedule(pcfg.lr * 0.1, pcfg.lr, warmup, pcfg.num_steps,
                                             pcfg.lr * pcfg.final_lr_frac)
  tx = optax.chain(optax.clip_by_global_norm(pcfg.grad_clip), optax.adamw(sched, weight_decay=pcfg.weight_decay))
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt_state': tx.init(variables['params']), 'step': jnp.zeros((), jnp.int32)}
  manager = checkpoint.make_manager(workdir, pcfg.keep_checkpoints)
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state))
  state = restored if restored is not None else state
  step_fn = jax.jit(functools.partial(train_step, module=module, tx=tx, pcfg=pcfg, tag_weight=s.detector_tag_weight),
                    donate_argnums=0)

  def inputs_at(step):
    b = data.batch_at(records, step, pcfg.batch_size, seed=config.seed, hflip=0.5, **kw)
    return b['image'], b['keypoints']

  state, step, _, stopped = loop.run(state, manager, total=pcfg.num_steps, log_every=pcfg.log_every,
                                     ckpt_every=pcfg.ckpt_every, step_fn=step_fn, inputs_at=inputs_at)
  if stopped:
    return {}
  result = evaluate_detector(config, {'params': state['params'], 'batch_stats': state['batch_stats']}, module)
  with open(os.path.join(workdir, EVAL_FILE), 'w') as f:
    json.dump({**result, 'step': step, 'arch': pcfg.arch, 'seed': config.seed}, f, indent=1)
  logs.log_line('detector on held-out real images: ' + ', '.join(f'{k} {v:.4g}' for k, v in result.items()))
  return result


def evaluate_detector(config, variables, module) -> dict:
  """AP / AP(m) / CAP / PCE of the detector on the real validation images (its ceiling on generated ones)."""
  s = config.sd
  records = data.read_mapping(s.eval_root, s.eval_mapping)[:s.num_eval or None]
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
  gt, dets = [], []
  for _, b in data.eval_batches(records, s.eval_batch_size, size=s.image_size, max_persons=s.max_persons,
                                threshold=s.keypoint_threshold):
    dets += detect_all(apply, variables, np.round((b['image'] + 1.0) * 127.5).astype(np.uint8), s)
    gt += list(b['keypoints'])
  return sd_metrics.pose_metrics(gt, dets, (s.image_size, s.image_size))
