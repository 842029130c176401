"""HumanSD's pose metrics on generated images (paper Table 3): AP, AP(m), CAP and PCE.

- AP / AP(m): COCO keypoint AP over OKS thresholds .50:.95, all areas / medium, maxDets 20, computed by
  pycocotools' own COCOeval (HumanSD uses xtcocotools' identical keypoint evaluation).
- CAP: the same evaluator with OKS replaced by HumanSD's weighted cosine similarity (`utils/metrics/
  coco_similarity.py`): coordinates divided by the COCO sigmas, restricted to the GT's visible joints, each axis
  min-max then L2 normalised, x and y concatenated, cosine of GT and detection; thresholds .50:.95.
  HumanSD's stored code overwrites the detection's y with its x (`yd = xd / ...`); `replicate_y_bug=True`
  reproduces that, the default computes the metric as described. A degenerate axis (all visible joints on one
  line, or fewer than two) scores 0 where HumanSD's code divides by zero.
- PCE: mean |#GT people − #detected people| per image (HumanSD's "HND").

Departures from HumanSD (WORKSPACE.md, "RePoseSD"): whole-set values, not a mean over batches of 10; every
annotated person counts (HumanSD keeps the first 3 of each image); a GT bbox and area from the visible joints
(HumanSD's include its (-1, -1) placeholders), and a GT whose visible joints span no area ignored by AP (it has no
OKS scale); detection areas from their present joints (pycocotools' loadRes spans the (0, 0) of missing ones).
"""

import contextlib
import io
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def coco_ground_truth(keypoints: Sequence[np.ndarray], image_hw) -> dict:
  """Per image [P, 17, 3] keypoints (score > 0 = visible) -> a COCO keypoint ground-truth dataset dict."""
  h, w = image_hw
  images, anns = [], []
  for i, people in enumerate(keypoints):
    images.append({'id': i, 'height': int(h), 'width': int(w), 'file_name': f'{i}.png'})
    for person in np.asarray(people, np.float64):
      vis = person[:, 2] > 0
      if not vis.any():
        continue
      x, y = person[vis, 0], person[vis, 1]
      bbox = [float(x.min()), float(y.min()), float(x.max() - x.min()), float(y.max() - y.min())]
      kp = np.stack([np.where(vis, person[:, 0], 0), np.where(vis, person[:, 1], 0), 2.0 * vis], -1)
      area = bbox[2] * bbox[3]
      # A person whose visible joints span no area (one joint, or all on a line) has no OKS scale: COCOeval
      # ignores a GT with num_keypoints 0, which is what it is given (it still counts for PCE).
      anns.append({'id': len(anns) + 1, 'image_id': i, 'category_id': 1, 'iscrowd': 0, 'bbox': bbox,
                   'area': area, 'num_keypoints': int(vis.sum()) if area >= 1.0 else 0,
                   'keypoints': kp.reshape(-1).tolist()})
  return {'images': images, 'annotations': anns, 'categories': [{'id': 1, 'name': 'person'}]}


def coco_detections(detections: Sequence[Sequence[tuple]]) -> list:
  """Per image a list of (keypoints [17, 3] (x, y, score), person score) -> COCO results."""
  return [{'image_id': i, 'category_id': 1, 'keypoints': np.asarray(kp, np.float64).reshape(-1).tolist(),
           'score': float(score)} for i, dets in enumerate(detections) for kp, score in dets]


def weighted_cosine(gt_kpts: np.ndarray, dt_kpts: np.ndarray, replicate_y_bug: bool = False) -> float:
  """HumanSD's weighted cosine similarity of one GT and one detection ([17, 3] each)."""
  vis = gt_kpts[:, 2] > 0
  if vis.sum() < 2:
    return 0.0
  scaled = []  # min-max normalised xg, yg, xd, yd
  for kp in (gt_kpts, dt_kpts):
    for a in (0, 1):
      v = kp[vis, a] / COCO_SIGMAS[vis]
      span = v.max() - v.min()
      if span <= 0:
        return 0.0
      scaled.append((v - v.min()) / span)
  xg, yg, xd, yd = (v / np.sqrt(np.sum(v * v)) for v in scaled)  # each has a 1 (its max), so the norm is >= 1
  if replicate_y_bug:
    yd = xd / np.sqrt(np.sum(scaled[3] ** 2))  # HumanSD's `yd = xd / np.sqrt((yd**2).sum())`
  g, d = np.concatenate([xg, yg]), np.concatenate([xd, yd])
  return float(np.dot(g, d) / (np.linalg.norm(g) * np.linalg.norm(d)))


class _SimilarityEval(COCOeval):
  """COCOeval whose keypoint 'IoU' is the weighted cosine similarity (HumanSD's CAP)."""

  replicate_y_bug = False

  def computeOks(self, imgId, catId):  # noqa: N802 -- pycocotools' hook name
    gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
    order = np.argsort([-d['score'] for d in dts], kind='mergesort')
    dts = [dts[i] for i in order][:self.params.maxDets[-1]]
    if not gts or not dts:
      return []
    sim = np.zeros((len(dts), len(gts)))
    for j, g in enumerate(gts):
      gk = np.asarray(g['keypoints'], np.float64).reshape(-1, 3)
      for i, d in enumerate(dts):
        sim[i, j] = weighted_cosine(gk, np.asarray(d['keypoints'], np.float64).reshape(-1, 3), self.replicate_y_bug)
    return sim


def _run(evaluator_cls, gt: dict, results: list, **attrs) -> np.ndarray:
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(results)
    for ann in coco_dt.anns.values():  # loadRes spans all 17 points, (0, 0) of missing joints included
      k = np.asarray(ann['keypoints'], np.float64).reshape(-1, 3)
      vis = k[k[:, 2] > 0, :2] if (k[:, 2] > 0).any() else k[:, :2]
      ann['area'] = float(np.ptp(vis[:, 0]) * np.ptp(vis[:, 1]))
    ev = evaluator_cls(coco_gt, coco_dt, 'keypoints')
    for k, v in attrs.items():
      setattr(ev, k, v)
    ev.params.maxDets = [20]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return ev.stats


def pose_metrics(gt_keypoints: Sequence[np.ndarray], detections: Sequence[Sequence[tuple]], image_hw, *,
                 replicate_y_bug: bool = False) -> dict:
  """{'AP', 'AP_m', 'CAP', 'PCE', 'gt_people', 'detected_people'} over the whole set (AP-type values in [0, 1];
  -1 is pycocotools' 'undefined', e.g. AP(m) with no medium-size person)."""
  gt = coco_ground_truth(gt_keypoints, image_hw)
  results = coco_detections(detections)
  n_gt = np.array([sum(1 for p in np.asarray(k) if (p[:, 2] > 0).any()) for k in gt_keypoints])
  n_dt = np.array([len(d) for d in detections])
  out = {'PCE': float(np.mean(np.abs(n_gt - n_dt))) if len(n_gt) else 0.0,
         'gt_people': int(n_gt.sum()), 'detected_people': int(n_dt.sum())}
  if not results or not gt['annotations']:  # pycocotools' loadRes cannot take an empty list
    return {**out, 'AP': 0.0, 'AP_m': 0.0, 'CAP': 0.0}
  stats = _run(COCOeval, gt, results)
  sim = _run(_SimilarityEval, gt, results, replicate_y_bug=replicate_y_bug)
  return {**out, 'AP': float(stats[0]), 'AP_m': float(stats[3]), 'CAP': float(sim[0])}
