"""Tests for reposedm_jax.data.pose (PIDM pose rendering and keypoint transforms)."""

import math

import cv2
import numpy as np
import pytest

from reposedm_jax.data import pose
from reposedm_jax.data.keypoints import (
    NUM_DRAWN_LIMBS, OPENPOSE_COLORS_BGR, OPENPOSE_FLIP_PERM, OPENPOSE_LIMBS)


def _empty_pose():
  return np.full((18, 2), -1.0)


def _random_pose(rng, height, width, integral=False, margin=0):
  kpts = np.stack([rng.uniform(margin, width - 1 - margin, 18),
                   rng.uniform(margin, height - 1 - margin, 18)], 1)
  return np.round(kpts) if integral else kpts


def _l1_distance_to(mask: np.ndarray) -> np.ndarray:
  """Brute-force L1 distance of every pixel to the nearest True pixel of mask."""
  ys, xs = np.nonzero(mask)
  rows, cols = np.mgrid[:mask.shape[0], :mask.shape[1]]
  d = (np.abs(rows.reshape(-1, 1) - ys[None]) + np.abs(cols.reshape(-1, 1) - xs[None]))
  return d.min(1).reshape(mask.shape)


def _polygon_mask(center, axes, angle, height, width):
  mask = np.zeros((height, width), np.uint8)
  cv2.fillConvexPoly(mask, cv2.ellipse2Poly(center, axes, angle, 0, 360, 1), 1)
  return mask.astype(bool)


# ---------------------------------------------------------------- frame transforms


def test_legacy_to_image_hand_computed():
  kpts = _empty_pose()
  kpts[0] = (128, 128)
  kpts[1] = (40, 0)
  kpts[2] = (216, 256)
  out = pose.legacy_to_image(kpts, (256, 176))
  assert out.dtype == np.float32 and out.shape == (18, 2)
  np.testing.assert_allclose(out[:3], [(88, 128), (0, 0), (176, 256)], atol=1e-5)
  # Scaled to (268, 184), cropped at (3, 5): 88 * 184/176 - 3 = 89, 128 * 268/256 - 5 = 129.
  out = pose.legacy_to_image(kpts, (268, 184), crop_xy=(3, 5))
  np.testing.assert_allclose(out[0], (89, 129), atol=1e-4)
  # Stretched 256x256 PIDM frame: x' = (x - 40) * 256/176.
  out = pose.legacy_to_image(kpts, (256, 256))
  np.testing.assert_allclose(out[0], (128, 128), atol=1e-4)


def test_missing_stays_minus_one():
  kpts = _empty_pose()
  kpts[0] = (128, 128)
  kpts[3] = (-1, 50)  # half-missing counts as missing
  for out in (pose.legacy_to_image(kpts, (268, 184), (3, 5)),
              pose.image_to_image(kpts, (256, 176), (512, 352), (10, 20)),
              pose.image_to_legacy(kpts, (256, 176)),
              pose.hflip_keypoints(kpts, 176, relabel=False)):
    assert np.all(out[1:] == -1.0)
    assert np.all(out[0] != -1.0)


def test_image_to_image_and_inverse():
  kpts = _empty_pose()
  kpts[5] = (88, 128)
  out = pose.image_to_image(kpts, (256, 176), (512, 352), crop_xy=(10, 20))
  np.testing.assert_allclose(out[5], (166, 236), atol=1e-4)
  rng = np.random.default_rng(0)
  legacy = np.stack([rng.uniform(40, 216, 18), rng.uniform(0, 256, 18)], 1)
  legacy[[4, 9]] = -1
  for hw in ((256, 176), (256, 256), (64, 44)):
    back = pose.image_to_legacy(pose.legacy_to_image(legacy, hw), hw)
    np.testing.assert_allclose(back, legacy, atol=1e-3)


# ---------------------------------------------------------------- PIDM rendering


def test_single_horizontal_limb():
  h, w = 256, 176
  kpts = _empty_pose()
  kpts[1] = (60, 100)   # neck
  kpts[2] = (100, 100)  # right shoulder; limb 0 = (1, 2)
  out = pose.render_pidm_pose(kpts, h, w)
  rgb = out[..., :3]
  assert np.all(rgb[100, 60:101].sum(-1) > 0)  # along the segment, midpoint included
  assert np.all(rgb[150:, :] == 0) and np.all(rgb[:, 120:] == 0)
  # Hand-derived ellipse: centre (80, 100), axes (20, 4), angle int(deg(atan2(0, -40))) = 180.
  mask = _polygon_mask((80, 100), (20, 4), 180, h, w)
  assert mask[100, 62] and mask[96, 80] and not mask[94, 80]
  chan = out[..., 3]
  assert np.all(chan[mask] == 0)
  d = _l1_distance_to(mask)
  for k in (1, 5, 10, 37, 80):
    row = 96 - k
    assert not mask[row, 80]
    assert chan[row, 80] == np.float32(math.floor(d[row, 80] / 3)) / np.float32(255)
  assert d[96 - 37, 80] == 37 and chan[96 - 37, 80] == np.float32(12) / np.float32(255)
  assert np.all(out[..., 4:] == 1.0)


