"""Pose accuracy inside the evaluation pass: judges on generated images and, once per image, on real ones.

Every judge sees each batch's generated images (one detection per pair) plus the real images not seen
before (sources for the copy-source baseline, and targets when `eval.pose_score_targets`), which are
detected once per image key however many pairs share them. A judge with `submit` / `collect` (the
BlazePose worker process) runs while the pass computes the other metrics; any other judge is called
directly. Scores come from `pose_accuracy.pose_accuracy` against the target keypoints (OpenPose-18 of
the dataset at evaluation resolution -> COCO-17).
"""

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from reposedm_jax import pose_estimator
from reposedm_jax.data import keypoints as kp_lib
from reposedm_jax.metrics import pose_accuracy
from reposedm_jax.metrics.hrnet_judge import HrnetJudge

TARGET_KEYPOINTS = 'dataset OpenPose-18 at eval resolution -> COCO-17'


def make_hrnet_judge(config, workdir: str) -> HrnetJudge:
  """Registry factory (pose_accuracy.JUDGE_FACTORIES['hrnet']): the project's HigherHRNet with its weights."""
  # <workdir>/pose, not <workdir>: the workdir's own checkpoints/ are the diffusion model's.
  # An explicit judge (eval.hrnet_dir) wins over pose.checkpoint, which is the *guiding* estimator of
  # variant=full: judging guided samples with the estimator that guided them would only measure overfitting.
  path = config.eval.hrnet_dir or config.pose.checkpoint or os.path.join(workdir, 'pose')
  # The judge is a given network: its recorded architecture wins over config.pose.arch (which describes the
  # guiding estimator), so a `small` judge trained on synthetic data scores under any dataset config.
  arch = pose_estimator.stored_arch(path) or config.pose.arch
  try:
    variables, module = pose_estimator.load_pose_estimator(config, path, use_pose_checkpoint=False, arch=arch)
  except FileNotFoundError as e:
    raise pose_accuracy.JudgeUnavailable(
        f'hrnet judge: no HigherHRNet weights ({e}); set --config.eval.hrnet_dir=DIR '
        '(a mode=train_pose run or a converted official checkpoint)') from None
  return HrnetJudge(module, variables, config.pose.score_threshold, path,
                    config.eval.batch_size)


class PoseScorer:
  """Accumulates detections of each judge over the pass; `result` scores them."""

  def __init__(self, judges: Dict[str, pose_accuracy.Judge], skipped: Dict[str, str], alphas: Sequence[float],
               score_targets: bool):
    self.judges, self.skipped, self.alphas, self.score_targets = judges, skipped, tuple(alphas), score_targets
    self._gen = {name: [] for name in judges}
    self._real: Dict[str, Dict[str, np.ndarray]] = {name: {} for name in judges}
    self._tgt_coco: List[np.ndarray] = []
    self._inflight: List[Tuple[str, int, List[str], object]] = []

  def start(self, gen_u8: np.ndarray, real: Sequence[Tuple[str, np.ndarray]], tgt_kpts_op18: np.ndarray) -> None:
    """Starts detection on a batch: generated [n, H, W, 3], (key, image) real candidates, targets [n, 18, 2]."""
    self._tgt_coco.append(kp_lib.openpose_to_coco(tgt_kpts_op18))
    seen = next(iter(self._real.values())) if self._real else {}
    new: Dict[str, np.ndarray] = {}
    for key, img in real:
      if key not in seen and key not in new:
        new[key] = img
    images = np.concatenate([gen_u8, np.stack(list(new.values()))]) if new else gen_u8
    for name, judge in self.judges.items():
      handle = judge.submit(images) if hasattr(judge, 'submit') else judge(images)
      self._inflight.append((name, len(gen_u8), list(new), handle))

  def finish(self) -> None:
    """Waits for the started batches and files their detections."""
    for name, n, keys, handle in self._inflight:
      judge = self.judges[name]
      xy = pose_accuracy.check_detections(judge.collect() if hasattr(judge, 'submit') else handle,
                                          n + len(keys), name)
      self._gen[name].append(xy[:n])
      self._real[name].update(zip(keys, xy[n:]))
    self._inflight.clear()

  def close(self) -> None:
    for judge in self.judges.values():
      getattr(judge, 'close', lambda: None)()

  def result(self, sources: Sequence[str], targets: Sequence[str], have_kpts: bool) -> dict:
    """{'target_keypoints', 'judges': {name: {'protocol', 'generated', 'copy_source_baseline', ...}}}."""
    out = {'target_keypoints': TARGET_KEYPOINTS, 'judges': {n: {'skipped': why} for n, why in self.skipped.items()}}
    for name, judge in self.judges.items():
      if not have_kpts:
        out['judges'][name] = {'skipped': 'no target keypoints for these pairs'}
        continue
      rows = {'generated': np.concatenate(self._gen[name])}
      if sources and all(sources):
        rows['copy_source_baseline'] = np.stack([self._real[name][k] for k in sources])
      if self.score_targets:
        rows['ground_truth'] = np.stack([self._real[name][k] for k in targets])
      tgt = np.concatenate(self._tgt_coco)
      res = {'protocol': judge.description}
      for row, pred in rows.items():
        try:
          res[row] = pose_accuracy.pose_accuracy(pred, tgt, self.alphas)
        except ValueError as e:  # e.g. no visible target joint at all
          res[row] = {'skipped': str(e)}
      out['judges'][name] = res
    return out
