"""The frozen pose estimator that PIF guidance differentiates (and eval's hrnet judge runs): weights, heat_fn.

`load_pose_estimator` finds a HigherHRNet's weights (a mode=train_pose run or a converted official
checkpoint); `make_heat_fn(config, variables)` returns the `heat_fn(images) -> {'heatmaps', 'features'}`
that pif.py expects, and `reference_heads` the Gaussian targets it was trained on. For variant full the
variables travel in the training state as state['guide'] (checkpointed with it, so a resumed run guides
with exactly the estimator it started with; never updated by the optimizer).
"""

import json
import logging
import os
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax import checkpoint
from reposedm_jax.convert import hrnet as hrnet_convert
from reposedm_jax.models import hrnet

NUM_JOINTS = 17
# config.pif.estimator: the official/trained HigherHRNet, or the tiny random network of tests and smoke runs.
ESTIMATORS = ('hrnet', 'toy')


class ToyEstimator(nn.Module):
  """Two convolutions -> 17 heatmaps at stride 2 (tests and smoke runs; random weights guide nowhere useful).

  images [B, H, W, 3] in [-1, 1] -> {'heatmaps': [B, H/2, W/2, 17] in (0, 1), 'features': [B, H/2, W/2, 8]}.
  """
  width: int = 8

  @nn.compact
  def __call__(self, images: jax.Array) -> Dict[str, jax.Array]:
    f = jnp.tanh(nn.Conv(self.width, (3, 3), strides=(2, 2), name='conv1')(images))
    heat = jax.nn.sigmoid(nn.Conv(NUM_JOINTS, (3, 3), name='conv2')(f))
    return {'heatmaps': heat, 'features': f}


def _hrnet_heat_fn(config, variables):
  module = hrnet.build_hrnet(config.pose)

  def heat_fn(images):
    out = module.apply(variables, images, train=False)
    return {'heatmaps': hrnet.aggregate_heatmaps(out), 'features': out['features']}

  return heat_fn


def reference_heads(config) -> tuple:
  """((stride, sigma), ...) of the Gaussian targets the estimator was trained on (pif.reference_heatmaps).

  HigherHRNet: stride 4 (pose.sigma_s4) and stride 2 (pose.sigma), aggregated as its output is; the toy
  estimator has one stride-2 head. The sigmas must be those the estimator's weights were trained with
  (mode=train_pose writes them to pose/pose_eval.json; the official W32 used 2 and 2, the defaults).
  """
  if config.pif.estimator == 'toy':
    return ((2, float(config.pose.sigma)),)
  return ((4, float(config.pose.sigma_s4)), (2, float(config.pose.sigma)))


def make_heat_fn(config, variables: Any):
  """The frozen estimator as a pure function of the images (variables closed over, not trained)."""
  if config.pif.estimator == 'toy':
    module = ToyEstimator()
    return lambda images: module.apply(variables, images)
  if config.pif.estimator == 'hrnet':
    return _hrnet_heat_fn(config, variables)
  raise ValueError(f'pif.estimator={config.pif.estimator!r} must be one of {ESTIMATORS}')


# ----------------------------------------------------------------------------- loading an estimator

def _restore_run_variables(pose_dir: str):
  """{'params', 'batch_stats'} of the latest train_pose checkpoint in pose_dir/checkpoints, or None."""
  ckpt_dir = os.path.join(pose_dir, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    return None
  manager = checkpoint.make_manager(pose_dir, 1)
  step = manager.latest_step()
  if step is None:
    return None
  state = checkpoint.restore_here(manager, step)
  manager.close()
  logging.info('Pose estimator from %s step %d', ckpt_dir, step)
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


def stored_arch(path: str):
  """The HigherHRNet architecture recorded beside weights in `path` or `path`/pose (hrnet.json), else None."""
  for d in (path, os.path.join(path, 'pose')):
    meta_path = os.path.join(d, hrnet_convert.META_FILE)
    if os.path.isfile(meta_path):
      return json.load(open(meta_path)).get('arch')
  return None


def load_pose_estimator(config, workdir_or_dir: str, use_pose_checkpoint: bool = True, arch: str = ''):
  """The frozen estimator: (variables {'params', 'batch_stats'} as jax arrays, HigherHRNet module).

  Looks at `config.pose.checkpoint` if set (and `use_pose_checkpoint`), else `workdir_or_dir`; each may be a train_pose
  dir (<workdir>/pose: its latest checkpoint, else its exported `variables`), a converted official
  checkpoint dir, or a workdir holding pose/. The weights must match `config.pose.arch` exactly.
  `arch` builds that architecture instead of `config.pose.arch` (a judge: its weights fix it).
  Apply with `module.apply(variables, images, train=False)`.
  """
  arch = arch or config.pose.arch
  module = hrnet.build_hrnet(arch)
  root = (config.pose.checkpoint if use_pose_checkpoint else '') or workdir_or_dir
  candidates = [root, os.path.join(root, 'pose')]
  for path in candidates:
    meta_path = os.path.join(path, hrnet_convert.META_FILE)
    meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}
    if meta.get('arch') not in (None, arch):  # before any restore: one line, not 1500 shapes
      raise ValueError(f'{path} holds a {meta["arch"]!r} HigherHRNet but config.pose.arch='
                       f'{arch!r}; pass --config.pose.arch={meta["arch"]}')
    variables = _restore_run_variables(path)
    if variables is None and os.path.isdir(os.path.join(path, hrnet_convert.VARIABLES_DIR)):
      variables, meta = hrnet_convert.load_hrnet(path)
      if meta.get('not_filled'):
        raise ValueError(f'{path} is a partial (backbone-only) conversion ({len(meta["not_filled"])} head '
                         'parameters missing): use it as --config.pose.init_from and train with mode=train_pose')
    if variables is not None:
      hrnet_convert.check_variables(variables, hrnet.variable_shapes(module), source=path)
      return jax.tree.map(jnp.asarray, variables), module
  raise FileNotFoundError(
      f'no pose estimator in {" or ".join(repr(c) for c in candidates)}: expected checkpoints/ from '
      f'--config.mode=train_pose or {hrnet_convert.VARIABLES_DIR}/ from `python -m reposedm_jax.convert hrnet`')


def load_guide_variables(config, workdir: str) -> Any:
  """The estimator's variables for variant 'full' (random for 'toy'), with a clear error when missing.

  Weights: `config.pose.checkpoint` (a converted official HigherHRNet or a train_pose dir), else
  `<workdir>/pose` (what `--config.mode=train_pose` writes into the same workdir).
  """
  if config.pif.estimator == 'toy':
    h, w = config.data.height, config.data.width
    return ToyEstimator().init(jax.random.key(config.seed + 7), jnp.zeros((1, h, w, 3)))
  try:
    # <workdir>/pose, not <workdir>: the workdir's own checkpoints/ are the diffusion model's.
    variables, _ = load_pose_estimator(config, os.path.join(workdir, 'pose'))
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'variant=full needs a frozen pose estimator: train one with --config.mode=train_pose (same workdir), '
        'or convert the official HigherHRNet with `python -m reposedm_jax.convert hrnet --src '
        f'pose_higher_hrnet_w32_512.pth --dst DIR` and pass --config.pose.checkpoint=DIR ({e})') from e
  return variables
