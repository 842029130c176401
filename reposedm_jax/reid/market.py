"""Market-1501's re-ID folders and names, and a small synthetic dataset in the same layout.

  <root>/bounding_box_train/   751 training identities (12,936 images)
  <root>/query/                3,368 query images of the 750 test identities
  <root>/bounding_box_test/    the gallery: test identities, distractors (id 0000) and junk (id -1)
Names are `PPPP_cCsS_FFFFFF_BB.jpg`: person id (-1 = junk), camera C (1-6), sequence S, frame, box. Generated
training images (mode=reid_augment) are named with sequence 0, which no real image has.
The pose-transfer model trains on the same people in the PATN convention (`train/`, `market-*.csv`,
configs/market1501.py); `write_synthetic` writes both views of one synthetic population.
"""

import dataclasses
import json
import logging
import os
import re

import cv2
import numpy as np

from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.synthetic import patn_annotation_row, render_identity, split_identities

NAME = re.compile(r'^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.(jpg|jpeg|png)$', re.IGNORECASE)
FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')
GENERATED_SEQUENCE = 0


@dataclasses.dataclass(frozen=True)
class Image:
  path: str
  pid: int
  cam: int


def parse_name(path: str) -> tuple[int, int]:
  """(person id, camera) of a Market-1501 file name; a clear error naming the file otherwise."""
  m = NAME.match(os.path.basename(path))
  if not m:
    raise BadExampleError(path, 'not a Market-1501 name PPPP_cCsS_FFFFFF_BB.jpg (person id, camera, sequence, '
                          'frame, box)', field='name')
  return int(m.group(1)), int(m.group(2))


def read_folder(root: str, folder: str) -> list[Image]:
  """Every image of `<root>/<folder>` (sorted by name); other files (Thumbs.db) are skipped with a count."""
  d = os.path.join(root, folder)
  if not os.path.isdir(d):
    raise BadExampleError(d, f'Market-1501 folder not found (expected {", ".join(FOLDERS)} under the root)',
                          field='folder')
  names = sorted(os.listdir(d))
  images = [n for n in names if n.lower().endswith(IMAGE_EXTS)]
  if len(images) < len(names):
    logging.info('%s: skipped %d non-image files', d, len(names) - len(images))
  out = [Image(os.path.join(d, n), *parse_name(os.path.join(d, n))) for n in images]
  if not out:
    raise BadExampleError(d, 'no images', field='folder')
  return out


def load_image(path: str, hw) -> np.ndarray:
  """[H, W, 3] float32 in [-1, 1] (RGB), resized to `hw` with area/linear interpolation."""
  bgr = cv2.imread(path, cv2.IMREAD_COLOR)
  if bgr is None:
    raise BadExampleError(path, 'unreadable image', field='image')
  h, w = hw
  if bgr.shape[:2] != (h, w):
    shrink = bgr.shape[0] > h
    bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
  return bgr[..., ::-1].astype(np.float32) / 127.5 - 1.0


# ----------------------------------------------------------------------------- synthetic Market-1501

def write_synthetic(out_dir: str, *, seed: int = 0, identities: int = 24, views: int = 6, height: int = 128,
                    width: int = 64, test_fraction: float = 0.5, distractors: int = 4, junk: int = 2) -> dict:
  """A synthetic population in Market-1501's re-ID folders and, for the same training people, the PATN files the
  pose-transfer model trains on (train/, test/, market-annotation-*.csv, market-pairs-*.csv).

  View v of a person is seen by camera v % 6 + 1. Test identities give their first view to query/ and the rest to
  the gallery; the gallery also gets `distractors` images of id 0000 and `junk` of id -1 (rendered people of
  their own). Returns the counts.
  """
  jpeg = [cv2.IMWRITE_JPEG_QUALITY, 95]
  for sub in FOLDERS + ('train', 'test'):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  is_test = split_identities(seed, identities, test_fraction)
  ann = {'train': ['name:keypoints_y:keypoints_x'], 'test': ['name:keypoints_y:keypoints_x']}
  pairs = {'train': ['from,to'], 'test': ['from,to']}
  counts = {f: 0 for f in FOLDERS}

  def write(folder, name, image):
    path = os.path.join(out_dir, folder, name)
    if not cv2.imwrite(path, np.ascontiguousarray(image[..., ::-1]), jpeg):
      raise OSError(f'could not write {path}')

  extra = distractors + junk
  for i in range(identities + extra):
    rendered = list(render_identity(seed, i, views, height, width, 'standard'))
    if i >= identities:  # a distractor (0000) or junk (-1) person: one gallery image each
      pid = '0000' if i < identities + distractors else '-1'
      write('bounding_box_test', f'{pid}_c{i % 6 + 1}s1_{i:06d}_01.jpg', rendered[0][2])
      counts['bounding_box_test'] += 1
      continue
    split = 'test' if is_test[i] else 'train'
    names = []
    for v, (_, _, image, kp) in enumerate(rendered):
      name = f'{i + 1:04d}_c{v % 6 + 1}s1_{v:06d}_01.jpg'
      folder = ('query' if v == 0 else 'bounding_box_test') if split == 'test' else 'bounding_box_train'
      write(folder, name, image)
      write(split, name, image)  # the pose-transfer view of the same image
      counts[folder] += 1
      ann[split].append(patn_annotation_row(name, kp))
      names.append(name)
    pairs[split].extend(f'{s},{t}' for s in names for t in names if s != t)
  for split in ('train', 'test'):
    for kind, lines in (('annotation', ann[split]), ('pairs', pairs[split])):
      with open(os.path.join(out_dir, f'market-{kind}-{split}.csv'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
  counts['train_identities'] = int(np.sum(~is_test))
  counts['test_identities'] = int(np.sum(is_test))
  return counts


def _main() -> None:
  import argparse
  p = argparse.ArgumentParser(description='Writes a synthetic population in Market-1501 layout (re-ID folders and '
                                          'the PATN files of the pose-transfer model).')
  p.add_argument('--out', required=True)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--identities', type=int, default=24)
  p.add_argument('--views', type=int, default=6)
  p.add_argument('--height', type=int, default=128)
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--test-fraction', type=float, default=0.5)
  a = p.parse_args()
  counts = write_synthetic(a.out, seed=a.seed, identities=a.identities, views=a.views, height=a.height,
                           width=a.width, test_fraction=a.test_fraction)
  print(json.dumps(counts))


if __name__ == '__main__':
  _main()
