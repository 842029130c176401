"""Fréchet Inception Distance: statistics, distance, cached reference statistics.

  FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))

computed in float64 from the 2048-d pool3 features of `metrics.inception` (the standard TF
FID network). `method='sqrtm'` is the usual scipy.linalg.sqrtm formulation (TTUR /
pytorch-fid). `method='eigh'` uses tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2), exact for
covariance (symmetric PSD) matrices and an order of magnitude faster for D=2048 on CPU.

PIDM's published numbers used torchvision's ImageNet Inception, not this network
(reference notes 1f): tables must say which network produced a number.
"""

import hashlib
import json
import os
import warnings
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import scipy.linalg
from PIL import Image
from tqdm import tqdm

from reposedm_jax.metrics.lpips import PIDM_SIZE_WH

_CACHE_VERSION = 1
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def compute_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, N - 1) covariance of [N, D] features, in float64.

  Returns:
    (mu [D], sigma [D, D]).
  """
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'need [N >= 2, D] features, got shape {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm_checked(a: np.ndarray, tol: float) -> Optional[np.ndarray]:
  """sqrtm(a), or None when it is non-finite or X @ X misses `a` (singular products)."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # scipy warns on singular input; we test the result.
    root = scipy.linalg.sqrtm(a)
  if not np.all(np.isfinite(root)):
    return None
  residual = np.linalg.norm(root @ root - a) / max(np.linalg.norm(a), 1e-300)
  return root if residual <= tol else None


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
  root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  inner = root1 @ sigma2 @ root1
  lam = np.linalg.eigvalsh((inner + inner.T) / 2)
  return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = 'sqrtm', imag_atol: float = 1e-3,
                     sqrtm_tol: float = 1e-5) -> float:
  """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Args:
    mu1, mu2: [D] means.
    sigma1, sigma2: [D, D] covariances.
    eps: With 'sqrtm', when sqrtm(sigma1 @ sigma2) is non-finite or inaccurate (a singular
      product), retry with eps * I added to both covariances (as pytorch-fid does).
    method: 'sqrtm' (standard) or 'eigh' (symmetric form, see module docstring).
    imag_atol: 'sqrtm' can return tiny imaginary parts from rounding; they are dropped
      unless a diagonal entry's exceeds this, which raises.
    sqrtm_tol: Relative residual |X X - A|_F / |A|_F above which the root counts as failed.

  Returns:
    The distance (a Python float).

  Raises:
    ValueError: Shape mismatch, a large imaginary component, or a failed root.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'shape mismatch: mu {mu1.shape} vs {mu2.shape}, '
                     f'sigma {sigma1.shape} vs {sigma2.shape}')
  diff = mu1 - mu2
  if method == 'eigh':
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  elif method == 'sqrtm':
    covmean = _sqrtm_checked(sigma1 @ sigma2, sqrtm_tol)
    if covmean is None:
      warnings.warn(f'FID: sqrtm of the covariance product failed (singular?); adding {eps} * I.')
      offset = eps * np.eye(d)
      covmean = _sqrtm_checked((sigma1 + offset) @ (sigma2 + offset), sqrtm_tol)
      if covmean is None:
        raise ValueError('FID: sqrtm failed even after adding eps * I to the covariances.')
    if np.iscomplexobj(covmean):
      worst = np.max(np.abs(np.diagonal(covmean).imag))
      if worst > imag_atol:
        raise ValueError(f'FID: sqrtm has an imaginary component of {worst:.3g} on the diagonal.')
      covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
  else:
    raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _trace_sqrt_product_gram(features1: np.ndarray, features2: np.ndarray) -> float:
  # With A_i the centred features / sqrt(N_i - 1), S_i = A_i^T A_i and the non-zero
  # eigenvalues of S1 S2 = A1^T (A1 A2^T A2) are those of (A1 A2^T)(A1 A2^T)^T, so
  # tr (S1 S2)^(1/2) is the nuclear norm of the small [N1, N2] matrix A1 A2^T.
  a1, a2 = (np.asarray(f, np.float64) for f in (features1, features2))
  a1 = (a1 - a1.mean(0)) / np.sqrt(len(a1) - 1)
  a2 = (a2 - a2.mean(0)) / np.sqrt(len(a2) - 1)
  return float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())


def fid_from_features(features1: np.ndarray, features2: np.ndarray, method: str = 'sqrtm',
                      **kwargs) -> float:
  """FID between two [N, D] feature sets.

  Args:
    features1, features2: [N1, D] and [N2, D].
    method: 'sqrtm' or 'eigh' (see `frechet_distance`, which gets `kwargs`), or 'gram':
      exact from the features through an [N1, N2] SVD, no D x D root; for N << D (small
      sets, tests), where the other methods spend their time on a rank-deficient 2048^2.

  Returns:
    The distance (a Python float).
  """
  (mu1, sigma1), (mu2, sigma2) = compute_statistics(features1), compute_statistics(features2)
  if method != 'gram':
    return frechet_distance(mu1, sigma1, mu2, sigma2, method=method, **kwargs)
  diff = mu1 - mu2
  tr_covmean = _trace_sqrt_product_gram(features1, features2)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def list_images(directory: str) -> list:
  """Sorted paths of the image files directly inside `directory`."""
  return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                if n.lower().endswith(IMAGE_EXTENSIONS))


def load_image(path: str, pidm_resize: bool = False) -> np.ndarray:
  """An RGB image as [H, W, 3]: uint8, or float32 0..255 after PIDM's resize.

  `pidm_resize` reproduces PIDM's FID input (reference notes 1f): float32
  `cv2.resize(img, (176, 256))` (W x H, INTER_LINEAR) before Inception's own resize.
  """
  with Image.open(path) as im:
    img = np.asarray(im.convert('RGB'))
  if pidm_resize:
    import cv2  # pylint: disable=g-import-not-at-top  # Only the PIDM protocol needs OpenCV.
    img = cv2.resize(img.astype(np.float32), PIDM_SIZE_WH, interpolation=cv2.INTER_LINEAR)
  return img


def _cache_key(paths: Sequence[str], settings: dict) -> str:
  files = []
  for p in sorted(paths):
    st = os.stat(p)
    files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
  blob = json.dumps({'version': _CACHE_VERSION, 'files': files, 'settings': settings},
                    sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()


def _extract(paths: Sequence[str], extractor: Callable[[np.ndarray], np.ndarray],
             batch_size: int, pidm_resize: bool, progress: bool) -> np.ndarray:
  feats, batch = [], []

  def flush():
    if batch:
      feats.append(np.asarray(extractor(np.stack(batch)), np.float64))
      batch.clear()

  with tqdm(total=len(paths), desc='FID features', unit='img', disable=not progress) as bar:
    for p in paths:
      img = load_image(p, pidm_resize)
      # A batch holds one image shape; a new shape closes the batch.
      if batch and (img.shape != batch[0].shape or len(batch) == batch_size):
        flush()
      batch.append(img)
      bar.update(1)
    flush()
  return np.concatenate(feats)


def reference_statistics(image_paths: Sequence[str], *, extractor: Any,
                         batch_size: int = 32, pidm_resize: bool = False,
                         cache_dir: Optional[str] = None,
                         progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of the pool3 features of a set of image files, cached on disk.

  Args:
    image_paths: Image files (processed in sorted order; the statistics do not depend on it).
    extractor: [N, H, W, 3] -> [N, 2048] callable with a `cache_id` string naming its
      weights and preprocessing, e.g. `inception.FeatureExtractor(variables)` (standard FID).
    batch_size: Images per extractor call.
    pidm_resize: Resize like PIDM's evaluation first (see `load_image`).
    cache_dir: If given, statistics are stored as `fid_stats_<key>.npz` there. The key is
      a sha256 of the sorted absolute paths with their sizes and mtimes, `pidm_resize`
      and the extractor's `cache_id`, so any changed, added or removed file (or setting)
      gives a new key and a stale file is never read.
    progress: Show a tqdm progress bar.

  Returns:
    (mu [2048], sigma [2048, 2048]) float64.
  """
  paths = sorted(image_paths)
  if len(paths) < 2:
    raise ValueError(f'need at least 2 images, got {len(paths)}')
  cache_file = key = None
  if cache_dir is not None:
    cache_id = getattr(extractor, 'cache_id', None)
    if not isinstance(cache_id, str):
      raise ValueError('caching needs an extractor with a `cache_id` string (weights + settings)')
    key = _cache_key(paths, {'pidm_resize': pidm_resize, 'extractor': cache_id})
    cache_file = os.path.join(cache_dir, f'fid_stats_{key[:32]}.npz')
    if os.path.isfile(cache_file):
      with np.load(cache_file, allow_pickle=False) as data:
        if str(data['key']) == key:
          return data['mu'], data['sigma']
  mu, sigma = compute_statistics(_extract(paths, extractor, batch_size, pidm_resize, progress))
  if cache_file is not None:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{cache_file}.{os.getpid()}.tmp.npz'
    np.savez(tmp, mu=mu, sigma=sigma, key=np.asarray(key), count=np.asarray(len(paths)))
    os.replace(tmp, cache_file)  # Atomic: a crash never leaves a truncated cache behind.
  return mu, sigma
