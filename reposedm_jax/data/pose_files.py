"""A user's pose files -> OpenPose-18 keypoints and the pixel frame they are given in (predict's pose inputs).

Formats (`read_pose_file` picks by extension; `FILE.csv:NAME` picks a CSV row):
  .json  OpenPose's own output, `{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}`, BODY_25 (75 numbers) or
         COCO-18 (54). A joint with confidence < `min_confidence` (OpenPose writes 0 0 0 for a joint it did not
         find) is missing; with several people, the one with the most found joints, or `person=i`. OpenPose does
         not record the image size: the frame is None (the caller fits the person into the model frame).
  .txt   PIDM's DeepFashion keypoint file: 18 rows "x y" in the legacy 256x256 frame.
  .csv   a PATN annotation CSV (`name:keypoints_y:keypoints_x`), 256x176 frame; the row NAME or the first row.
  .npy   PIDM's pose bank (`target_pose/*.npy`): the H x W x 20 `get_label_tensor` rendering itself. Keypoints
         are recovered from its 17 limb-distance channels (the ends of each filled limb ellipse; a joint shared
         by limbs is their mean), which is exact to the rasteriser's ~1-2 px; a joint no drawn limb touches is
         missing. A 256x256 tensor is drawn in PIDM's 256x176 image stretched to 256x256 (`trans_keypoins` with
         the stretched width): the keypoints are un-stretched into the 256x176 frame; any other size is its own
         pixel frame.
Keypoints are float32 [18, 2] (x, y), -1 missing (keypoints.py), in the returned frame: 'legacy256', (H, W), or
None (unknown).
"""

import json
import os

import numpy as np

from reposedm_jax.data import deepfashion, patn, pose
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.keypoints import MISSING, NUM_DRAWN_LIMBS, NUM_OPENPOSE, OPENPOSE_LIMBS, OPENPOSE_TO_COCO

# OpenPose-18 joint j = BODY_25 joint BODY25_TO_OPENPOSE18[j] (BODY_25 adds MidHip at 8 and six foot points).
BODY25_TO_OPENPOSE18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
PATN_FRAME = (256, 176)
STRETCHED_FROM = (256, 176)  # PIDM's DeepFashion images before its 256x256 stretch
FORMATS = ('.json', '.txt', '.csv', '.npy')
ZERO_GROWTH = 2.0  # px a limb's zero set extends beyond its polygon (distance // 3 == 0)


def coco17_to_openpose18(coco) -> np.ndarray:
  """[17, 2] COCO keypoints (BlazePose's, the judges') -> [18, 2] OpenPose-18, neck = the shoulders' midpoint."""
  coco = np.asarray(coco, np.float32)
  out = np.full((NUM_OPENPOSE, 2), MISSING, np.float32)
  out[list(OPENPOSE_TO_COCO)] = coco
  l_sh, r_sh = out[5], out[2]
  if (l_sh != MISSING).all() and (r_sh != MISSING).all():
    out[1] = (l_sh + r_sh) / 2
  else:
    out[1] = MISSING
  return out


