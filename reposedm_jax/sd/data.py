"""RePoseSD's text-image-pose data in HumanSD's layout (LAION-Human for training, Human-Art for validation).

On disk (as HumanSD's README and `ldm/data/humansd.py` lay it out):
  <root>/<mapping file>.json   {key: {"img_path": rel. to root, "pose_path": rel. to root, "prompt": str}, ...}
  <root>/images/...jpg         LAION-Aesthetics images (LAION-Human) / Human-Art's images/<scene>/<category>/
  <root>/pose/...npz           `arr_0`: an object array of per-person dicts {"keypoints": [17, 3] (x, y, score)}
                               in the image's pixels, COCO-17 order (mmpose's bottom-up output, saved as is)
LAION-Human ships `mapping_file_training.json`; Human-Art `mapping_file_training.json` and
`mapping_file_validation.json`. The pose `.npz` holds pickled dicts, so it is read with the project's restricted
unpickler (numpy's reconstruct functions only): a file naming any other global is refused, never executed. A
plain float array [P, 17, 3] as `arr_0` is read too.

An example becomes (HumanSD's preprocessing, made deterministic for evaluation):
  image     the shorter side resized to `size` (area filter), a size x size crop (random in training, centred in
            evaluation), an optional horizontal flip with COCO's left/right joints swapped (HumanSD's
            albumentations flip moves points without swapping them), in [-1, 1];
  keypoints [max_persons, 17, 3] in the crop's pixels, a joint kept when its score > `threshold` and it lies
            inside the crop, else (-1, -1, 0) (HumanSD's marker);
  pose image HumanSD's rendering of every person: 16 bones in seaborn's 16-colour 'hls' palette, lines of width
            10 at 512 px (scaled with `size`), end discs of half that width, black background, in [-1, 1].
"""

import colorsys
import dataclasses
import json
import os
import zipfile
from typing import Iterator, Sequence

import cv2
import numpy as np
from numpy.lib import format as npy_format
from PIL import Image

from reposedm_jax.convert import torch_checkpoint
from reposedm_jax.data.errors import BadExampleError

NUM_JOINTS = 17
# HumanSD's 16 bones (config `pose_skeleton`: [colour index, joint a, joint b]), COCO-17 indices.
BONES = ((0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8), (7, 9), (8, 10), (5, 11), (6, 12),
         (11, 13), (12, 14), (13, 15), (14, 16))
COCO_FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
MAPPING_FILES = {'laion_human': 'mapping_file_training.json', 'humanart_train': 'mapping_file_training.json',
                 'humanart_val': 'mapping_file_validation.json'}


def hls_palette(n: int = len(BONES), lightness: float = 0.6, saturation: float = 0.65) -> np.ndarray:
  """seaborn's `color_palette('hls', n)`: n hues evenly spaced from 0.01, as uint8 RGB [n, 3]."""
  hues = (np.linspace(0.0, 1.0, n + 1)[:-1] + 0.01) % 1.0
  return np.asarray([[int(255 * c) for c in colorsys.hls_to_rgb(h, lightness, saturation)] for h in hues], np.uint8)


PALETTE = hls_palette()


# ----------------------------------------------------------------------------- files

