"""Market-1501's retrieval protocol: CMC rank-k and mAP of query features against a gallery.

For each query, the gallery is ranked by distance (ascending; ties keep gallery order, a stable sort), then
  - gallery images of the same person id AND the same camera are removed (they are not a re-identification),
  - junk images (person id -1) are removed,
  - distractors (person id 0) stay, as wrong matches.
A query with no remaining correct match is left out of both CMC and mAP (the official evaluation does the same).
AP is the mean, over the query's correct matches, of the precision at each one's rank; mAP its mean over queries.
CMC(k) is the fraction of queries with a correct match within the first k.
"""

import numpy as np

JUNK_ID = -1
DISTRACTOR_ID = 0


def distances(query: np.ndarray, gallery: np.ndarray, metric: str = 'euclidean') -> np.ndarray:
  """[Q, G] distances between feature rows: 'euclidean' or 'cosine' (1 - cosine similarity)."""
  q, g = np.asarray(query, np.float64), np.asarray(gallery, np.float64)
  if metric == 'cosine':
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return 1.0 - q @ g.T
  if metric == 'euclidean':
    d2 = np.sum(q * q, 1)[:, None] + np.sum(g * g, 1)[None] - 2.0 * q @ g.T
    return np.sqrt(np.maximum(d2, 0.0))
  raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")


def evaluate(dist: np.ndarray, q_pids, q_cams, g_pids, g_cams, ranks=(1, 5, 10)) -> dict:
  """{'mAP', 'rank1', 'rank5', 'rank10', 'queries' (evaluated), 'skipped' (no correct match)} from [Q, G] distances."""
  dist = np.asarray(dist)
  q_pids, q_cams = np.asarray(q_pids), np.asarray(q_cams)
  g_pids, g_cams = np.asarray(g_pids), np.asarray(g_cams)
  if dist.shape != (len(q_pids), len(g_pids)):
    raise ValueError(f'distances {dist.shape} do not match {len(q_pids)} queries x {len(g_pids)} gallery images')
  max_rank = max(ranks)
  cmc_sum = np.zeros(max_rank)
  aps, skipped = [], 0
  for i in range(len(q_pids)):
    order = np.argsort(dist[i], kind='stable')
    keep = ~(((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])) | (g_pids[order] == JUNK_ID))
    matches = (g_pids[order][keep] == q_pids[i]).astype(np.float64)
    if not matches.any():
      skipped += 1
      continue
    hit = np.cumsum(matches)
    first = np.zeros(max_rank)
    first[min(int(np.argmax(matches)), max_rank):] = 1.0  # correct within k from the first hit's rank on
    cmc_sum += first
    positions = np.flatnonzero(matches) + 1.0  # 1-based ranks of the correct matches
    aps.append(float(np.mean(hit[matches > 0] / positions)))
  n = len(aps)
  out = {'mAP': float(np.mean(aps)) if n else float('nan'), 'queries': n, 'skipped': skipped}
  for k in ranks:
    out[f'rank{k}'] = float(cmc_sum[k - 1] / n) if n else float('nan')
  return out
