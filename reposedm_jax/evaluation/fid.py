"""FID inside the evaluation pass: Inception features of generated and real images, reference sets.

Real images (targets and copied sources) are keyed by their image key and featurised once each, even
when many pairs share them. Every Inception call gets a full batch (the last one padded) so the jitted
network compiles once per input shape.

Reference sets ('eval.fid_reference'):
* 'test_targets': the targets of the evaluated pairs, one row per pair (the pass computes them anyway).
* 'train_images': every training image (PIDM's protocol, reference notes 1f: DeepFashion's train.lst,
  48,674 images, not the 37,016 of train_pairs.txt, which gives very different numbers); its
  statistics (mu, sigma) are cached in `eval.fid_cache_dir` under a sha256 of the image list, each
  file's size and mtime (folder stores) or the LMDB's, the resolution, the resize protocol and the
  Inception weights, so a changed, added or removed image never reuses a stale file.

PIDM's resize (`fid_pidm_resize`, DeepFashion): every image reaches the Inception as float32
`cv2.resize(img, (176, 256))` (INTER_LINEAR, no uint8 rounding); the reference images first become
PIDM's stored form, a PIL-bicubic stretch to 256x256 (`train_256x256_pngs/`).
"""

import dataclasses
import hashlib
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.metrics import fid as fid_lib
from reposedm_jax.metrics.lpips import PIDM_SIZE_WH

# config.eval.protocol: 'standard' (every key as given) or 'pidm' (PIDM's Table 1: FID vs every training image,
# on DeepFashion also PIDM's resize before FID and LPIPS; engine.resolve_settings applies it).
PROTOCOLS = ('standard', 'pidm')
# config.eval.fid_reference: '' = no FID, else a reference set of the module docstring.
FID_REFERENCES = ('', 'test_targets', 'train_images')
_STATS_VERSION = 1
PIDM_STORED_HW = (256, 256)


def pidm_inception_input(img_u8: np.ndarray, stretch_first: bool) -> np.ndarray:
  """PIDM's FID input: [H, W, 3] uint8 -> float32 [256, 176, 3] on 0..255 (see module docstring)."""
  import cv2  # pylint: disable=import-outside-toplevel
  if stretch_first and img_u8.shape[:2] != PIDM_STORED_HW:
    img_u8 = np.asarray(Image.fromarray(img_u8).resize(PIDM_STORED_HW[::-1], Image.BICUBIC))
  if img_u8.shape[:2] == PIDM_SIZE_WH[::-1]:
    return img_u8.astype(np.float32)  # cv2's resize to the same size is the identity
  return cv2.resize(img_u8.astype(np.float32), PIDM_SIZE_WH, interpolation=cv2.INTER_LINEAR)


@dataclasses.dataclass
class TrainReference:
  """A 'train_images' reference: image keys, a reader, and what identifies the set for the cache.

  `read(key)` returns the image as the protocol feeds it to the Inception (uint8 at model resolution,
  or PIDM's float input); `identity` lists everything that changes the images (paths with sizes and
  mtimes, or a store's name and modification time).
  """
  keys: List[str]
  read: Callable[[str], np.ndarray]
  identity: list


class FeatureBank:
  """Collects Inception features: generated images per pair, real images once per key."""

  def __init__(self, extractor, batch_size: int, pidm_resize: bool):
    self.extractor, self.batch_size, self.pidm_resize = extractor, batch_size, pidm_resize
    self.gen: List[np.ndarray] = []
    self.real: Dict[str, np.ndarray] = {}
    self._pending: Dict[str, np.ndarray] = {}

  def _prep(self, img_u8: np.ndarray) -> np.ndarray:
    return pidm_inception_input(img_u8, stretch_first=False) if self.pidm_resize else img_u8

  def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """[N, 2048] features of N images, in full batches (the last padded by repeating an image)."""
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = np.stack(images[start:start + self.batch_size])
      n = len(chunk)
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
      out.append(np.asarray(self.extractor(chunk), np.float64)[:n])
    return np.concatenate(out) if out else np.zeros((0, 2048))

  def add_generated(self, gen_u8: np.ndarray) -> None:
    self.gen.append(self.features([self._prep(x) for x in gen_u8]))

  def add_real(self, keys: Sequence[str], images_u8: np.ndarray) -> None:
    for k, img in zip(keys, images_u8):
      if k not in self.real and k not in self._pending:
        self._pending[k] = self._prep(img)
    if len(self._pending) >= self.batch_size:
      self.flush()

  def flush(self) -> None:
    keys = list(self._pending)
    feats = self.features([self._pending[k] for k in keys])
    self.real.update(zip(keys, feats))
    self._pending.clear()

  def rows(self, keys: Sequence[str]) -> np.ndarray:
    """[len(keys), 2048]: one row per key, repeats included (a pair-weighted set)."""
    self.flush()
    return np.stack([self.real[k] for k in keys])