def read_pose_npz(path: str) -> np.ndarray:
  """A HumanSD pose file -> float32 [P, 17, 3] (x, y, score); P = 0 for an image with nobody detected."""
  try:
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
      if 'arr_0.npy' not in names:
        raise BadExampleError(path, f'no arr_0 in the .npz (has {names[:5]})', field='arr_0')
      with zf.open('arr_0.npy') as f:
        version = npy_format.read_magic(f)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        payload = f.read()
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    if isinstance(e, BadExampleError):
      raise
    raise BadExampleError(path, f'not a readable .npz ({type(e).__name__}: {str(e)[:120]})') from None
  if dtype.hasobject:
    try:
      people = torch_checkpoint.loads_restricted(payload)
    except Exception as e:  # noqa: BLE001 -- UnsafePickleError or a truncated pickle: both are the file's fault
      raise BadExampleError(path, f'arr_0 is not a pickle of numpy arrays ({type(e).__name__}: {e})',
                            field='arr_0') from None
    people = list(np.asarray(people, dtype=object).reshape(-1))
    out = []
    for i, person in enumerate(people):
      kp = person.get('keypoints') if isinstance(person, dict) else None
      kp = None if kp is None else np.asarray(kp, np.float32)
      if kp is None or kp.shape != (NUM_JOINTS, 3):
        raise BadExampleError(path, f'person {i}: expected a dict with "keypoints" [17, 3], got '
                              f'{type(person).__name__} {None if kp is None else kp.shape}', field='keypoints')
      out.append(kp)
    arr = np.stack(out) if out else np.zeros((0, NUM_JOINTS, 3), np.float32)
  else:
    try:
      arr = np.frombuffer(payload, dtype=dtype, count=int(np.prod(shape))).reshape(shape, order='F' if fortran else 'C')
    except ValueError as e:
      raise BadExampleError(path, f'arr_0 is truncated or damaged ({e})', field='arr_0') from None
    arr = np.asarray(arr, np.float32)
    if arr.size == 0:  # np.savez(path, []) for an image with nobody detected
      arr = arr.reshape(0, NUM_JOINTS, 3)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
      raise BadExampleError(path, f'expected [P, 17, 3] keypoints, got {arr.shape}', field='arr_0')
  if not np.all(np.isfinite(arr)):
    raise BadExampleError(path, 'non-finite keypoint values', field='keypoints')
  return arr


def write_pose_npz(path: str, people: np.ndarray) -> None:
  """HumanSD's own format: np.savez of an object array of {"keypoints": [17, 3]} dicts (and 'score')."""
  objs = np.empty(len(people), dtype=object)
  for i, kp in enumerate(people):
    objs[i] = {'keypoints': np.asarray(kp, np.float32), 'score': float(np.mean(kp[:, 2]))}
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  np.savez(path, objs)


@dataclasses.dataclass(frozen=True)
class Record:
  key: str
  image: str  # absolute paths
  pose: str
  prompt: str


def read_mapping(root: str, mapping_file: str) -> list[Record]:
  """The mapping JSON (in `root`, or a path) -> records, with a one-line error naming the entry and field."""
  path = mapping_file if os.path.isabs(mapping_file) else os.path.join(root, mapping_file)
  if not os.path.isfile(path):
    raise BadExampleError(path, f'no such mapping file (expected one of {sorted(set(MAPPING_FILES.values()))} '
                          f'in {root})')
  try:
    with open(path, encoding='utf-8') as f:
      mapping = json.load(f)
  except json.JSONDecodeError as e:
    raise BadExampleError(path, f'not JSON: {e.msg}', line=e.lineno) from None
  if not isinstance(mapping, dict):
    raise BadExampleError(path, f'expected an object {{key: entry}}, got {type(mapping).__name__}')
  records = []
  for key, entry in mapping.items():
    for field in ('img_path', 'pose_path', 'prompt'):
      if not isinstance(entry, dict) or not isinstance(entry.get(field), str):
        raise BadExampleError(path, f'entry {key!r}: missing or non-string', field=field)
    records.append(Record(str(key), os.path.join(root, entry['img_path']), os.path.join(root, entry['pose_path']),
                          entry['prompt']))
  if not records:
    raise BadExampleError(path, 'the mapping is empty')
  return records


# ----------------------------------------------------------------------------- one example

def flip_keypoints(kpts: np.ndarray, width: int) -> np.ndarray:
  """Mirror [P, 17, 3] keypoints in an image of `width` pixels, swapping left and right joints."""
  out = kpts[:, COCO_FLIP].copy()
  vis = out[..., 2] > 0
  out[..., 0] = np.where(vis, width - 1 - out[..., 0], -1.0)
  return out


