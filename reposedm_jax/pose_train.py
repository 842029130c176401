"""`config.mode=train_pose`: trains the Flax HigherHRNet on a dataset's own keypoints; loads estimators.

Where the official COCO weights are not available (the synthetic benchmark, these machines), PIF
guidance uses an estimator trained here. Each training step takes batch_size / 2 pairs from the
project's input pipeline (PIDM's scale + crop and flip augmentation; flipped keypoints are relabelled
left/right by the pipeline), uses both images of every pair, maps OpenPose-18 to COCO-17 and regresses
Gaussian heatmaps at strides 4 and 2 (sigma `pose.sigma_s4` / `pose.sigma` in heatmap pixels, centre
convention of models/hrnet.py). Missing joints (-1) are masked out of the loss. The associative-embedding
tag maps are not trained: the data holds one person per image, so there is nothing to group.

Everything lives in <workdir>/pose/: orbax checkpoints (state + data iterator, auto-resume),
TensorBoard + metrics.jsonl, the final `variables` (same layout as a converted official checkpoint,
see convert/hrnet.py) and `pose_eval.json` (held-out PCK and mean error on the test split's images).
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reposedm_jax import checkpoint, logs, pif, sharding, train_state
from reposedm_jax.convert import hrnet as hrnet_convert
from reposedm_jax.data import dataset, pipeline
from reposedm_jax.data.keypoints import openpose_to_coco
from reposedm_jax.metrics.pose_accuracy import pose_accuracy
from reposedm_jax.models import hrnet


# ----------------------------------------------------------------------------- batches, targets, loss

def pose_batch(host_batch: dict) -> dict:
  """Pipeline batch of P pairs -> {'images' [2P, H, W, 3] in [-1, 1], 'kpts' [2P, 17, 2] COCO, -1 missing}."""
  images = np.concatenate([host_batch['src_img'], host_batch['tgt_img']])
  kpts = openpose_to_coco(np.concatenate([host_batch['src_kpts'], host_batch['tgt_kpts']]))
  return {'images': images, 'kpts': np.ascontiguousarray(kpts, np.float32)}


def heatmap_loss(pred: jax.Array, kpts: jax.Array, stride: int, sigma: float) -> jax.Array:
  """Masked MSE between predicted heatmaps [B, h, w, K] and Gaussian targets of kpts [B, K, 2].

  Targets use the stride exactly (image size taken as (h s, w s)), so padding-induced rounding of
  odd sizes cannot shift them. Joints with a -1 coordinate do not contribute.
  """
  _, h, w, _ = pred.shape
  target = pif.render_heatmaps(kpts, (h * stride, w * stride), (h, w), sigma)
  present = ((kpts[..., 0] != -1) & (kpts[..., 1] != -1)).astype(jnp.float32)  # [B, K]
  err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=(1, 2))  # [B, K]
  return jnp.sum(err * present) / jnp.maximum(jnp.sum(present), 1.0)


# ----------------------------------------------------------------------------- the step

def train_step(state, batch, *, module, tx, pcfg):
  """One AdamW step on {'images', 'kpts'}; BatchNorm in training mode (batch statistics over the global batch)."""

  def loss_fn(params):
    out, mutated = module.apply({'params': params, 'batch_stats': state['batch_stats']}, batch['images'],
                                train=True, mutable=['batch_stats'])
    l2 = heatmap_loss(out['heatmaps_s2'], batch['kpts'], 2, pcfg.sigma)
    l4 = heatmap_loss(out['heatmaps_s4'], batch['kpts'], 4, pcfg.sigma_s4)
    return l2 + l4, (mutated['batch_stats'], {'loss_s2': l2, 'loss_s4': l4})

  (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  metrics = {'loss': loss, **terms, 'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params)}
  return {'params': params, 'batch_stats': batch_stats, 'opt_state': opt_state, 'step': state['step'] + 1}, metrics


# ----------------------------------------------------------------------------- prediction and held-out accuracy

def make_predict_fn(module):
  """jit'ed (variables, images [B, H, W, 3]) -> (xy [B, 17, 2] image pixels, score [B, 17]), frozen BatchNorm."""

  @jax.jit
  def predict(variables, images):
    out = module.apply(variables, images, train=False)
    return hrnet.decode_keypoints(hrnet.aggregate_heatmaps(out), images.shape[1:3])

  return predict


