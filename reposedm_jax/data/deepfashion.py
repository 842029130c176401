"""DeepFashion in PIDM's on-disk layout (reference: pidm-and-benchmarks.md §1b).

  <root>/img/{MEN,WOMEN}/<Category>/id_<8 digits>/NN_V_view.{png,jpg}   (or <root>/256-256 LMDB)
  <root>/pose/.../NN_V_view.txt      18 rows "x y", OpenPose-18, legacy 256x256 frame, -1 missing
  <root>/{train,test}_pairs.txt      "target,source1,...", paths with .jpg, no header
  <root>/{train,test}.lst            flat fashion names (used for FID reference sets)
"""

import logging
import os

import numpy as np

from reposedm_jax.data import errors
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.images import FolderImages, LmdbImages
from reposedm_jax.data.splits import Pair, Split, first_out_of_frame

LEGACY_HW = (256, 256)


def check_visible(path: str, kpts: np.ndarray, min_visible: int, line: int | None = None) -> None:
  visible = int((~np.any(kpts == -1, axis=1)).sum())
  if visible < min_visible:
    raise BadExampleError(path, f'{visible} visible joints, fewer than data.min_visible_joints={min_visible}',
                          line=line, field='keypoints')


def pose_path(root: str, image_key: str) -> str:
  """PIDM's rule: img/ -> pose/, extension -> .txt."""
  rel = image_key.replace('img/', 'pose/', 1)
  return os.path.join(root, os.path.splitext(rel)[0] + '.txt')


def read_pose_txt(path: str, min_visible: int = 1) -> np.ndarray:
  """Reads one keypoint file -> float32 [18, 2] (x, y) in the legacy frame; -1 = missing.

  A file with fewer than `min_visible` visible joints (data.min_visible_joints) is a BadExampleError: a
  target without a pose would train and score as if it had one."""
  if not os.path.isfile(path):
    raise BadExampleError(path, 'pose file not found', field='pose')
  with open(path) as f:
    lines = [ln for ln in f.read().splitlines() if ln.strip()]
  if len(lines) != 18:
    raise BadExampleError(path, f'expected 18 keypoint rows, found {len(lines)}', field='rows')
  out = np.empty((18, 2), np.float32)
  for i, ln in enumerate(lines):
    parts = ln.split()
    if len(parts) != 2:
      raise BadExampleError(path, f'expected 2 columns (x y), found {len(parts)}', line=i + 1, field='columns')
    for j, (name, tok) in enumerate(zip(('x', 'y'), parts)):
      try:
        out[i, j] = float(tok)
      except ValueError:
        raise BadExampleError(path, f'non-numeric value {tok!r}', line=i + 1, field=name) from None
      if not np.isfinite(out[i, j]):
        raise BadExampleError(path, f'non-finite value {tok!r}', line=i + 1, field=name)
  check_visible(path, out, min_visible)
  bad = first_out_of_frame(out, LEGACY_HW)
  if bad is not None:
    raise BadExampleError(path, f'keypoint {bad} = {tuple(out[bad])} outside the 256x256 legacy frame',
                          line=bad + 1, field='keypoints')
  return out


def read_pairs_txt(path: str, on_bad: str = 'error', counter: errors.SkipCounter | None = None) -> list[Pair]:
  """Parses a PIDM pairs file: field 0 is the target, fields 1.. are sources (a malformed line: `on_bad`)."""
  if not os.path.isfile(path):
    raise BadExampleError(path, 'pairs file not found', field='pairs')
  counter = counter or errors.SkipCounter('pairs lines')
  pairs = []
  with open(path) as f:
    for n, ln in enumerate(f, start=1):
      if not ln.strip():
        continue
      fields = [x.strip() for x in ln.strip().split(',')]
      if len(fields) < 2 or not all(fields):
        errors.handle(BadExampleError(path, 'expected "target,source[,source...]"', line=n, field='pair'),
                      on_bad, counter)
        continue
      pairs.append(Pair(fields[0], tuple(fields[1:]), f'{path}:{n}'))
  if not pairs:
    raise BadExampleError(path, 'empty split: no pairs', field='pairs')
  return pairs


def validate_pairs(pairs, keypoints, images, *, read_pose, on_bad, counter, decode_images=False):
  """Checks every image and keypoint a pair needs; drops (skip mode) or raises on the first bad one.

  Fills `keypoints` (key -> [18, 2]) as a side effect so each pose file is read once.
  Returns the surviving pairs; a pair keeps only its good sources.
  """
  status: dict[str, BadExampleError | None] = {}

  def check(key: str, origin: str) -> BadExampleError | None:
    if key not in status:
      err = None
      try:
        if not images.exists(key):
          raise BadExampleError(origin, f'image {key!r} not found in the image store', field='image')
        if decode_images:
          images.read(key)
        keypoints[key] = read_pose(key)
      except BadExampleError as e:
        err = e
      status[key] = err
    return status[key]

  kept = []
  for p in pairs:
    err = check(p.target, p.origin)
    if err is not None:
      errors.handle(err, on_bad, counter)
      continue
    good = []
    for s in p.sources:
      err = check(s, p.origin)
      if err is None:
        good.append(s)
      else:
        errors.handle(err, on_bad, counter)
    if good:
      kept.append(Pair(p.target, tuple(good), p.origin))
  return kept


# config.data.image_source of the PIDM layout: files under img/, or PIDM's LMDB.
IMAGE_SOURCES = ('folder', 'lmdb')


def load_split(data_cfg, split: str) -> Split:
  """Reads and validates `<root>/<split>_pairs.txt` with its pose files and image store."""
  root = data_cfg.root
  if data_cfg.image_source == 'folder':
    images = FolderImages(root)
  elif data_cfg.image_source == 'lmdb':
    images = LmdbImages(data_cfg.lmdb_path or os.path.join(root, '256-256'))
  else:
    raise ValueError(f'data.image_source must be one of {IMAGE_SOURCES}, got {data_cfg.image_source!r}')
  counter = errors.SkipCounter(f'{split} examples')
  pairs = read_pairs_txt(os.path.join(root, f'{split}_pairs.txt'), data_cfg.on_bad_example, counter)
  keypoints: dict[str, np.ndarray] = {}
  pairs = validate_pairs(pairs, keypoints, images, read_pose=lambda k: read_pose_txt(pose_path(root, k), data_cfg.min_visible_joints),
                         on_bad=data_cfg.on_bad_example, counter=counter,
                         decode_images=data_cfg.validate_images)
  if not pairs:
    raise BadExampleError(os.path.join(root, f'{split}_pairs.txt'), 'empty split: no valid pairs left',
                          field='pairs')
  (logging.warning if counter.total else logging.info)('%s: %d pairs, %d images. %s', split, len(pairs),
                                                       len(keypoints), counter.summary())
  return Split(split, pairs, keypoints, images, 'legacy256', LEGACY_HW, counter)
