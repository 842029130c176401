"""Pose accuracy of generated images: PCK@alpha and mean keypoint error against the target keypoints.

The judge (a pose estimator: the project's HigherHRNet, or an independent one) detects COCO-17 keypoints on
the generated images; this module only scores detections, so any judge plugs in.

Conventions (project-wide): keypoints are (x, y) pixels at the evaluated resolution, -1 marks a missing joint.
- A joint counts only where the *target* has it. A joint the judge misses (or detects with a score below
  its threshold) counts as wrong for PCK and is left out of the mean error (reported as a miss rate).
- PCK's reference length is alpha * max(height, width) of the box around the target's visible joints
  (one length per person); a person with fewer than 2 visible target joints is left out.

Judges are built by name (`make_judges`, registry `JUDGE_FACTORIES`): 'mediapipe' (BlazePose, independent of
this project, metrics/mediapipe_judge.py) and 'hrnet' (the project's HigherHRNet, metrics/hrnet_judge.py).
"""

import importlib
import logging
from typing import Callable, Dict, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from reposedm_jax.data.keypoints import is_missing


def reference_length(tgt_xy: np.ndarray) -> np.ndarray:
  """[B, K, 2] target keypoints -> [B] max side of the visible joints' bounding box (0 if < 2 visible)."""
  tgt_xy = np.asarray(tgt_xy, np.float64)
  vis = ~is_missing(tgt_xy)
  out = np.zeros(tgt_xy.shape[0])
  for i in range(tgt_xy.shape[0]):
    pts = tgt_xy[i][vis[i]]
    if len(pts) >= 2:
      out[i] = float(np.max(pts.max(axis=0) - pts.min(axis=0)))
  return out


def pose_accuracy(pred_xy: np.ndarray, tgt_xy: np.ndarray, alphas=(0.05, 0.1, 0.2),
                  pred_valid: Optional[np.ndarray] = None) -> Dict[str, float]:
  """Scores detections against targets.

  Args:
    pred_xy: [B, K, 2] detected keypoints (-1 where the judge found none).
    tgt_xy: [B, K, 2] target keypoints in the same joint order and pixel frame.
    alphas: PCK thresholds as fractions of each person's reference length.
    pred_valid: optional [B, K] bool, the judge's own confidence gate (False = not detected).

  Returns:
    {'pck@a': fraction of visible target joints within a*ref, 'mean_error_px': mean distance over
     detected visible joints, 'miss_rate': fraction of visible target joints not detected,
     'joints': number of scored joints, 'people': number of scored people}.
  """
  pred_xy = np.asarray(pred_xy, np.float64)
  tgt_xy = np.asarray(tgt_xy, np.float64)
  if pred_xy.shape != tgt_xy.shape or pred_xy.ndim != 3 or pred_xy.shape[-1] != 2:
    raise ValueError(f'pred_xy {pred_xy.shape} and tgt_xy {tgt_xy.shape} must both be [B, K, 2]')
  ref = reference_length(tgt_xy)
  scored = (~is_missing(tgt_xy)) & (ref > 0)[:, None]
  detected = ~is_missing(pred_xy)
  if pred_valid is not None:
    detected &= np.asarray(pred_valid, bool)
  dist = np.linalg.norm(pred_xy - tgt_xy, axis=-1)
  n = int(scored.sum())
  out: Dict[str, float] = {'joints': n, 'people': int((ref > 0).sum())}
  if n == 0:
    raise ValueError('no visible target joints to score (every target keypoint is missing)')
  for a in alphas:
    hit = scored & detected & (dist <= a * ref[:, None])
    out[f'pck@{a:g}'] = float(hit.sum() / n)
  found = scored & detected
  out['miss_rate'] = float(1.0 - found.sum() / n)
  out['mean_error_px'] = float(dist[found].mean()) if found.any() else float('nan')
  return out


# ---------------------------------------------------------------- judges
# A judge is any pose estimator behind one call: images [B, H, W, 3] (uint8, or float in [-1, 1]) ->
# COCO-17 (x, y) [B, 17, 2] in the images' pixel frame, -1 where it found no joint. Judges are built by
# name from the registry below, lazily, so an absent optional package or missing weights only skips
# that judge (with the reason recorded in metrics.json) instead of failing the evaluation.


class JudgeUnavailable(RuntimeError):
  """A judge cannot run here (its package or weights are missing); the message says what to do."""


class Judge(Protocol):
  name: str
  description: str  # protocol text for metrics.json and the table

  def __call__(self, images: np.ndarray) -> np.ndarray:
    ...


def images_to_uint8(images) -> np.ndarray:
  """[B, H, W, 3] uint8 (returned as is) or float in [-1, 1] -> uint8 (round half up, clipped)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'judge input must be [B, H, W, 3] images, got shape {images.shape}')
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f'judge input must be uint8 or float in [-1, 1], got dtype {images.dtype}')
  return np.clip(np.floor((images.astype(np.float32) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


def check_detections(xy: np.ndarray, batch_size: int, judge_name: str) -> np.ndarray:
  """Validates a judge's answer for `batch_size` images: returns it as float32 [B, 17, 2], all finite."""
  xy = np.asarray(xy, np.float32)
  if xy.shape != (batch_size, 17, 2):
    raise ValueError(f'judge {judge_name!r} returned shape {xy.shape}, expected ({batch_size}, 17, 2)')
  if not np.isfinite(xy).all():
    raise ValueError(f'judge {judge_name!r} returned non-finite keypoints')
  return xy


# name -> 'module:function' building the judge from (config, workdir); imported only when asked for.
JUDGE_FACTORIES: Dict[str, Union[str, Callable[..., Judge]]] = {
    'mediapipe': 'reposedm_jax.metrics.mediapipe_judge:make_judge',
    'hrnet': 'reposedm_jax.evaluation.pose:make_hrnet_judge',  # loads the weights (pose_estimator.py)
}


def register_judge(name: str, factory: Union[str, Callable[..., Judge]]) -> None:
  """Adds (or replaces) a judge: `factory(config, workdir) -> Judge`, or its 'module:function' path."""
  JUDGE_FACTORIES[name] = factory


def make_judges(names: Sequence[str], config, workdir: str) -> Tuple[Dict[str, Judge], Dict[str, str]]:
  """Builds the named judges; returns ({name: judge}, {name: why it was skipped}).

  Raises:
    ValueError: a name that is not registered (a typo should not silently skip a judge).
  """
  judges, skipped = {}, {}
  for name in names:
    if name not in JUDGE_FACTORIES:
      raise ValueError(f'eval.pose_judges: unknown judge {name!r}; registered: {sorted(JUDGE_FACTORIES)}')
    factory = JUDGE_FACTORIES[name]
    if isinstance(factory, str):
      module, _, func = factory.partition(':')
      factory = getattr(importlib.import_module(module), func)
    try:
      judges[name] = factory(config, workdir)
    except JudgeUnavailable as e:
      skipped[name] = str(e)
      logging.warning('pose judge %r skipped: %s', name, e)
  return judges, skipped
