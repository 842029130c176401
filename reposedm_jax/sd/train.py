"""RePoseSD's jobs (paper §4.4, Table 3): `mode=sd_train` (the fine-tune, eq. 17), `sd_sample` (DDIM with text
CFG and PIF's pose guidance) and `sd_eval` (HumanSD's metrics on the samples).

Everything of a run lives in its workdir: checkpoints/ (U-Net params + AdamW state + step; the frozen text tower,
VAE and guide are read from their dirs), tb/, metrics.jsonl; samples in sd_samples/<tag>/ (tag 'guided' when
pif.sample_scale > 0, else 'plain'), metrics in sd_eval/<tag>.json. A batch is a function of (seed, step), so a
resumed run is exact; a non-finite state is never saved; SIGTERM saves and stops.
"""

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from reposedm_jax import checkpoint, logs, pif, pose_estimator, visualize
from reposedm_jax import sharding as sharding_lib
from reposedm_jax.convert import inception as inception_convert
from reposedm_jax.diffusion import samplers
from reposedm_jax.diffusion import schedule as schedule_lib
from reposedm_jax.metrics import fid, inception
from reposedm_jax.models import hrnet
from reposedm_jax.sd import data, detector_train, loop
from reposedm_jax.sd import metrics as sd_metrics
from reposedm_jax.sd import model

SAMPLES_DIR, EVAL_DIR = 'sd_samples', 'sd_eval'


def _data_kw(config) -> dict:
  s = config.sd
  return dict(size=s.image_size, max_persons=s.max_persons, threshold=s.keypoint_threshold)


def make_optimizer(scfg) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(scfg.grad_clip), optax.adamw(scfg.lr, weight_decay=scfg.weight_decay))


def drop_text(tokens: np.ndarray, empty: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
  """Classifier-free guidance training: a prompt replaced by the empty prompt with probability p."""
  drop = rng.random(len(tokens)) < p
  return np.where(drop[:, None], empty[None], tokens)


def _encode(parts, frozen, images, pose_images, tokens):
  return {'latent': parts.encode(frozen, images), 'pose_latent': parts.encode(frozen, pose_images),
          'context': parts.text_context(frozen, tokens)}


def train_step(state, frozen, images, pose_images, tokens, keypoints, *, parts, config, sched, tx):
  enc = jax.lax.stop_gradient(_encode(parts, frozen, images, pose_images, tokens))
  batch = {**enc, 'keypoints': keypoints}
  rng = jax.random.fold_in(jax.random.key(config.seed), state['step'])
  (loss, m), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      state['params'], frozen, batch, rng, parts=parts, config=config, sched=sched)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}, {**m, 'loss': loss}


def run_train(config, workdir: str) -> dict:
  s = config.sd
  checkpoint.lock_workdir(workdir)
  parts = model.build(config)
  records = data.read_mapping(s.train_root, s.train_mapping)
  sched = model.sd_schedule(s.num_timesteps)
  tx = make_optimizer(s)
  params = model.init_unet_params(config, parts)
  n_params = hrnet.count_params(params)
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  del params  # the sharded copy below is the state; at SD-2.1 size this host copy alone is 3.5 GB
  # Data parallel over config.mesh, or FSDP over config.fsdp_axis (the frozen parts replicated), as train.py.
  mesh = sharding_lib.make_mesh(config.mesh)
  shards = sharding_lib.state_shardings(jax.eval_shape(lambda: state), mesh, config.fsdp_axis,
                                        config.train.fsdp_min_size)
  state = sharding_lib.put_global(state, shards)
  rep = sharding_lib.replicated(mesh)
  frozen = sharding_lib.put_global(parts.frozen, jax.tree.map(lambda _: rep, parts.frozen))
  manager = checkpoint.make_manager(workdir, s.keep_checkpoints)
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state))
  state = restored if restored is not None else state
  step_fn = jax.jit(functools.partial(train_step, parts=parts, config=config, sched=sched, tx=tx),
                    out_shardings=(shards, rep), donate_argnums=0)
  empty = parts.tokenizer.tokenize([''])[0]
  logs.log_line(f'RePoseSD: {len(records)} training examples, U-Net {n_params:,} params, '
                f'pif.train_mode={config.pif.train_mode}, prediction={s.prediction}')

  def inputs_at(step):
    b = data.batch_at(records, step, s.batch_size, seed=config.seed, hflip=s.hflip, **_data_kw(config))
    tokens = drop_text(parts.tokenizer.tokenize(b['prompt']), empty, np.random.default_rng([config.seed, step, 1]),
                       s.text_drop)
    g = _global_batch({'image': b['image'], 'pose_image': b['pose_image'], 'tokens': tokens,
                       'keypoints': b['keypoints']}, mesh)
    return frozen, g['image'], g['pose_image'], g['tokens'], g['keypoints']

  _, _, m, _ = loop.run(state, manager, total=s.num_steps, log_every=s.log_every, ckpt_every=s.ckpt_every,
                        step_fn=step_fn, inputs_at=inputs_at, writer=logs.MetricWriter(workdir))
  return m