def heldout_batches(data_cfg, split, batch_size: int, limit: int = -1):
  """Distinct images of `split` at model resolution, unaugmented, in batches padded to `batch_size`.

  Yields (images [batch, H, W, 3] in [-1, 1], kpts [batch, 17, 2] COCO, n_valid).
  """
  keys = split.image_keys()
  keys = keys if limit < 0 else keys[:limit]
  hw = (data_cfg.height, data_cfg.width)
  for start in range(0, len(keys), batch_size):
    views = [pipeline.load_view(split, k, hw, None, 0.0) for k in keys[start:start + batch_size]]
    n = len(views)
    views += [views[-1]] * (batch_size - n)
    images = np.stack([v[0] for v in views]).astype(np.float32) / 127.5 - 1.0
    yield images, openpose_to_coco(np.stack([v[1] for v in views])), n


def evaluate_estimator(predict, variables, data_cfg, split, pcfg) -> dict:
  """Held-out PCK@{0.05, 0.1, 0.2}, mean error (px at model resolution) and miss rate (metrics/pose_accuracy)."""
  preds, scores, targets = [], [], []
  for images, kpts, n in heldout_batches(data_cfg, split, pcfg.eval_batch_size, pcfg.eval_images):
    xy, score = jax.device_get(predict(variables, images))
    preds.append(xy[:n])
    scores.append(score[:n])
    targets.append(kpts[:n])
  pred, score, tgt = np.concatenate(preds), np.concatenate(scores), np.concatenate(targets)
  out = pose_accuracy(pred, tgt, pred_valid=score > pcfg.score_threshold)
  out['images'] = int(len(pred))
  return out


# ----------------------------------------------------------------------------- the loop

def _pose_data_config(data_cfg):
  """config.data with both_directions off: the estimator sees each image once per pair, not twice."""
  cfg = data_cfg.copy_and_resolve_references()
  cfg.both_directions = False
  return cfg


