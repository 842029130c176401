"""Mask-SSIM and Mask-LPIPS: the Market-1501 body-region metrics of PATN, GFLA and PIDM.

Both images of a pair are multiplied by the body mask of the *target* pose and then scored as whole
images, so the background counts as a perfect match. The mask is PATN's `produce_ma_mask` pixel for
pixel (`body_mask`): for each of the 23 limbs of `data.pose.MARKET_MASK_LIMBS` with both ends present,
the quadrilateral of half-width 4 px around the segment, rasterised like `skimage.draw.polygon` (pixel
centres at integer coordinates, points on an edge included), plus a disk of
radius 4 at every present joint (`skimage.draw.disk`: strictly inside), then a 5x5 closing (max then min
filter with reflected borders, as skimage's dilation / erosion). `data.pose.limb_mask` (OpenCV fill on
rounded vertices) differs from it on ~8% of the mask's pixels, too much for a thin 128x64 body mask.

* Mask-SSIM: on uint8 images times the mask (background 0, black) with PATN's call, skimage SSIM with
  a Gaussian window (sigma 1.5), population covariance and `data_range = max - min` of the *masked
  generated* image (not 255; it differs for a masked image without pure black or white).
  Protocol name 'mask_ssim_gaussian_patn'.
* Mask-LPIPS: LPIPS on [-1, 1] images times the mask (background 0, mid grey). Protocol name
  'mask_lpips_<net>'.
"""

import numpy as np
from scipy import ndimage

from reposedm_jax.data import pose
from reposedm_jax.data.keypoints import is_missing
from reposedm_jax.metrics import lpips as lpips_lib
from reposedm_jax.metrics import ssim as ssim_lib

MASK_SSIM_PROTOCOL = 'mask_ssim_gaussian_patn'


def _in_convex_polygon(quad: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Points (x, y) inside or on the boundary of the convex polygon `quad` [N, 2] (skimage counts both)."""
  inside = np.ones(x.shape, bool)
  edges = np.roll(quad, -1, axis=0) - quad
  orient = np.sign(edges[0, 0] * edges[1, 1] - edges[0, 1] * edges[1, 0])
  for (x0, y0), (ex, ey) in zip(quad, edges):
    inside &= orient * (ex * (y - y0) - ey * (x - x0)) >= 0
  return inside


def body_mask(kpts_xy: np.ndarray, hw, radius: float = 4.0) -> np.ndarray:
  """PATN's produce_ma_mask (see module docstring): [18, 2] OpenPose (x, y), -1 missing -> bool [H, W]."""
  h, w = hw
  kp = np.asarray(kpts_xy, np.float64)
  missing = is_missing(kp)
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  mask = np.zeros((h, w), bool)
  for a, b in pose.MARKET_MASK_LIMBS:
    if missing[a] or missing[b]:
      continue
    d = kp[a] - kp[b]
    norm = np.linalg.norm(d)
    if norm == 0:
      continue  # PATN's division gives NaN vertices, which rasterise to nothing
    normal = radius * np.array([-d[1], d[0]]) / norm
    quad = np.stack([kp[a] + normal, kp[a] - normal, kp[b] - normal, kp[b] + normal])
    mask |= _in_convex_polygon(quad, x, y)
  for cx, cy in kp[~missing]:
    mask |= ((y - cy) / radius) ** 2 + ((x - cx) / radius) ** 2 < 1.0
  closed = ndimage.maximum_filter(mask, size=5, mode='reflect')
  return ndimage.minimum_filter(closed, size=5, mode='reflect')


def target_masks(tgt_kpts: np.ndarray, hw) -> np.ndarray:
  """[B, 18, 2] OpenPose (x, y) at resolution hw (-1 missing) -> float32 [B, H, W, 1] masks in {0, 1}."""
  return np.stack([body_mask(k, hw) for k in np.asarray(tgt_kpts)]).astype(np.float32)[..., None]


def masked_uint8(images_u8: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """uint8 images times {0, 1} masks, still uint8 (PATN multiplies the uint8 arrays)."""
  return (np.asarray(images_u8) * (np.asarray(masks) > 0.5)).astype(np.uint8)


def mask_ssim(a_u8: np.ndarray, b_u8: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """Per-pair Mask-SSIM, [B] float32, with PATN's data range taken from `a` (the generated image).

  Args:
    a_u8: generated (or copied source) images, uint8 [B, H, W, 3].
    b_u8: target images, same shape.
    masks: [B, H, W, 1] target body masks (`target_masks`).
  """
  a, b = masked_uint8(a_u8, masks), masked_uint8(b_u8, masks)
  rng = a.reshape(len(a), -1).max(axis=1).astype(np.float32) - a.reshape(len(a), -1).min(axis=1)
  # SSIM with data range L equals SSIM at L = 1 of the images divided by L (C1, C2 scale with L^2);
  # a flat masked image (range 0) falls back to L = 1, where skimage would divide by zero.
  scale = (1.0 / np.maximum(rng, 1.0))[:, None, None, None]
  return np.asarray(ssim_lib.ssim(a * scale, b * scale, variant='gaussian', data_range=1.0))


def mask_lpips(variables, a_u8: np.ndarray, b_u8: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """Per-pair Mask-LPIPS, [B] float32: LPIPS of (x / 127.5 - 1) * mask for both images."""
  m = (np.asarray(masks) > 0.5).astype(np.float32)
  a = (np.asarray(a_u8, np.float32) / 127.5 - 1.0) * m
  b = (np.asarray(b_u8, np.float32) / 127.5 - 1.0) * m
  return np.asarray(lpips_lib.lpips_distance(variables, a, b))
