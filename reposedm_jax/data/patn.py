"""DeepFashion and Market-1501 in the PATN/GFLA CSV convention (pidm-and-benchmarks.md §1b).

  <root>/{train,test}/<name>                                   flat image folders
  <root>/<prefix>-annotation-{train,test}.csv   header "name:keypoints_y:keypoints_x",
        rows "name: [y0, ..., y17]: [x0, ..., x17]", image pixel frame, -1 missing
  <root>/<prefix>-pairs-{train,test}.csv        header "from,to" (source, target)

`prefix` is 'fasion-resize' for DeepFashion (the original misspelling; 'fashion-resize' is
accepted too) and 'market' for Market-1501.
"""

import csv
import json
import logging
import os

import numpy as np

from reposedm_jax.data import errors
from reposedm_jax.data.deepfashion import check_visible, validate_pairs
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.images import FolderImages
from reposedm_jax.data.splits import Pair, Split, first_out_of_frame

ANNOTATION_HEADER = 'name:keypoints_y:keypoints_x'
PAIRS_HEADER = ['from', 'to']


def csv_path(root: str, prefix: str, kind: str, split: str) -> str:
  """Finds `<prefix>-<kind>-<split>.csv`, accepting the fasion/fashion spelling either way."""
  names = [prefix]
  for a, b in (('fasion', 'fashion'), ('fashion', 'fasion')):
    if prefix.startswith(a):
      names.append(b + prefix[len(a):])
  for name in names:
    path = os.path.join(root, f'{name}-{kind}-{split}.csv')
    if os.path.isfile(path):
      return path
  raise BadExampleError(os.path.join(root, f'{prefix}-{kind}-{split}.csv'), 'CSV file not found', field=kind)


def _int_list(path: str, n: int, field: str, text: str) -> list[float]:
  try:
    values = json.loads(text)
  except json.JSONDecodeError as e:
    raise BadExampleError(path, f'not a JSON list: {text.strip()[:40]!r} ({e.msg})', line=n, field=field) from None
  if not isinstance(values, list) or len(values) != 18:
    raise BadExampleError(path, f'expected a list of 18 numbers, got {text.strip()[:40]!r}', line=n, field=field)
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    raise BadExampleError(path, 'non-numeric keypoint value', line=n, field=field)
  return values


def read_annotations(path: str, frame_hw: tuple[int, int], on_bad: str = 'error',
                     counter: errors.SkipCounter | None = None, min_visible: int = 1) -> dict[str, tuple[np.ndarray, int]]:
  """name -> (float32 [18, 2] (x, y) keypoints, line number); a malformed row: `on_bad` (the header: an error)."""
  counter = counter or errors.SkipCounter('annotation rows')
  out = {}
  with open(path) as f:
    header = f.readline().strip()
    if header != ANNOTATION_HEADER:
      raise BadExampleError(path, f'wrong header {header!r}, expected {ANNOTATION_HEADER!r}', line=1, field='header')
    for n, ln in enumerate(f, start=2):
      if not ln.strip():
        continue
      try:
        name, kpts = _annotation_row(path, n, ln, frame_hw, min_visible)
      except BadExampleError as e:
        errors.handle(e, on_bad, counter)
        continue
      out[name] = (kpts, n)
  return out


def _annotation_row(path: str, n: int, ln: str, frame_hw, min_visible: int) -> tuple[str, np.ndarray]:
  parts = ln.rstrip('\n').split(':')
  if len(parts) != 3:
    raise BadExampleError(path, 'expected 3 ":"-separated fields', line=n, field='row')
  name = parts[0].strip()
  ys = _int_list(path, n, 'keypoints_y', parts[1])
  xs = _int_list(path, n, 'keypoints_x', parts[2])
  kpts = np.stack([np.asarray(xs, np.float32), np.asarray(ys, np.float32)], axis=1)
  # PATN marks a missing joint by -1 in both lists; treat either as missing.
  kpts[(kpts[:, 0] == -1) | (kpts[:, 1] == -1)] = -1
  check_visible(path, kpts, min_visible, line=n)
  bad = first_out_of_frame(kpts, frame_hw)
  if bad is not None:
    raise BadExampleError(path, f'keypoint {bad} = {tuple(kpts[bad])} outside the {frame_hw} frame of {name}',
                          line=n, field='keypoints')
  return name, kpts


def read_pairs_csv(path: str, image_dir: str, on_bad: str = 'error',
                   counter: errors.SkipCounter | None = None) -> list[Pair]:
  """PATN pairs (from = source, to = target) -> Pairs keyed '<split>/<name>'; a malformed row: `on_bad`."""
  counter = counter or errors.SkipCounter('pairs rows')
  pairs = []
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != PAIRS_HEADER:
      raise BadExampleError(path, f'wrong header {header!r}, expected {",".join(PAIRS_HEADER)!r}', line=1,
                            field='header')
    for n, row in enumerate(reader, start=2):
      if not row:
        continue
      if len(row) != 2 or not all(x.strip() for x in row):
        errors.handle(BadExampleError(path, 'expected "from,to"', line=n, field='pair'), on_bad, counter)
        continue
      src, tgt = (x.strip() for x in row)
      pairs.append(Pair(f'{image_dir}/{tgt}', (f'{image_dir}/{src}',), f'{path}:{n}'))
  if not pairs:
    raise BadExampleError(path, 'empty split: no pairs', field='pairs')
  return pairs


def load_split(data_cfg, split: str) -> Split:
  """Reads and validates one PATN-convention split."""
  root, prefix = data_cfg.root, data_cfg.csv_prefix
  frame_hw = (data_cfg.ann_height, data_cfg.ann_width)
  ann_path = csv_path(root, prefix, 'annotation', split)
  pairs_path = csv_path(root, prefix, 'pairs', split)
  counter = errors.SkipCounter(f'{split} examples')
  ann = read_annotations(ann_path, frame_hw, data_cfg.on_bad_example, counter, data_cfg.min_visible_joints)
  pairs = read_pairs_csv(pairs_path, split, data_cfg.on_bad_example, counter)

  def read_pose(key: str) -> np.ndarray:
    name = key.split('/', 1)[1]
    if name not in ann:
      raise BadExampleError(ann_path, f'no annotation row for {name!r}', field='name')
    return ann[name][0]

  keypoints: dict[str, np.ndarray] = {}
  pairs = validate_pairs(pairs, keypoints, FolderImages(root), read_pose=read_pose,
                         on_bad=data_cfg.on_bad_example, counter=counter, decode_images=data_cfg.validate_images)
  if not pairs:
    raise BadExampleError(pairs_path, 'empty split: no valid pairs left', field='pairs')
  (logging.warning if counter.total else logging.info)('%s: %d pairs, %d images. %s', split, len(pairs),
                                                       len(keypoints), counter.summary())
  return Split(split, pairs, keypoints, FolderImages(root), 'image', frame_hw, counter)
