"""Pose-condition rendering and keypoint frame transforms (pure NumPy/OpenCV, host side).

Everything here is channel-last (H, W, C). Keypoints are [K, 2] arrays of (x, y) pixel
coordinates, x = column, y = row, with (-1, -1) marking a missing joint (see keypoints.py).

The PIDM rendering (`render_pidm_pose`) reproduces PIDM's `get_label_tensor` call for call,
because the rasterisation rules (integer truncation of centres and angles, OpenCV polygon
filling, uint8 rounding of the blend) are part of the conditioning signal the model learns.
"""

import math

import cv2
import numpy as np

from reposedm_jax.data.keypoints import (
    MISSING, NUM_DRAWN_LIMBS, OPENPOSE_COLORS_BGR, OPENPOSE_FLIP_PERM, OPENPOSE_LIMBS,
    is_missing)

STICKWIDTH = 4
JOINT_RADIUS = 4
NUM_PIDM_CHANNELS = 3 + NUM_DRAWN_LIMBS

# Limb pairs of the PATN/PIDM `produce_ma_mask` (Market Mask-SSIM/LPIPS), 0-based: the 17
# drawn OpenPose limbs plus neck-ears, hip-hip, the two hip-shoulder diagonals and ear-ear.
MARKET_MASK_LIMBS = OPENPOSE_LIMBS[:17] + (
    (1, 16), (1, 17), (8, 11), (11, 5), (8, 2), (16, 17))


def _as_kpts(kpts_xy) -> np.ndarray:
  kpts = np.asarray(kpts_xy, dtype=np.float64)
  if kpts.ndim != 2 or kpts.shape[1] != 2:
    raise ValueError(f'keypoints must be [K, 2], got {kpts.shape}')
  return kpts


def _u8_to_unit(image: np.ndarray) -> np.ndarray:
  """uint8 -> float32 / 255, the same correctly rounded float32 division as to_tensor."""
  return np.divide(image, np.float32(255.0), dtype=np.float32)


def _keep_missing(out: np.ndarray, kpts: np.ndarray) -> np.ndarray:
  out[is_missing(kpts)] = MISSING
  return out.astype(np.float32)


def legacy_to_image(kpts_xy, scaled_hw, crop_xy=(0, 0)) -> np.ndarray:
  """Maps keypoints from the legacy 256x256 DeepFashion frame into a (scaled, cropped) image.

  This is PIDM's `trans_keypoins`: the legacy frame has 40-px white bars left and right, so
  x -> (x - 40) * Ws / 176 - crop_x and y -> y * Hs / 256 - crop_y, where (Hs, Ws) is the
  image size after the random up-scale and before the crop (PIDM's int(h * (1 + s))).
  The arithmetic follows PIDM's float64 operation order so that later int() truncations
  agree; the result is then cast to float32.

  Args:
    kpts_xy: [18, 2] float (x, y) in the legacy frame, -1 = missing.
    scaled_hw: (Hs, Ws) ints, the image size the keypoints are scaled to.
    crop_xy: (crop_x, crop_y) offset of the crop taken from the scaled image.

  Returns:
    [18, 2] float32 pixel (x, y); a joint with either coordinate -1 becomes exactly (-1, -1).
  """
  kpts = _as_kpts(kpts_xy)
  hs, ws = scaled_hw
  out = np.empty_like(kpts)
  out[:, 0] = (kpts[:, 0] - 40.0) * (1.0 / 176.0 * ws) - crop_xy[0]
  out[:, 1] = kpts[:, 1] * (1.0 / 256.0 * hs) - crop_xy[1]
  return _keep_missing(out, kpts)


def image_to_image(kpts_xy, src_hw, scaled_hw, crop_xy=(0, 0)) -> np.ndarray:
  """Rescales keypoints given in a pixel frame of size src_hw (e.g. the PATN 256x176 CSVs).

  Args:
    kpts_xy: [K, 2] float (x, y) in a (H0, W0) frame, -1 = missing.
    src_hw: (H0, W0) of the frame the keypoints are given in.
    scaled_hw: (Hs, Ws) of the scaled image, before the crop.
    crop_xy: (crop_x, crop_y) crop offset in the scaled image.

  Returns:
    [K, 2] float32 (x * Ws / W0 - crop_x, y * Hs / H0 - crop_y); missing joints stay (-1, -1).
  """
  kpts = _as_kpts(kpts_xy)
  (h0, w0), (hs, ws) = src_hw, scaled_hw
  out = np.empty_like(kpts)
  out[:, 0] = kpts[:, 0] * (ws / w0) - crop_xy[0]
  out[:, 1] = kpts[:, 1] * (hs / h0) - crop_xy[1]
  return _keep_missing(out, kpts)