def train_pose(config, workdir: str) -> dict:
  """Trains the estimator in <workdir>/pose (resuming), evaluates it, returns the held-out metrics."""
  pcfg = config.pose
  pose_dir = os.path.join(workdir, 'pose')
  checkpoint.lock_workdir(pose_dir, 'pose training')
  # --- Mesh & input pipeline
  mesh = sharding.make_mesh(config.mesh)
  data_cfg = _pose_data_config(config.data)
  train_split = dataset.load_split(config.data, 'train')
  test_split = dataset.load_split(config.data, 'test')
  loader = pipeline.make_train_loader(data_cfg, train_split, global_batch=pcfg.batch_size // 2, seed=config.seed,
                                      shard_index=jax.process_index(), shard_count=jax.process_count())
  data_iter = iter(loader)

  # --- Model & optimizer
  module = hrnet.build_hrnet(pcfg)
  tx = train_state.make_pose_optimizer(pcfg)
  init_rng = jax.random.key(config.seed)
  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(lambda r: train_state.init_pose_state(module, tx, r), init_rng)
  state_sharding = jax.tree.map(lambda _: repl, abstract)

  # --- Load checkpoint (pose dir > pose.init_from > scratch)
  manager = checkpoint.make_manager(pose_dir, pcfg.keep_checkpoints)
  abstract_sharded = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract)
  state = checkpoint.restore_latest(manager, abstract_sharded, data_iter)
  if state is None:
    state = jax.jit(lambda r: train_state.init_pose_state(module, tx, r), out_shardings=state_sharding)(init_rng)
    if pcfg.init_from:
      loaded, _ = hrnet_convert.load_hrnet(pcfg.init_from)
      variables, not_filled = hrnet_convert.fill_variables(
          {'params': state['params'], 'batch_stats': state['batch_stats']}, loaded, source=pcfg.init_from)
      variables = jax.device_put(variables, repl)
      state = {**state, **variables, 'opt_state': jax.device_put(tx.init(variables['params']), repl)}
      logs.log_line(f'Initialised from {pcfg.init_from}; {len(not_filled)} tensors left at their random init')
  first_step = int(state['step'])
  logs.log_line(f'HigherHRNet {pcfg.arch}: {hrnet.count_params(state["params"]) / 1e6:.2f} M parameters; '
                f'{len(train_split)} training pairs; starting at step {first_step}')

  step_fn = jax.jit(functools.partial(train_step, module=module, tx=tx, pcfg=pcfg), donate_argnums=0,
                    in_shardings=(state_sharding, sharding.batch_sharding(mesh)), out_shardings=(state_sharding, repl))
  predict = make_predict_fn(module)
  writer = logs.MetricWriter(pose_dir)
  progress = logs.Progress(pcfg.num_steps, first_step)
  stop = checkpoint.StopFlag()
  last = {}

  # --- Train loop
  step = first_step
  try:
    while step < pcfg.num_steps and not stop.stop:
      batch = sharding.global_batch(pose_batch(next(data_iter)), mesh)
      if step == first_step:
        logs.log_line('Compiling the pose train step ...')
      t_call = time.perf_counter()
      state, metrics = step_fn(state, batch)
      if step == first_step:  # its first call compiles: reported, and kept out of the steps/s rate and the ETA
        jax.block_until_ready(metrics)
        took = time.perf_counter() - t_call
        progress.exclude(took)
        logs.log_line(f'Pose train step compiled (and run once) in {took:.1f} s')
      step += 1
      if step % pcfg.log_every == 0 or step == pcfg.num_steps:
        last = logs.fetch_metrics(metrics, step, 'pose-training metrics')
        rate = progress.rate(step)
        writer.scalars(step, {**last, 'steps_per_sec': rate})
        logs.log_line(progress.line(step, rate, loss=last['loss']))
      if pcfg.eval_every and step % pcfg.eval_every == 0 and step < pcfg.num_steps:
        acc = evaluate_estimator(predict, _variables(state), config.data, test_split, pcfg)
        writer.scalars(step, {f'heldout/{k}': v for k, v in acc.items()})
        logs.log_line(f'step {step} held-out PCK@0.1 {acc["pck@0.1"]:.4f}, mean error {acc["mean_error_px"]:.2f} px')
      if step % pcfg.ckpt_every == 0:
        checkpoint.save(manager, step, state, data_iter)
  except BaseException:
    manager.wait_until_finished()  # an in-flight save of an earlier, finite step lands before the process ends
    raise
  finally:
    stop.restore()
  checkpoint.finish(manager, step, state, data_iter, stopped=stop.stop)

  # --- Export and final held-out evaluation
  result = {'step': step, 'preempted': stop.stop, 'train_metrics': last}
  if not stop.stop:
    variables = _variables(state)
    acc = evaluate_estimator(predict, variables, config.data, test_split, pcfg)
    writer.scalars(step, {f'heldout/{k}': v for k, v in acc.items()})
    result.update(heldout=acc, arch=pcfg.arch, sigma=pcfg.sigma, sigma_s4=pcfg.sigma_s4,
                  image_hw=[config.data.height, config.data.width])
    if jax.process_index() == 0:
      hrnet_convert.save_hrnet(jax.device_get(variables), pose_dir, {'arch': pcfg.arch, 'source': 'train_pose',
                                                                      'step': step, 'sigma': pcfg.sigma})
      with open(os.path.join(pose_dir, 'pose_eval.json'), 'w') as f:
        json.dump(result, f, indent=1)
    logs.log_line(f'Held-out ({acc["images"]} test images): PCK@0.1 {acc["pck@0.1"]:.4f}, PCK@0.05 '
                  f'{acc["pck@0.05"]:.4f}, mean error {acc["mean_error_px"]:.2f} px -> {pose_dir}/pose_eval.json')
  writer.close()
  return result


def _variables(state):
  return {'params': state['params'], 'batch_stats': state['batch_stats']}
