"""Mask-SSIM and Mask-LPIPS: the Market-1501 body-region metrics of PATN, GFLA and PIDM.

Both images of a pair are multiplied by the body mask of the *target* pose (`data.pose.limb_mask`:
PATN's `produce_ma_mask` limbs, 4-px half-width, joint disks, 5x5 closing) and then scored as whole
images, so the background counts as a perfect match:

* Mask-SSIM: on uint8 images times the mask (background 0, black) with PATN's call, skimage SSIM with
  a Gaussian window (sigma 1.5), population covariance and `data_range = max - min` of the *masked
  generated* image (not 255; it differs for a masked image without pure black or white).
  Protocol name 'mask_ssim_gaussian_patn'.
* Mask-LPIPS: LPIPS on [-1, 1] images times the mask (background 0, mid grey). Protocol name
  'mask_lpips_<net>'.
"""

import numpy as np

from reposedm_jax.data import pose
from reposedm_jax.metrics import lpips as lpips_lib
from reposedm_jax.metrics import ssim as ssim_lib

MASK_SSIM_PROTOCOL = 'mask_ssim_gaussian_patn'


def target_masks(tgt_kpts: np.ndarray, hw) -> np.ndarray:
  """[B, 18, 2] OpenPose (x, y) at resolution hw (-1 missing) -> float32 [B, H, W, 1] masks in {0, 1}."""
  return np.stack([pose.limb_mask(k, hw[0], hw[1]) for k in np.asarray(tgt_kpts)])


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