def image_to_legacy(kpts_xy, hw) -> np.ndarray:
  """Inverse of `legacy_to_image` without crop: x -> x * 176 / W + 40, y -> y * 256 / H.

  Args:
    kpts_xy: [18, 2] float pixel (x, y) in an (H, W) image, -1 = missing.
    hw: (H, W) of that image.

  Returns:
    [18, 2] float32 legacy-frame (x, y); missing joints stay (-1, -1).
  """
  kpts = _as_kpts(kpts_xy)
  h, w = hw
  out = np.empty_like(kpts)
  out[:, 0] = kpts[:, 0] * (176.0 / w) + 40.0
  out[:, 1] = kpts[:, 1] * (256.0 / h)
  return _keep_missing(out, kpts)


def _limb_polygon(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
  """PIDM's ellipse polygon for the limb a -> b (stickwidth 4), int32 [N, 2] (x, y)."""
  dx, dy = pa[0] - pb[0], pa[1] - pb[1]
  mean_x, mean_y = (pa[0] + pb[0]) / 2.0, (pa[1] + pb[1]) / 2.0
  length = math.sqrt(dx * dx + dy * dy)
  # PIDM names its arrays confusingly (X holds y) but what it computes is atan2(dy, dx)
  # with d = first - second endpoint; int() truncates towards zero like PIDM.
  angle = int(math.degrees(math.atan2(dy, dx)))
  return cv2.ellipse2Poly((int(mean_x), int(mean_y)), (int(length / 2), STICKWIDTH), angle,
                          0, 360, 1)


def _draw_skeleton(kpts: np.ndarray, height: int, width: int):
  """Draws PIDM's BGR uint8 canvas; returns (canvas [H, W, 3], polygons: list of 17)."""
  if kpts.shape[0] != len(OPENPOSE_COLORS_BGR):
    raise ValueError(f'PIDM rendering needs 18 OpenPose joints, got {kpts.shape[0]}')
  canvas = np.zeros((height, width, 3), np.uint8)
  missing = is_missing(kpts)
  for i in range(kpts.shape[0]):
    if not missing[i]:
      cv2.circle(canvas, (int(kpts[i, 0]), int(kpts[i, 1])), JOINT_RADIUS,
                 OPENPOSE_COLORS_BGR[i], thickness=-1)
  polygons = []
  for i in range(NUM_DRAWN_LIMBS):
    a, b = OPENPOSE_LIMBS[i]
    if missing[a] or missing[b]:
      polygons.append(None)
      continue
    poly = _limb_polygon(kpts[a], kpts[b])
    polygons.append(poly)
    # Outside the polygon addWeighted(c, .4, c, .6) is the identity, so blending only the
    # polygon's bounding box gives PIDM's full-canvas result at a fraction of the cost.
    bx, by, bw, bh = cv2.boundingRect(poly)
    x0, y0 = max(bx, 0), max(by, 0)
    x1, y1 = min(bx + bw, width), min(by + bh, height)
    if x0 >= x1 or y0 >= y1:
      continue  # entirely off-canvas
    roi = canvas[y0:y1, x0:x1]
    painted = roi.copy()
    cv2.fillConvexPoly(painted, poly - np.array([x0, y0], np.int32), OPENPOSE_COLORS_BGR[i])
    canvas[y0:y1, x0:x1] = cv2.addWeighted(roi, 0.4, painted, 0.6, 0)
  return canvas, polygons


def render_skeleton_rgb(kpts_xy, height: int, width: int) -> np.ndarray:
  """PIDM's coloured stick figure alone (channels 0-2 of `render_pidm_pose`).

  Args:
    kpts_xy: [18, 2] float pixel (x, y), -1 = missing; off-canvas points are clipped.
    height, width: output size.

  Returns:
    float32 [H, W, 3] RGB in [0, 1] (multiples of 1/255), black background.
  """
  canvas, _ = _draw_skeleton(_as_kpts(kpts_xy), height, width)
  return _u8_to_unit(canvas[..., ::-1])


def render_pidm_pose(kpts_xy, height: int, width: int) -> np.ndarray:
  """PIDM's 20-channel pose condition (`get_label_tensor`), channel-last.

  Channels 0-2: RGB skeleton (joint circles r=4 drawn first, then the 17 limbs as ellipses
  of half-width 4, each alpha-blended 0.4 old / 0.6 new). Channels 3-19: per limb i, the L1
  distance (in px) to the filled limb polygon, // 3 as uint8, / 255, so 0 on the limb and
  +1/255 per 3 px; a limb with a missing end is all 1.0.

  Args:
    kpts_xy: [18, 2] float pixel (x, y), -1 = missing; off-canvas points are fine.
    height, width: output size.

  Returns:
    float32 [H, W, 20] in [0, 1].
  """
  canvas, polygons = _draw_skeleton(_as_kpts(kpts_xy), height, width)
  blue, green, red = cv2.split(canvas)
  planes = [red, green, blue]
  # 255 / 255 = 1.0: the value PIDM gets for a missing limb (distanceTransform of a mask with
  # no zero pixel returns a huge sentinel that the clip maps to 255). Set it explicitly.
  far = np.full((height, width), 255, np.uint8)
  for poly in polygons:
    if poly is None:
      planes.append(far)
      continue
    # PIDM transforms 255 - mask: zero (the target set) on the limb, 255 elsewhere.
    inv = far.copy()
    cv2.fillConvexPoly(inv, poly, 0)
    if cv2.countNonZero(inv) == inv.size:
      planes.append(far)  # polygon entirely off-canvas: same as a missing limb in PIDM
      continue
    dist = cv2.distanceTransform(inv, cv2.DIST_L1, 3)
    # PIDM: clip(dist / 3, 0, 255).astype(uint8), i.e. floor(d / 3) saturated at 255. L1
    # distances are integers, for which floor(d / 3) == round((d - 1) / 3); convertScaleAbs
    # rounds and saturates in one SIMD pass (4x cheaper than the NumPy expression).
    planes.append(cv2.convertScaleAbs(dist, alpha=1.0 / 3.0, beta=-1.0 / 3.0))
  return _u8_to_unit(cv2.merge(planes))


def gaussian_heatmaps(kpts_xy, height: int, width: int, sigma: float) -> np.ndarray:
  """One isotropic Gaussian per keypoint, evaluated at integer pixel coordinates.

  value(r, c) = exp(-((c - kx)^2 + (r - ky)^2) / (2 sigma^2)), computed as a product of two
  separable 1-D factors (exact at the peak: 1.0 when the keypoint is integral).

  Args:
    kpts_xy: [K, 2] float pixel (x, y), -1 = missing (K = 18 OpenPose or 17 COCO).
    height, width: output size.
    sigma: Gaussian std in pixels, > 0.

  Returns:
    float32 [H, W, K] in [0, 1]; a missing keypoint's channel is all zeros.
  """
  kpts = _as_kpts(kpts_xy)
  inv = 1.0 / (2.0 * float(sigma) ** 2)
  gx = np.exp(-(np.arange(width)[None, :] - kpts[:, :1]) ** 2 * inv)  # [K, W]
  gy = np.exp(-(np.arange(height)[None, :] - kpts[:, 1:]) ** 2 * inv)  # [K, H]
  gx[is_missing(kpts)] = 0.0
  return (gy.T.astype(np.float32)[:, None, :] * gx.T.astype(np.float32)[None, :, :])


def hflip_keypoints(kpts_xy, width: int, relabel: bool) -> np.ndarray:
  """Keypoints of the horizontally pixel-flipped image: x -> (width - 1) - x.

  Args:
    kpts_xy: [18, 2] float pixel (x, y), -1 = missing.
    width: image width in pixels.
    relabel: also swap left/right joints (OPENPOSE_FLIP_PERM). PIDM's pose tensors are
      flipped as images, i.e. without relabelling; pose-estimator targets need it.

  Returns:
    [18, 2] float32; missing joints stay (-1, -1).
  """
  kpts = _as_kpts(kpts_xy)
  out = kpts.copy()
  out[:, 0] = (width - 1) - kpts[:, 0]
  out = _keep_missing(out, kpts)
  if relabel:
    out = out[list(OPENPOSE_FLIP_PERM)]
  return out


def limb_mask(kpts_xy, height: int, width: int, limbs=MARKET_MASK_LIMBS,
              radius: int = JOINT_RADIUS) -> np.ndarray:
  """Body mask for masked metrics, after PATN/PIDM's `produce_ma_mask`.

  Union of, per limb with both ends present, the rectangle of half-width `radius` around
  the segment, and a filled circle of `radius` at every present joint; then a 5x5 closing
  (cv2.dilate then cv2.erode with ones(5, 5)). Rasterised with OpenCV instead of
  skimage.draw, so edge pixels can differ from the original by about one pixel.

  Args:
    kpts_xy: [18, 2] float pixel (x, y), -1 = missing.
    height, width: output size (Market: 128 x 64).
    limbs: 0-based joint pairs; default is produce_ma_mask's 23 pairs.
    radius: limb half-width and joint radius in pixels.

  Returns:
    float32 [H, W, 1] in {0, 1}.
  """
  kpts = _as_kpts(kpts_xy)
  missing = is_missing(kpts)
  mask = np.zeros((height, width), np.uint8)
  for a, b in limbs:
    if missing[a] or missing[b]:
      continue
    direction = kpts[a] - kpts[b]
    norm = np.hypot(*direction)
    if norm == 0:
      continue  # coincident joints: the circles below cover it
    normal = radius * np.array([-direction[1], direction[0]]) / norm
    quad = np.stack([kpts[a] + normal, kpts[a] - normal, kpts[b] - normal, kpts[b] + normal])
    cv2.fillConvexPoly(mask, np.round(quad).astype(np.int32), 1)
  for i in np.flatnonzero(~missing):
    cv2.circle(mask, (int(round(kpts[i, 0])), int(round(kpts[i, 1]))), radius, 1, -1)
  kernel = np.ones((5, 5), np.uint8)
  mask = cv2.erode(cv2.dilate(mask, kernel), kernel)
  return mask.astype(np.float32)[..., None]
