"""The project's own HigherHRNet as a pose judge (the estimator PIF guidance uses).

Not an independent judge: a model guided by this network can learn to please it. Report it next to the
independent BlazePose judge (mediapipe_judge.py), never alone.

Weights: the registry's factory (`evaluation.pose.make_hrnet_judge`) loads them with
`pose_estimator.load_pose_estimator` from `config.eval.hrnet_dir` if set (an independent judge, e.g. another
seed), else `config.pose.checkpoint`, else the run's own <workdir>/pose; when none holds weights it raises JudgeUnavailable and eval records
the reason instead of a score.

Detection: images [-1, 1] -> `aggregate_heatmaps` (stride-4 and stride-2 maps averaged at stride 2) ->
`decode_keypoints` (arg-max + sub-pixel refinement) -> COCO-17 (x, y) in the image's pixel frame; a
joint whose peak heatmap value is below `config.pose.score_threshold` is -1 (not detected).
"""

import jax
import numpy as np

from reposedm_jax.metrics.pose_accuracy import images_to_uint8
from reposedm_jax.models import hrnet


class HrnetJudge:
  """Batched, jitted HigherHRNet detection in fixed-size chunks (one compile per image size)."""
  name = 'hrnet'

  def __init__(self, module, variables, min_score: float, weights_dir: str, batch_size: int = 32):
    self.min_score, self.batch_size = float(min_score), int(batch_size)
    self.description = f'project HigherHRNet ({weights_dir}), peak score >= {min_score:g}'
    self._variables = jax.device_put(variables)

    def detect(variables, images_pm1):
      out = module.apply(variables, images_pm1, train=False)
      return hrnet.decode_keypoints(hrnet.aggregate_heatmaps(out), images_pm1.shape[1:3])

    self._detect = jax.jit(detect)

  def __call__(self, images) -> np.ndarray:
    """[B, H, W, 3] uint8 or [-1, 1] -> COCO-17 (x, y) [B, 17, 2]; runs in fixed chunks of batch_size."""
    images = images_to_uint8(images).astype(np.float32) / 127.5 - 1.0
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:  # pad: one compile per image size, whatever the caller's batch
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
      xy, score = (np.asarray(a)[:n] for a in self._detect(self._variables, chunk))
      out.append(np.where((score >= self.min_score)[..., None], xy, -1.0).astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, 17, 2), np.float32)