def crop_example(image: np.ndarray, people: np.ndarray, size: int, *, max_persons: int, threshold: float,
                 rng: np.random.Generator | None = None, flip: bool = False):
  """uint8 image [H, W, 3] + people [P, 17, 3] -> (uint8 [size, size, 3], float32 [max_persons, 17, 3]).

  rng None = the centred crop (evaluation); else a random crop. Kept joints: score > threshold, inside the crop.
  """
  h, w = image.shape[:2]
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
  if rng is None:
    y0, x0 = (nh - size) // 2, (nw - size) // 2
  else:
    y0, x0 = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
  crop = resized[y0:y0 + size, x0:x0 + size]
  kp = np.full((max_persons, NUM_JOINTS, 3), [-1.0, -1.0, 0.0], np.float32)
  for p, person in enumerate(people[:max_persons]):
    x = (person[:, 0] + 0.5) * (nw / w) - 0.5 - x0
    y = (person[:, 1] + 0.5) * (nh / h) - 0.5 - y0
    keep = (person[:, 2] > threshold) & (x >= 0) & (y >= 0) & (x <= size - 1) & (y <= size - 1)
    kp[p] = np.where(keep[:, None], np.stack([x, y, person[:, 2]], -1), kp[p])
  if flip:
    crop, kp = crop[:, ::-1], flip_keypoints(kp, size)
  return np.ascontiguousarray(crop), kp


def render_pose(kpts: np.ndarray, size: int, width: int | None = None) -> np.ndarray:
  """HumanSD's pose image of [P, 17, 3] keypoints (score > 0 = present) -> uint8 [size, size, 3]."""
  width = max(1, round(10 * size / 512)) if width is None else width
  canvas = np.zeros((size, size, 3), np.uint8)
  for person in kpts:
    for colour, (a, b) in zip(PALETTE, BONES):
      if person[a, 2] > 0 and person[b, 2] > 0:
        pa, pb = tuple(int(v) for v in person[a, :2]), tuple(int(v) for v in person[b, :2])
        c = tuple(int(v) for v in colour)
        cv2.line(canvas, pa, pb, c, width)
        cv2.circle(canvas, pa, width // 2, c, -1)
        cv2.circle(canvas, pb, width // 2, c, -1)
  return canvas


def to_unit(u8: np.ndarray) -> np.ndarray:
  return u8.astype(np.float32) / 127.5 - 1.0


def load_example(rec: Record, size: int, *, max_persons: int, threshold: float, rng=None, hflip: float = 0.0):
  try:
    with Image.open(rec.image) as im:
      image = np.asarray(im.convert('RGB'))
  except (OSError, ValueError) as e:
    raise BadExampleError(rec.image, f'unreadable image for entry {rec.key!r} ({type(e).__name__})',
                          field='img_path') from None
  people = read_pose_npz(rec.pose) if os.path.isfile(rec.pose) else None
  if people is None:
    raise BadExampleError(rec.pose, f'no such pose file for entry {rec.key!r}', field='pose_path')
  flip = rng is not None and hflip > 0 and rng.random() < hflip
  crop, kp = crop_example(image, people, size, max_persons=max_persons, threshold=threshold, rng=rng, flip=flip)
  return {'image': to_unit(crop), 'pose_image': to_unit(render_pose(kp, size)), 'keypoints': kp,
          'prompt': rec.prompt}


# ----------------------------------------------------------------------------- batches

def batch_at(records: Sequence[Record], step: int, batch_size: int, *, seed: int, size: int, max_persons: int,
             threshold: float, hflip: float) -> dict:
  """The training batch of `step`: a function of (seed, step) alone, so a resumed run sees the same batches."""
  rng = np.random.default_rng([seed, step])
  idx = rng.choice(len(records), size=batch_size, replace=len(records) < batch_size)
  return stack([load_example(records[i], size, max_persons=max_persons, threshold=threshold, rng=rng, hflip=hflip)
                for i in idx])


def eval_batches(records: Sequence[Record], batch_size: int, *, size: int, max_persons: int,
                 threshold: float) -> Iterator[tuple[list[Record], dict]]:
  """Every record once, centred crops, no flips; the last batch may be short."""
  for start in range(0, len(records), batch_size):
    chunk = list(records[start:start + batch_size])
    yield chunk, stack([load_example(r, size, max_persons=max_persons, threshold=threshold) for r in chunk])


def stack(examples: list[dict]) -> dict:
  return {'image': np.stack([e['image'] for e in examples]), 'pose_image': np.stack([e['pose_image'] for e in examples]),
          'keypoints': np.stack([e['keypoints'] for e in examples]), 'prompt': [e['prompt'] for e in examples]}