def test_oblique_limb_distance_map_matches_brute_force():
  h, w = 96, 80
  kpts = _empty_pose()
  kpts[1] = (20.7, 10.2)  # neck
  kpts[2] = (50.4, 50.9)  # right shoulder
  out = pose.render_pidm_pose(kpts, h, w)
  # dx = -29.7, dy = -40.7: angle = int(-126.1...) = -126 (truncation towards zero),
  # length 50.38 -> half axis 25, centre (int(35.55), int(30.55)) = (35, 30).
  mask = _polygon_mask((35, 30), (25, 4), -126, h, w)
  expected = np.minimum(_l1_distance_to(mask) // 3, 255).astype(np.float32) / np.float32(255)
  np.testing.assert_array_equal(out[..., 3], expected)


def test_missing_joint_drops_circle_and_limbs():
  h, w = 256, 176
  kpts = np.array([(88, 30), (88, 60), (60, 60), (40, 100), (30, 140), (116, 60),
                   (136, 100), (146, 140), (70, 140), (70, 190), (70, 235), (106, 140),
                   (106, 190), (106, 235), (80, 25), (96, 25), (72, 30), (104, 30)], float)
  full = pose.render_pidm_pose(kpts, h, w)
  kpts[4] = -1  # right wrist: end of limb 3 = (3, 4)
  part = pose.render_pidm_pose(kpts, h, w)
  assert np.all(part[..., 3 + 3] == 1.0)
  assert not np.all(full[..., 3 + 3] == 1.0)
  assert np.all(part[138:143, 28:33, :3] == 0)  # no circle where the wrist was
  assert full[140, 30, :3].sum() > 0
  others = [i for i in range(NUM_DRAWN_LIMBS) if i != 3]
  np.testing.assert_array_equal(part[..., [3 + i for i in others]],
                                full[..., [3 + i for i in others]])


@pytest.mark.parametrize('joint', [0, 5, 12, 17])
def test_joint_colour_is_reversed_bgr(joint):
  kpts = _empty_pose()
  kpts[joint] = (30.6, 40.2)  # drawn at (int(x), int(y)) = (30, 40)
  rgb = pose.render_skeleton_rgb(kpts, 64, 44)
  expected = np.array(OPENPOSE_COLORS_BGR[joint][::-1], np.float32) / np.float32(255)
  for r, c in ((40, 30), (36, 30), (40, 34), (42, 32)):
    np.testing.assert_array_equal(rgb[r, c], expected)
  assert np.all(rgb[46:] == 0) and np.all(rgb[:, :25] == 0)
  np.testing.assert_array_equal(pose.render_pidm_pose(kpts, 64, 44)[..., :3], rgb)


def test_limb_blend_is_60_percent_of_colour():
  kpts = _empty_pose()
  kpts[1], kpts[2] = (20, 50), (100, 50)  # limb 0, BGR (255, 0, 0) -> RGB (0, 0, 153)
  rgb = pose.render_skeleton_rgb(kpts, 100, 120)
  np.testing.assert_array_equal(rgb[50, 60], np.array([0, 0, 153], np.float32) / 255)


@pytest.mark.parametrize('hw', [(256, 176), (64, 44)])
def test_output_shape_dtype_range(hw):
  h, w = hw
  rng = np.random.default_rng(1)
  out = pose.render_pidm_pose(_random_pose(rng, h, w), h, w)
  assert out.shape == (h, w, 20) and out.dtype == np.float32
  assert out.min() == 0.0 and out.max() <= 1.0
  assert np.all(out[..., :3].reshape(-1, 3).max(0) > 0)
  # Every channel is an exact multiple of 1/255 (uint8 / 255, as torchvision's to_tensor).
  np.testing.assert_array_equal(np.round(out * 255) / np.float32(255), out)


def _naive_pidm(kpts, h, w):
  """Straight full-canvas transcription of the reference description, as an oracle."""
  canvas = np.zeros((h, w, 3), np.uint8)
  for i in range(18):
    if kpts[i, 0] != -1 and kpts[i, 1] != -1:
      cv2.circle(canvas, (int(kpts[i, 0]), int(kpts[i, 1])), 4, OPENPOSE_COLORS_BGR[i], -1)
  dists = []
  for i in range(NUM_DRAWN_LIMBS):
    a, b = OPENPOSE_LIMBS[i]
    joint = np.zeros((h, w), np.uint8)
    if -1 not in kpts[[a, b]]:
      x, y = kpts[[a, b], 0], kpts[[a, b], 1]
      length = math.hypot(x[0] - x[1], y[0] - y[1])
      angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
      poly = cv2.ellipse2Poly((int(x.mean()), int(y.mean())), (int(length / 2), 4), int(angle),
                              0, 360, 1)
      cur = canvas.copy()
      cv2.fillConvexPoly(cur, poly, OPENPOSE_COLORS_BGR[i])
      canvas = cv2.addWeighted(canvas, 0.4, cur, 0.6, 0)
      cv2.fillConvexPoly(joint, poly, 255)
    d = cv2.distanceTransform(255 - joint, cv2.DIST_L1, 3)
    dists.append(np.clip(d / 3, 0, 255).astype(np.uint8))
  u8 = np.concatenate([canvas[..., ::-1], np.stack(dists, -1)], -1)
  return u8.astype(np.float32) / np.float32(255)


def test_matches_naive_full_canvas_transcription():
  rng = np.random.default_rng(2)
  for trial in range(12):
    h, w = ((256, 176), (64, 44), (128, 64))[trial % 3]
    kpts = _random_pose(rng, h, w)
    kpts += rng.normal(0, 0.25 * w, kpts.shape) * (trial % 2)  # some joints off-canvas
    kpts[rng.random(18) < 0.2] = -1
    np.testing.assert_array_equal(pose.render_pidm_pose(kpts, h, w), _naive_pidm(kpts, h, w))


def test_limb_entirely_off_canvas_is_all_ones():
  kpts = _empty_pose()
  kpts[1], kpts[2] = (-50, -40), (-20, -40)
  out = pose.render_pidm_pose(kpts, 64, 44)
  assert np.all(out[..., 3:] == 1.0) and np.all(out[..., :3] == 0)


def test_flipped_pose_renders_as_flipped_image():
  # OpenCV's ellipse polygons are not mirror-symmetric (int() of the angle and of the centre
  # truncate towards zero, and the rasteriser has a fixed orientation), so compare loosely.
  h, w = 256, 176
  rng = np.random.default_rng(3)
  for _ in range(3):
    kpts = _random_pose(rng, h, w, integral=True, margin=5)
    flipped = pose.render_pidm_pose(pose.hflip_keypoints(kpts, w, relabel=False), h, w)
    mirrored = np.fliplr(pose.render_pidm_pose(kpts, h, w))
    close = np.abs(flipped[..., 3:] - mirrored[..., 3:]) <= 2 / 255 + 1e-6
    assert close.mean() >= 0.97


# ---------------------------------------------------------------- heatmaps, flips, masks


@pytest.mark.parametrize('num', [18, 17])
def test_gaussian_heatmaps(num):
  h, w, sigma = 64, 44, 3.0
  rng = np.random.default_rng(4)
  kpts = np.stack([rng.integers(0, w, num), rng.integers(0, h, num)], 1).astype(float)
  kpts[2] = -1
  maps = pose.gaussian_heatmaps(kpts, h, w, sigma)
  assert maps.shape == (h, w, num) and maps.dtype == np.float32
  assert np.all(maps[..., 2] == 0)
  for k in range(num):
    if k == 2:
      continue
    x, y = int(kpts[k, 0]), int(kpts[k, 1])
    assert np.unravel_index(np.argmax(maps[..., k]), (h, w)) == (y, x)
    assert maps[y, x, k] == 1.0
    if x + 3 < w:
      assert maps[y, x + 3, k] == pytest.approx(math.exp(-0.5), rel=1e-6)
    if y >= 3:
      assert maps[y - 3, x, k] == pytest.approx(math.exp(-0.5), rel=1e-6)
  assert maps.min() >= 0 and maps.max() <= 1


def test_hflip_keypoints():
  rng = np.random.default_rng(5)
  kpts = _random_pose(rng, 256, 176)
  kpts[7] = -1
  plain = pose.hflip_keypoints(kpts, 176, relabel=False)
  np.testing.assert_allclose(plain[:, 0][kpts[:, 0] != -1], 175 - kpts[:, 0][kpts[:, 0] != -1],
                             atol=1e-4)
  np.testing.assert_allclose(plain[:, 1], kpts[:, 1], atol=1e-4)
  relabelled = pose.hflip_keypoints(kpts, 176, relabel=True)
  np.testing.assert_array_equal(relabelled[2], plain[5])  # right shoulder <- left shoulder
  np.testing.assert_array_equal(relabelled[4], plain[7])  # missing left wrist moves right
  assert np.all(relabelled[4] == -1) and np.all(relabelled[7] != -1)
  np.testing.assert_array_equal(relabelled[[0, 1]], plain[[0, 1]])
  twice = pose.hflip_keypoints(relabelled, 176, relabel=True)
  np.testing.assert_allclose(twice, kpts, atol=1e-4)
  assert sorted(OPENPOSE_FLIP_PERM) == list(range(18))


def test_limb_mask():
  h, w = 128, 64
  kpts = _empty_pose()
  kpts[1], kpts[2] = (32, 20), (12, 20)
  kpts[9] = (50, 100)  # isolated joint: a disc only
  mask = pose.limb_mask(kpts, h, w)
  assert mask.shape == (h, w, 1) and mask.dtype == np.float32
  assert set(np.unique(mask)) == {0.0, 1.0}
  assert np.all(mask[16:25, 12:33, 0] == 1)  # the 4-px half-width band along the limb
  assert mask[100, 50, 0] == 1 and mask[100, 54, 0] == 1 and mask[100, 57, 0] == 0
  assert mask[60, 30, 0] == 0 and mask[20, 40, 0] == 0
  assert np.all(pose.limb_mask(_empty_pose(), h, w) == 0)