def _global_batch(host: dict, mesh) -> dict:
  """Every process builds the whole batch (a function of (seed, step)) and feeds its own rows."""
  n, i = jax.process_count(), jax.process_index()
  return sharding_lib.global_batch({k: v[i * len(v) // n:(i + 1) * len(v) // n] for k, v in host.items()}, mesh)


# ----------------------------------------------------------------------------- sampling

def sample_tag(config) -> str:
  return config.sd.sample_tag or ('guided' if config.pif.sample_scale > 0 else 'plain')


def load_params(config, parts, workdir: str):
  s = config.sd
  cfg = parts.unet.cfg
  params = jax.eval_shape(parts.unet.init, jax.random.key(0), jnp.zeros((1, 8, 8, cfg.in_channels)), jnp.zeros((1,)),
                          jnp.zeros((1, 2, cfg.cross_attention_dim)))['params']
  tx = make_optimizer(s)
  abstract = {'params': params, 'opt_state': jax.eval_shape(tx.init, params), 'step': jax.ShapeDtypeStruct((), jnp.int32)}
  manager = checkpoint.make_manager(workdir, s.keep_checkpoints)
  state = checkpoint.restore_latest(manager, abstract, weights_only=True)
  manager.close()
  if state is None:
    raise FileNotFoundError(f'no RePoseSD checkpoint in {workdir}/checkpoints: run --config.mode=sd_train first')
  return state['params'], int(state['step'])


def make_sampler(config, parts, sched):
  """(params, frozen, pose_latent, ctx_c, ctx_u, keypoints, x_T) -> latents, jitted."""
  s, pcfg = config.sd, config.pif
  ddim_sched = schedule_lib.respace(sched, schedule_lib.ddim_timesteps(sched.num_timesteps, s.sample_steps))
  acp = jnp.asarray(sched.alphas_cumprod, jnp.float32)

  def run(params, frozen, pose_latent, ctx_c, ctx_u, keypoints, x_T):
    def model_fn(x, t):
      a = acp[t][:, None, None, None]
      xx = jnp.concatenate([jnp.concatenate([x, pose_latent], -1)] * 2, 0)  # HumanSD: the pose is never dropped
      out = parts.unet.apply({'params': params}, xx, jnp.concatenate([t, t]), jnp.concatenate([ctx_c, ctx_u]))
      e_c, e_u = jnp.split(model.to_eps(s.prediction, out, jnp.concatenate([x, x]), jnp.concatenate([a, a])), 2)
      eps = samplers.cfg_combine(e_c, e_u, s.guidance_scale)
      return jnp.concatenate([eps, jnp.zeros_like(eps)], -1)

    correction = None
    if pcfg.sample_scale > 0:
      image_hw = tuple(d * parts.vae.cfg.downsample for d in x_T.shape[1:3])
      ref = model.reference_multi(keypoints, image_hw, parts.heads)
      correction = pif.sampling_correction(pcfg, parts.heat_fn(frozen), parts.heads, ddim_sched, None,
                                           s.guidance_scale, image_hw=image_hw, clip=False, ref=ref)
    return samplers.ddim_sample(model_fn, ddim_sched, x_T, s.sample_steps, eps_correction_fn=correction,
                                clip_output=False)

  return jax.jit(run)


def run_sample(config, workdir: str) -> str:
  s = config.sd
  parts = model.build(config)
  params, step = load_params(config, parts, workdir)
  records = data.read_mapping(s.eval_root, s.eval_mapping)[:s.num_eval or None]
  sched = model.sd_schedule(s.num_timesteps)
  sampler = make_sampler(config, parts, sched)
  # What the generator sees: the pose latent and the prompt (never the validation image itself).
  condition = jax.jit(lambda fr, pose, tokens: (parts.encode(fr, pose), parts.text_context(fr, tokens)))
  decode = jax.jit(parts.decode)
  tag = sample_tag(config)
  out_dir = os.path.join(workdir, SAMPLES_DIR, tag)
  os.makedirs(out_dir, exist_ok=True)
  ctx_neg = jax.jit(parts.text_context)(parts.frozen, parts.tokenizer.tokenize([s.negative_prompt]))
  f = parts.vae.cfg.downsample
  grids, t_start, n_done = [], time.time(), 0
  for i, (recs, b) in enumerate(data.eval_batches(records, s.eval_batch_size, **_data_kw(config))):
    names = [os.path.join(out_dir, _file_key(r.key) + '.png') for r in recs]
    if all(os.path.isfile(n) for n in names):  # resumable: finished batches are skipped
      continue
    n = len(recs)
    pose_latent, ctx = condition(parts.frozen, b['pose_image'], parts.tokenizer.tokenize(b['prompt']))
    x_T = jax.random.normal(jax.random.fold_in(jax.random.key(s.sample_seed), i),
                            (n, s.image_size // f, s.image_size // f, parts.vae.cfg.latent_channels))
    z = sampler(params, parts.frozen, pose_latent, ctx, jnp.repeat(ctx_neg, n, 0), b['keypoints'], x_T)
    images = visualize.to_uint8(np.asarray(decode(parts.frozen, z)))
    for name, img in zip(names, images):
      Image.fromarray(img).save(name)
    n_done += n
    rate = n_done / max(time.time() - t_start, 1e-9)
    logs.log_line(f'sd_sample {tag}: {n_done} images | {rate:.3f} images/s | ETA '
                  f'{logs.format_seconds((len(records) - n_done) / max(rate, 1e-9))}')
    if len(grids) < 2:
      grids.append(visualize.tile_columns([visualize.to_uint8(b['pose_image']), images, visualize.to_uint8(b['image'])],
                                          titles=['pose', 'generated', 'real']))
  if grids:
    visualize.save_png(os.path.join(workdir, SAMPLES_DIR, f'grid_{tag}.png'), grids[0])
  with open(os.path.join(out_dir, 'sample.json'), 'w') as fh:
    json.dump({'step': step, 'tag': tag, 'ddim_steps': s.sample_steps, 'guidance_scale': s.guidance_scale,
               'pif_sample_scale': config.pif.sample_scale, 'seed': s.sample_seed, 'images': len(records)}, fh)
  logging.info('Samples in %s', out_dir)
  return out_dir


def _file_key(key: str) -> str:
  return key.replace('/', '__')


# ----------------------------------------------------------------------------- evaluation

def run_eval(config, workdir: str) -> dict:
  """HumanSD's metrics on sd_samples/<tag>/: AP, AP(m), CAP, PCE with the detector (config.sd.detector_dir, else
  the guide) and FID against the validation images (TF-FID Inception, when its weights are installed)."""
  s = config.sd
  tag = sample_tag(config)
  sample_dir = os.path.join(workdir, SAMPLES_DIR, tag)
  records = data.read_mapping(s.eval_root, s.eval_mapping)[:s.num_eval or None]
  parts = model.build(config)
  det_vars, det_module = parts.frozen['guide'], parts.guide
  if s.detector_dir:
    det_vars, det_module = pose_estimator.load_pose_estimator(config, s.detector_dir, use_pose_checkpoint=False)
  apply = jax.jit(lambda v, x: det_module.apply(v, x, train=False))
  gt, dets, real_dets, gen_u8, real_u8 = [], [], [], [], []
  for recs, b in data.eval_batches(records, s.eval_batch_size, **_data_kw(config)):
    paths = [os.path.join(sample_dir, _file_key(r.key) + '.png') for r in recs]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f'{missing[0]}: no sample (run --config.mode=sd_sample with the same settings first)')
    gen = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    real = visualize.to_uint8(b['image'])
    dets += detector_train.detect_all(apply, det_vars, gen, s)
    real_dets += detector_train.detect_all(apply, det_vars, real, s)  # the detector's ceiling, same settings
    gt += list(b['keypoints'])
    gen_u8.append(gen)
    real_u8.append(real)
  hw = (s.image_size, s.image_size)
  result = sd_metrics.pose_metrics(gt, dets, hw, replicate_y_bug=s.cap_replicate_y_bug)
  result['real_images'] = sd_metrics.pose_metrics(gt, real_dets, hw, replicate_y_bug=s.cap_replicate_y_bug)
  if s.fid:
    result.update(_fid(np.concatenate(gen_u8), np.concatenate(real_u8)))
  result.update({'images': len(records), 'tag': tag, 'detector': s.detector_dir or 'the guide (config.pose)'})
  os.makedirs(os.path.join(workdir, EVAL_DIR), exist_ok=True)
  with open(os.path.join(workdir, EVAL_DIR, f'{tag}.json'), 'w') as fh:
    json.dump(result, fh, indent=1)
  logs.log_line('RePoseSD ' + tag + ': ' + ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                                   for k, v in result.items() if k != 'real_images'))
  return result


def _fid(gen_u8: np.ndarray, real_u8: np.ndarray) -> dict:
  try:
    extractor = inception.FeatureExtractor(inception_convert.load_inception_params(), batch_size=16)
  except FileNotFoundError as e:
    return {'FID': None, 'fid_note': str(e)}
  value = fid.fid_from_features(extractor(gen_u8), extractor(real_u8))
  note = 'TF-FID Inception pool3 (2048-d), whole set' + (
      f'; only {len(gen_u8)} images: far too few for a stable FID' if len(gen_u8) < 2048 else '')
  return {'FID': float(value), 'fid_note': note}
