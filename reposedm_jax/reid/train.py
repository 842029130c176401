"""Re-ID training and evaluation (`config.mode=reid_train` / `reid_eval`): ResNet-50 + BN neck on Market-1501.

Losses (`reid.loss`): 'id' (softmax cross-entropy with label smoothing, the baseline the paper's Table 4 numbers
suggest), 'id+triplet' (+ batch-hard triplet on the pooled feature, margin `reid.triplet_margin`) or
'id+triplet+center' (+ centre loss, weight `reid.center_weight`, centres moved by SGD at `reid.center_lr`).
Adam with L2 weight decay, linear warm-up from lr/10 and x0.1 at `reid.decay_steps`. The batch of a step is a
function of (seed, step) (batches.py), so a checkpointed run resumes exactly. Evaluation: BN-neck features of
query and gallery, `reid.metric` distances, Market-1501's protocol (protocol.py).

Everything of a run lives in its workdir: checkpoints/, tb/, metrics.jsonl, `reid_metrics.json`.
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

from reposedm_jax import checkpoint, logs
from reposedm_jax.convert import resnet as resnet_convert
from reposedm_jax.reid import batches, market, protocol
from reposedm_jax.reid.resnet import ReIDNet, init_variables

LOSSES = ('id', 'id+triplet', 'id+triplet+center')
METRICS_FILE = 'reid_metrics.json'


# ----------------------------------------------------------------------------- losses

def smoothed_cross_entropy(logits, labels, eps: float):
  n = logits.shape[-1]
  target = (1.0 - eps) * jax.nn.one_hot(labels, n) + eps / n
  return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))


def batch_hard_triplet(feats, labels, margin: float):
  """Hermans et al.: for each anchor the farthest positive and the nearest negative (Euclidean), hinge at margin."""
  f = feats.astype(jnp.float32)
  d2 = jnp.sum(f * f, 1)[:, None] + jnp.sum(f * f, 1)[None] - 2.0 * f @ f.T
  d = jnp.sqrt(jnp.maximum(d2, 1e-12))
  same = labels[:, None] == labels[None]
  hardest_pos = jnp.max(jnp.where(same, d, -jnp.inf), axis=1)
  hardest_neg = jnp.min(jnp.where(same, jnp.inf, d), axis=1)
  return jnp.mean(jax.nn.relu(hardest_pos - hardest_neg + margin))


def center_loss(feats, labels, centers):
  return 0.5 * jnp.mean(jnp.sum(jnp.square(feats.astype(jnp.float32) - centers[labels]), axis=-1))


# ----------------------------------------------------------------------------- state and step

def make_optimizer(rcfg) -> optax.GradientTransformation:
  boundaries = {int(s): 0.1 for s in rcfg.decay_steps}
  decay = optax.piecewise_constant_schedule(rcfg.lr, boundaries)
  warm = optax.linear_schedule(0.1 * rcfg.lr, rcfg.lr, max(rcfg.warmup_steps, 1))
  lr = optax.join_schedules([warm, decay], [rcfg.warmup_steps])
  # Coupled L2 (torch Adam's weight_decay), as the bag-of-tricks recipe trains.
  return optax.chain(optax.add_decayed_weights(rcfg.weight_decay), optax.adam(lr))


def init_state(rcfg, num_ids: int, rng, backbone=None) -> dict:
  net = ReIDNet(num_ids, tuple(rcfg.blocks), last_stride=rcfg.last_stride)
  variables = init_variables(net, (rcfg.height, rcfg.width), rng)
  params, stats = variables['params'], variables['batch_stats']
  if backbone is not None:  # ImageNet weights (convert resnet): everything but the neck and the classifier
    params = {**params, 'backbone': backbone['params']}
    stats = {**stats, 'backbone': backbone['batch_stats']}
  tx = make_optimizer(rcfg)
  return {'params': params, 'batch_stats': stats, 'opt_state': tx.init(params),
          'centers': jnp.zeros((num_ids, 2048), jnp.float32), 'step': jnp.zeros((), jnp.int32)}


def train_step(state, batch, *, rcfg, num_ids: int):
  net = ReIDNet(num_ids, tuple(rcfg.blocks), last_stride=rcfg.last_stride)
  tx = make_optimizer(rcfg)
  labels = batch['labels']

  def loss_fn(params, centers):
    out, updates = net.apply({'params': params, 'batch_stats': state['batch_stats']}, batch['images'], train=True,
                             mutable=['batch_stats'])
    terms = {'id': smoothed_cross_entropy(out['logits'], labels, rcfg.label_smoothing)}
    if 'triplet' in rcfg.loss:
      terms['triplet'] = batch_hard_triplet(out['global'], labels, rcfg.triplet_margin)
    if 'center' in rcfg.loss:
      terms['center'] = rcfg.center_weight * center_loss(out['global'], labels, centers)
    terms['accuracy'] = jnp.mean(jnp.argmax(out['logits'], -1) == labels)
    loss = sum(v for k, v in terms.items() if k != 'accuracy')
    return loss, (terms, updates['batch_stats'])

  (loss, (terms, stats)), (grads, g_centers) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      state['params'], state['centers'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  # Centre loss: the centres follow their own SGD (the recipe's lr 0.5, undoing the loss weight's scaling).
  centers = state['centers'] - rcfg.center_lr * g_centers / max(rcfg.center_weight, 1e-12)
  metrics = {'loss': loss, **terms, 'grad_norm': optax.tree.norm(grads)}
  return {**state, 'params': params, 'batch_stats': stats, 'opt_state': opt_state, 'centers': centers,
          'step': state['step'] + 1}, metrics


# ----------------------------------------------------------------------------- features and evaluation

@functools.lru_cache(maxsize=8)
def _feature_fn(num_ids: int, blocks: tuple, last_stride: int):
  """One jitted feature extractor per network: query and gallery share its compilation."""
  net = ReIDNet(num_ids, blocks, last_stride=last_stride)
  return jax.jit(lambda v, x: net.apply(v, x, train=False)['feature'])


def extract(rcfg, variables: dict, num_ids: int, images: list[market.Image]) -> np.ndarray:
  """BN-neck features [N, 2048] of images (eval-mode BatchNorm), in batches of reid.eval_batch_size."""
  fn = _feature_fn(num_ids, tuple(rcfg.blocks), rcfg.last_stride)
  hw, b = (rcfg.height, rcfg.width), rcfg.eval_batch_size
  out = []
  for i in range(0, len(images), b):
    chunk = np.stack([market.load_image(im.path, hw) for im in images[i:i + b]])
    n = len(chunk)
    if n < b:  # one compiled shape: pad the last batch
      chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(fn(variables, chunk))[:n])
  return np.concatenate(out)


def eval_folders(root: str) -> tuple[list[market.Image], list[market.Image]]:
  return market.read_folder(root, 'query'), market.read_folder(root, 'bounding_box_test')


def evaluate(rcfg, variables: dict, num_ids: int, root: str, folders=None) -> dict:
  query, gallery = folders or eval_folders(root)
  qf, gf = extract(rcfg, variables, num_ids, query), extract(rcfg, variables, num_ids, gallery)
  dist = protocol.distances(qf, gf, rcfg.metric)
  result = protocol.evaluate(dist, [q.pid for q in query], [q.cam for q in query], [g.pid for g in gallery],
                             [g.cam for g in gallery])
  return {**result, 'query_images': len(query), 'gallery_images': len(gallery)}


# ----------------------------------------------------------------------------- the loop

def _backbone(rcfg):
  if rcfg.backbone_dir:
    return jax.device_get(resnet_convert.load_resnet(rcfg.backbone_dir))
  logging.warning('reid.backbone_dir is empty: the ResNet-50 starts from random weights (the paper fine-tunes '
                  "ImageNet weights: `python -m reposedm_jax.convert resnet --src resnet50-*.pth --dst DIR`)")
  return None


def train_and_evaluate(rcfg, train_images: list[market.Image], workdir: str, seed: int, eval_root: str) -> dict:
  """Trains on `train_images` in `workdir` (resuming), evaluates on `eval_root`'s query/gallery; returns metrics.

  A workdir whose `reid_metrics.json` exists is done: its metrics are returned without work.
  """
  done = os.path.join(workdir, METRICS_FILE)
  if os.path.isfile(done):
    with open(done) as f:
      return json.load(f)
  os.makedirs(workdir, exist_ok=True)
  folders = eval_folders(eval_root)  # a bad name in query/ or the gallery fails now, not after training
  labels, _ = batches.relabel(train_images)
  num_ids = int(labels.max()) + 1
  step_fn = jax.jit(functools.partial(train_step, rcfg=rcfg, num_ids=num_ids), donate_argnums=0)
  state = init_state(rcfg, num_ids, jax.random.key(seed), _backbone(rcfg))
  manager = checkpoint.make_manager(workdir, 2)
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state))
  state = restored if restored is not None else state
  first = int(state['step'])
  logs.log_line(f'Re-ID: {len(train_images)} training images of {num_ids} identities, {rcfg.loss} loss, '
                f'{rcfg.num_steps} steps of {rcfg.ids_per_batch}x{rcfg.images_per_id}; starting at step {first}')
  writer, progress = logs.MetricWriter(workdir), logs.Progress(rcfg.num_steps, first)
  stop = checkpoint.StopFlag()
  step, stopped = first, False
  try:
    while step < rcfg.num_steps and not stopped:
      batch = batches.train_batch(train_images, labels, rcfg, seed, step)
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch)
      if step == first:
        jax.block_until_ready(metrics)
        progress.exclude(time.perf_counter() - t0)
        logs.log_line(f'Re-ID train step compiled (and run once) in {time.perf_counter() - t0:.1f} s')
      step += 1
      if step % rcfg.log_every == 0 or step == rcfg.num_steps:
        m = logs.fetch_metrics(metrics, step)
        writer.scalars(step, m)
        logs.log_line(progress.line(step, progress.rate(step), loss=m['loss'], acc=m['accuracy']))
      if step % rcfg.ckpt_every == 0:
        checkpoint.save(manager, step, state)
      stopped = stop.stop
  finally:
    stop.restore()
  checkpoint.finish(manager, step, state, stopped=stopped)
  writer.close()
  if stopped:
    raise SystemExit(0)
  t0 = time.perf_counter()
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  result = evaluate(rcfg, variables, num_ids, eval_root, folders)
  result.update(train_images=len(train_images), train_identities=num_ids, steps=step,
                eval_seconds=round(time.perf_counter() - t0, 1))
  logs.log_line(f"Re-ID {workdir}: mAP {result['mAP']:.4f}, rank-1 {result['rank1']:.4f} "
                f"({result['queries']} queries, {result['gallery_images']} gallery images)")
  with open(done, 'w') as f:
    json.dump(result, f, indent=1)
  return result


def run_train(config, workdir: str) -> dict:
  """mode=reid_train: every image of <reid.root>/bounding_box_train, evaluated on its query / gallery."""
  rcfg = config.reid
  root = rcfg.root or config.data.root
  return train_and_evaluate(rcfg, market.read_folder(root, 'bounding_box_train'), os.path.join(workdir, 'reid'),
                            config.seed, root)


def run_eval(config, workdir: str) -> dict:
  """mode=reid_eval: the latest checkpoint of <workdir>/reid on <reid.root>'s query / gallery (no training)."""
  rcfg = config.reid
  root = rcfg.root or config.data.root
  run_dir = os.path.join(workdir, 'reid')
  manager = checkpoint.make_manager(run_dir, 2)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'No re-ID checkpoint in {run_dir}/checkpoints: run --config.mode=reid_train first')
  state = checkpoint.restore_here(manager, step)
  manager.close()
  num_ids = int(state['centers'].shape[0])
  result = evaluate(rcfg, {'params': state['params'], 'batch_stats': state['batch_stats']}, num_ids, root)
  result['step'] = int(step)
  logs.log_line(f"Re-ID {run_dir} step {step}: mAP {result['mAP']:.4f}, rank-1 {result['rank1']:.4f}")
  with open(os.path.join(run_dir, 'reid_eval.json'), 'w') as f:
    json.dump(result, f, indent=1)
  return result
