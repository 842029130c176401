"""How the evaluation CLI (and the study builder) finds its inputs: pairs files, generated files, images, keypoints.

Accepted pairs files, how generated files and images are matched and the keypoint sources are described
in cli.py's docstring. numpy, PIL and OpenCV only (no jax): `python -m reposedm_jax.study score` imports
this without paying for jax.
"""

import json
import os
from typing import Callable, List, Optional, Tuple

import numpy as np

from reposedm_jax.data import deepfashion, images, names, patn, pose
from reposedm_jax.data.errors import BadExampleError


def read_pairs(path: str) -> List[Tuple[str, str, Optional[str]]]:
  """(source, target, generated name or None) per pair, from any accepted pairs format."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--pairs {path}: file not found')
  if path.endswith('.jsonl'):
    out = []
    with open(path) as f:
      for n, ln in enumerate(f, start=1):
        if ln.strip():
          row = json.loads(ln)
          missing = [k for k in ('name', 'source', 'target') if k not in row]
          if missing:
            raise BadExampleError(path, f'manifest row lacks {missing}', line=n, field=missing[0])
          out.append((row['source'], row['target'], row['name']))
    return out
  with open(path) as f:
    first = f.readline().strip().replace(' ', '')
  if first == ','.join(patn.PAIRS_HEADER):
    return [(p.sources[0].split('/', 1)[1], p.target.split('/', 1)[1], None)
            for p in patn.read_pairs_csv(path, '_')]
  return [(p.sources[0], p.target, None) for p in deepfashion.read_pairs_txt(path)]


def _stems(key: str) -> List[str]:
  flat = names.fashion_name(key)
  base = os.path.basename(key)
  out = []
  for name in (flat, 'deep' + flat if flat.startswith('fashion') else None, base):
    if name:
      out += [os.path.splitext(name)[0], name]
  return list(dict.fromkeys(out))


def generated_candidates(source: str, target: str) -> List[str]:
  """File names a generated image of (source, target) may have, most likely first."""
  out = [names.output_name(source, target)]
  for s, t in zip(_stems(source), _stems(target)):
    for ext in ('.png', '.jpg'):
      out += [f'{s}_2_{t}_vis{ext}', f'{s}___{t}_vis{ext}']
  return list(dict.fromkeys(out))


def find_image(root: str, key: str) -> Optional[str]:
  """Path of `key` under root (key as written, .png first; base name; fashion names), or None."""
  store = images.FolderImages(root)
  flat = names.fashion_name(key)
  for cand in (key, os.path.basename(key), flat, 'deep' + flat):
    path = store.resolve(cand)
    if path is not None:
      return path
  return None


def load_keypoints(spec: str, frame_hw) -> Callable[[str, Tuple[int, int]], np.ndarray]:
  """--keypoints -> fn(image key, eval hw) -> float32 [18, 2] at eval resolution (BadExampleError if absent)."""
  if os.path.isfile(spec):
    ann = patn.read_annotations(spec, tuple(frame_hw))

    def from_csv(key, hw):
      name = os.path.basename(key)
      if name not in ann:
        raise BadExampleError(spec, f'no annotation row for {name!r}', field='name')
      return pose.image_to_image(ann[name][0], frame_hw, hw)
    return from_csv
  if os.path.isdir(os.path.join(spec, 'pose')):
    return lambda key, hw: pose.legacy_to_image(deepfashion.read_pose_txt(deepfashion.pose_path(spec, key)), hw)
  raise FileNotFoundError(f'--keypoints {spec}: neither an annotation CSV nor a directory with pose/')


def lst_key(name: str) -> str:
  """A .lst line -> a key find_image understands (DeepFashion fashion names -> img/... paths)."""
  try:
    return names.parse_fashion_name(name)
  except ValueError:
    return name
