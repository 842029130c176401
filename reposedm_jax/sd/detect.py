"""Multi-person keypoints from HigherHRNet's outputs: associative-embedding grouping (bottom-up), for HumanSD's
pose metrics on generated images.

HigherHRNet's parser, in numpy: peaks of the aggregated heatmaps (a 5x5 max-pool NMS as HigherHRNet's NMS_KERNEL, the top `max_people`
per joint above `detection_threshold`), each with its tag read from the stride-4 tag map; joints are taken in
COCO order and assigned to people by the Hungarian algorithm on cost = round(|tag − person's mean tag|)·100 −
heat (the reference's integer tag distance, then the heat as tie-break); a candidate farther than
`tag_threshold` from every person starts a new one. A person's score is the mean heat of its joints; an
OKS-based pose NMS (`pose_nms_threshold`, HumanSD 1.0 = none) follows. Departures from the reference: no
test-time scale pyramid or flip, no refinement pass filling missing joints from the heatmaps.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment

from reposedm_jax.sd.metrics import COCO_SIGMAS


def _peaks(heat: np.ndarray, k: int, threshold: float, kernel: int = 5):
  """heat [h, w, J] -> per joint a list of (y, x, value), strongest first; NMS by a kernel x kernel max-pool."""
  h, w, j = heat.shape
  r = kernel // 2
  pad = np.pad(heat, ((r, r), (r, r), (0, 0)), constant_values=-np.inf)
  local_max = np.max(np.stack([pad[dy:dy + h, dx:dx + w] for dy in range(kernel) for dx in range(kernel)]), axis=0)
  keep = (heat >= local_max) & (heat > threshold)
  out = []
  for jj in range(j):
    ys, xs = np.nonzero(keep[..., jj])
    vals = heat[ys, xs, jj]
    order = np.argsort(-vals, kind='stable')[:k]
    out.append([(int(ys[i]), int(xs[i]), float(vals[i])) for i in order])
  return out


def group(heat: np.ndarray, tags: np.ndarray, image_hw, *, max_people: int = 30, detection_threshold: float = 0.1,
          tag_threshold: float = 1.0, nms_kernel: int = 5) -> list:
  """One image: heat [h, w, 17] (aggregated, stride s), tags [h4, w4, 17] (stride 4) -> [(kpts [17, 3], score)].

  Keypoints in image pixels with the centre convention x = (u + 0.5)·s − 0.5; a joint the person lacks is
  (0, 0, 0).
  """
  h, w, j = heat.shape
  s = image_hw[0] / h
  s4 = image_hw[0] / tags.shape[0]
  people = []  # each: {'kpts': [17, 3], 'tags': list}
  for jj, cands in enumerate(_peaks(heat, max_people, detection_threshold, nms_kernel)):
    if not cands:
      continue
    pos = [((x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5, v) for y, x, v in cands]
    ctag = [float(tags[min(tags.shape[0] - 1, int(py / s4)), min(tags.shape[1] - 1, int(px / s4)), jj])
            for px, py, _ in pos]
    if not people:
      for (px, py, v), tg in zip(pos, ctag):
        k = np.zeros((j, 3))
        k[jj] = (px, py, v)
        people.append({'kpts': k, 'tags': [tg]})
      continue
    means = np.array([np.mean(p['tags']) for p in people])
    dist = np.abs(np.asarray(ctag)[:, None] - means[None])
    cost = np.round(dist) * 100 - np.asarray([v for _, _, v in pos])[:, None]
    rows, cols = linear_sum_assignment(cost)
    assigned = set()
    for r, c in zip(rows, cols):
      if dist[r, c] < tag_threshold:  # joints come once each, so the person has no joint jj yet
        people[c]['kpts'][jj] = pos[r]
        people[c]['tags'].append(ctag[r])
        assigned.add(r)
    for r, ((px, py, v), tg) in enumerate(zip(pos, ctag)):
      if r not in assigned:
        k = np.zeros((j, 3))
        k[jj] = (px, py, v)
        people.append({'kpts': k, 'tags': [tg]})
  out = [(p['kpts'], float(np.mean(p['kpts'][p['kpts'][:, 2] > 0, 2]))) for p in people]
  return sorted(out, key=lambda d: -d[1])


def oks(a: np.ndarray, b: np.ndarray) -> float:
  """COCO OKS of two detections ([17, 3]), the joints both have, the scale from a's extent."""
  both = (a[:, 2] > 0) & (b[:, 2] > 0)
  if not both.any():
    return 0.0
  va = a[a[:, 2] > 0, :2]
  area = max(np.ptp(va[:, 0]) * np.ptp(va[:, 1]), 1.0)
  d2 = np.sum(np.square(a[both, :2] - b[both, :2]), -1)
  return float(np.mean(np.exp(-d2 / (2 * area * (2 * COCO_SIGMAS[both]) ** 2))))


def pose_nms(dets: list, threshold: float) -> list:
  """Greedy: drop a detection whose OKS with a kept, higher-scored one exceeds `threshold` (>= 1: keep all)."""
  if threshold >= 1.0:
    return list(dets)
  kept = []
  for d in dets:
    if all(oks(k[0], d[0]) <= threshold for k in kept):
      kept.append(d)
  return kept
