"""Inputs shared by the benchmark tools: random batches of a config's shapes and the guide's variables."""

import jax
import numpy as np

from reposedm_jax import pose_estimator
from reposedm_jax.models import hrnet


def random_batch(config, b, rng):
  """Model inputs of the config's shapes ([-1, 1] images, [0, 1] pose maps, in-frame keypoints)."""
  h, w = config.data.height, config.data.width
  kpts = lambda: (rng.uniform(0, 1, (b, 18, 2)) * [w - 1, h - 1]).astype(np.float32)  # noqa: E731
  return {'src_img': rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32),
          'tgt_img': rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32),
          'tgt_pose': rng.uniform(0, 1, (b, h, w, 20)).astype(np.float32),
          'src_kpts': kpts(), 'tgt_kpts': kpts()}


def guide_variables(config):
  """The frozen estimator's variables for variant full: its weights if configured, else random ones of the
  same network (the cost does not depend on the values)."""
  try:
    return pose_estimator.load_guide_variables(config, '')
  except FileNotFoundError:
    return jax.jit(lambda r: hrnet.init_variables(hrnet.build_hrnet(config.pose), r))(jax.random.key(0))
