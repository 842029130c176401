"""The frozen pose estimator that PIF guidance differentiates: construction, weights, heat_fn.

`make_heat_fn(config, variables)` returns the `heat_fn(images) -> {'heatmaps', 'features'}` that pif.py
expects. The variables travel in the training state as state['guide'] (checkpointed with it, so a
resumed run guides with exactly the estimator it started with; never updated by the optimizer).
"""

import os
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

NUM_JOINTS = 17


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
  from reposedm_jax.models import hrnet  # pylint: disable=import-outside-toplevel
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
  raise ValueError(f"pif.estimator={config.pif.estimator!r} must be 'hrnet' or 'toy'")


def load_guide_variables(config, workdir: str) -> Any:
  """The estimator's variables for variant 'full' (random for 'toy'), with a clear error when missing.

  Weights: `config.pose.checkpoint` (a converted official HigherHRNet or a train_pose dir), else
  `<workdir>/pose` (what `--config.mode=train_pose` writes into the same workdir).
  """
  if config.pif.estimator == 'toy':
    h, w = config.data.height, config.data.width
    return ToyEstimator().init(jax.random.key(config.seed + 7), jnp.zeros((1, h, w, 3)))
  from reposedm_jax import pose_train  # pylint: disable=import-outside-toplevel
  try:
    # <workdir>/pose, not <workdir>: the workdir's own checkpoints/ are the diffusion model's.
    variables, _ = pose_train.load_pose_estimator(config, os.path.join(workdir, 'pose'))
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'variant=full needs a frozen pose estimator: train one with --config.mode=train_pose (same workdir), '
        'or convert the official HigherHRNet with `python -m reposedm_jax.convert hrnet --src '
        f'pose_higher_hrnet_w32_512.pth --dst DIR` and pass --config.pose.checkpoint=DIR ({e})') from e
  return variables