def read_openpose_json(path: str, min_confidence: float = 0.1, person: int = -1) -> np.ndarray:
  try:
    with open(path) as f:
      doc = json.load(f)
  except json.JSONDecodeError as e:
    raise BadExampleError(path, f'not JSON ({e.msg})', line=e.lineno) from None
  except UnicodeDecodeError:
    raise BadExampleError(path, 'not a text (JSON) file') from None
  people = doc.get('people') if isinstance(doc, dict) else None
  if not isinstance(people, list):
    raise BadExampleError(path, 'no "people" list: not an OpenPose output file', field='people')
  if not people:
    raise BadExampleError(path, 'OpenPose found no person in this file', field='people')
  candidates = []
  for i, p in enumerate(people):
    flat = p.get('pose_keypoints_2d') if isinstance(p, dict) else None
    if not isinstance(flat, list) or len(flat) not in (75, 54) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
      raise BadExampleError(path, 'expected 75 (BODY_25) or 54 (COCO-18) numbers x, y, c',
                            field=f'people[{i}].pose_keypoints_2d')
    xyc = np.asarray(flat, np.float32).reshape(-1, 3)
    if not np.isfinite(xyc).all():
      raise BadExampleError(path, 'non-finite keypoint value', field=f'people[{i}].pose_keypoints_2d')
    if len(xyc) == 25:
      xyc = xyc[list(BODY25_TO_OPENPOSE18)]
    # c = 0 is OpenPose's "not found" (0 0 0) whatever the threshold.
    found = (xyc[:, 2:] > 0) & (xyc[:, 2:] >= min_confidence)
    kpts = np.where(found, xyc[:, :2], MISSING).astype(np.float32)
    candidates.append(kpts)
  if person >= len(candidates):
    raise BadExampleError(path, f'person {person} asked for, the file has {len(candidates)}', field='people')
  if person < 0:
    person = int(np.argmax([(k[:, 0] != MISSING).sum() for k in candidates]))
  kpts = candidates[person]
  if (kpts[:, 0] != MISSING).sum() < 2:
    raise BadExampleError(path, f'person {person} has fewer than 2 joints above confidence {min_confidence}',
                          field=f'people[{person}].pose_keypoints_2d')
  return kpts


def read_patn_row(path: str, name: str | None = None) -> np.ndarray:
  rows = patn.read_annotations(path, PATN_FRAME)
  if not rows:
    raise BadExampleError(path, 'no annotation rows', field='row')
  if name is None:
    return next(iter(rows.values()))[0]
  if name not in rows:
    raise BadExampleError(path, f'no row named {name!r} ({len(rows)} rows)', field='name')
  return rows[name][0]


def _limb_ends(on_limb: np.ndarray):
  """(end, end, centre) of a filled limb ellipse, pixel centres (x, y); the ends are None for a short limb.

  ellipse2Poly draws half-axes (int(length / 2), 4): along a limb longer than the stick width the extreme
  filled pixels are its joints; a shorter limb (the face's) is wider than long, so only its centre is kept.
  """
  ys, xs = np.nonzero(on_limb)
  pts = np.stack([xs, ys], axis=1).astype(np.float64)
  centre = pts.mean(axis=0)
  if len(pts) < 3:
    return None, None, centre
  _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
  proj = (pts - centre) @ vt[0]
  # The zero set is the polygon grown by 2 px (floor(L1 distance / 3) = 0 up to 2 px away): half-width 6.
  if (proj.max() - proj.min()) / 2 <= 7:  # not clearly longer than wide
    return None, None, centre
  return centre + (proj.min() + ZERO_GROWTH) * vt[0], centre + (proj.max() - ZERO_GROWTH) * vt[0], centre