def train_statistics(ref: TrainReference, bank: FeatureBank, cache_dir: str, settings_id: dict):
  """(mu, sigma, count) of a 'train_images' reference, from `cache_dir` when the same set was seen."""
  cache = None
  if cache_dir:
    blob = json.dumps({'v': _STATS_VERSION, 'identity': ref.identity, 'keys': sorted(ref.keys),
                       'extractor': bank.extractor.cache_id, 'settings': settings_id}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    cache = os.path.join(cache_dir, f'fid_train_stats_{key[:32]}.npz')
    if os.path.isfile(cache):
      with np.load(cache, allow_pickle=False) as d:
        if str(d['key']) == key:
          return d['mu'], d['sigma'], int(d['count'])
  chunks = []
  step = bank.batch_size * 4
  for start in tqdm(range(0, len(ref.keys), step), desc='FID reference', unit='chunk'):
    chunks.append(bank.features([ref.read(k) for k in ref.keys[start:start + step]]))
  mu, sigma = fid_lib.compute_statistics(np.concatenate(chunks))
  if cache:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{cache}.{os.getpid()}.tmp.npz'
    np.savez(tmp, mu=mu, sigma=sigma, count=np.asarray(len(ref.keys)), key=np.asarray(key))
    os.replace(tmp, cache)  # atomic: a crash never leaves a truncated cache
  return mu, sigma, len(ref.keys)


def fid_against(features: np.ndarray, reference) -> float:
  """FID of [N, 2048] features vs a reference given as features [M, 2048] or (mu, sigma, count).

  Small sets use exact forms that avoid a rank-deficient 2048^2 sqrtm: the Gram form against features,
  the symmetric eigh form against cached statistics; 2048+ images on both sides use the usual sqrtm.
  """
  if isinstance(reference, tuple):
    mu_r, sigma_r, count = reference
    mu, sigma = fid_lib.compute_statistics(features)
    method = 'sqrtm' if min(len(features), count) >= 2048 else 'eigh'
    return fid_lib.frechet_distance(mu, sigma, mu_r, sigma_r, method=method)
  method = 'gram' if min(len(features), len(reference)) < 2048 else 'sqrtm'
  return fid_lib.fid_from_features(features, reference, method=method)


def read_image_list(path: str, exists: Callable[[str], bool], to_key: Callable[[str], str]) -> List[str]:
  """Image keys of a `.lst` file (one flat fashion name per line), each checked with `exists`.

  Raises:
    BadExampleError: 'file:line: field 'image'' for a name whose image is missing.
  """
  keys = []
  with open(path) as f:
    for n, line in enumerate(f, start=1):
      name = line.strip()
      if not name:
        continue
      key = to_key(name)
      if not exists(key):
        raise BadExampleError(path, f'image {key!r} of {name!r} not found', line=n, field='image')
      keys.append(key)
  if not keys:
    raise BadExampleError(path, 'empty image list', field='images')
  return keys


def folder_identity(paths: Sequence[Optional[str]]) -> list:
  """[path, size, mtime_ns] of each existing file (the cache key material of a folder store)."""
  out = []
  for p in paths:
    if p and os.path.isfile(p):
      st = os.stat(p)
      out.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
  return out