def keypoints_from_pose_tensor(tensor: np.ndarray, where: str = 'pose tensor') -> np.ndarray:
  """Recovers [18, 2] keypoints from PIDM's [H, W, 20] rendering (see the module docstring)."""
  if tensor.ndim != 3 or tensor.shape[-1] != 20:
    raise BadExampleError(where, f'expected an H x W x 20 PIDM pose tensor, got shape {tensor.shape}', field='shape')
  ends = {}
  for i in range(NUM_DRAWN_LIMBS):
    on = tensor[..., 3 + i] <= 0.5 / 255  # 0 on the filled polygon, >= 1/255 from 3 px away
    if on.any() and not on.all():
      ends[i] = _limb_ends(on)
  kpts = np.full((NUM_OPENPOSE, 2), MISSING, np.float64)
  # The limbs form a tree rooted at the neck (joint 1); walk it so each limb's end nearest its parent joint is
  # that joint. The neck itself: the end shared by most of its limbs (the one nearest the others' ends).
  neck_limbs = [i for i in ends if 1 in OPENPOSE_LIMBS[i] and ends[i][0] is not None]
  if len(neck_limbs) > 1:
    cands = np.array([e for i in neck_limbs for e in ends[i][:2]])
    dist = np.linalg.norm(cands[:, None] - cands[None], axis=-1)
    kpts[1] = cands[np.argmin(np.sort(dist, axis=1)[:, :len(neck_limbs)].sum(axis=1))]
  elif neck_limbs:  # one neck limb: its child joint is where the other drawn limbs attach, the neck the far end
    e0, e1, _ = ends[neck_limbs[0]]
    others = [p for j, (a, b, c) in ends.items() if j != neck_limbs[0] for p in ((a, b) if a is not None else (c,))]
    near = lambda e: min((np.linalg.norm(e - p) for p in others), default=0.0)
    kpts[1] = e0 if near(e0) >= near(e1) else e1
  votes = {j: [] for j in range(NUM_OPENPOSE)}
  placed = {1} if neck_limbs else set()
  pending = sorted(ends)
  while pending:
    progress = False
    for i in list(pending):
      a, b = OPENPOSE_LIMBS[i]
      parent, child = (a, b) if a in placed else (b, a) if b in placed else (None, None)
      if parent is None:
        continue
      e0, e1, centre = ends[i]
      if e0 is None:  # a short limb: the child mirrors the parent through the ellipse's centre
        far = 2 * centre - kpts[parent]
      else:
        near, far = (e0, e1) if np.linalg.norm(e0 - kpts[parent]) <= np.linalg.norm(e1 - kpts[parent]) else (e1, e0)
        if parent != 1:
          votes[parent].append(near)
      votes[child].append(far)
      kpts[child] = np.mean(votes[child], axis=0)
      placed.add(child)
      pending.remove(i)
      progress = True
    if not progress:
      break  # limbs not connected to the neck's component: their joints stay missing
  for j, v in votes.items():
    if v and j != 1:
      kpts[j] = np.mean(v, axis=0)
  return kpts.astype(np.float32)


def read_pose_npy(path: str) -> tuple[np.ndarray, object]:
  try:
    arr = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise BadExampleError(path, f'not a plain .npy array ({e})') from None
  arr = np.asarray(arr, np.float32)
  if arr.ndim == 3 and arr.shape[0] == 20 and arr.shape[-1] != 20:
    arr = arr.transpose(1, 2, 0)  # saved channel-first (a torch tensor's numpy())
  kpts = keypoints_from_pose_tensor(arr, path)
  if (kpts[:, 0] != MISSING).sum() < 2:
    raise BadExampleError(path, 'no limb drawn in this pose tensor', field='limbs')
  if arr.shape[:2] == (256, 256):
    # PIDM draws its pose bank after trans_keypoins, in the 256x176 image stretched to 256x256: undo the stretch.
    return pose.image_to_image(kpts, (256, 256), STRETCHED_FROM), STRETCHED_FROM
  return kpts, tuple(arr.shape[:2])


def read_pose_file(spec: str, min_confidence: float = 0.1, person: int = -1) -> tuple[np.ndarray, object]:
  """`spec` (a path, or `FILE.csv:NAME`) -> (keypoints [18, 2], frame 'legacy256' | (H, W) | None)."""
  path, name = spec, None
  if not os.path.exists(spec) and '.csv:' in spec:
    path, name = spec.split('.csv:', 1)
    path += '.csv'
  if not os.path.isfile(path):
    raise BadExampleError(path, 'pose file not found')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.json':
    return read_openpose_json(path, min_confidence, person), None
  if ext == '.txt':
    return deepfashion.read_pose_txt(path, min_visible=2), 'legacy256'
  if ext == '.csv':
    return read_patn_row(path, name), PATN_FRAME
  if ext == '.npy':
    return read_pose_npy(path)
  raise BadExampleError(path, f'unknown pose format {ext!r}: one of {", ".join(FORMATS)}, or a photo')
