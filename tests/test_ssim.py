"""reposedm_jax.metrics.ssim must equal skimage's structural_similarity for every variant."""

import jax
import numpy as np
import pytest
import skimage.data
import skimage.filters
import skimage.transform
from skimage.metrics import structural_similarity

from reposedm_jax.metrics import ssim as ssim_lib

TOL = 1e-4


def _skimage_ssim(a, b, variant, full=False):
  """The skimage call that each variant stands for. Spelled out here, not read from VARIANTS."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if variant == 'gaussian':
    return structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, full=full)
  if variant == 'pidm_win51':
    # PIDM: compare_ssim(gt, pred, data_range=1, win_size=51, multichannel=True).
    return structural_similarity(a, b, data_range=1, win_size=51, channel_axis=-1, full=full)
  if variant == 'pidm_gauss12':
    # PIDM's ssim_256 works on the 0-255 scale.
    return structural_similarity(a * 255.0, b * 255.0, data_range=255, channel_axis=-1,
                                 gaussian_weights=True, sigma=1.2, use_sample_covariance=False,
                                 full=full)
  raise ValueError(variant)


def _distort(img, rng, blur_sigma=1.0, noise=0.05):
  """A blurred, noisy copy, clipped to [0, 1], so that SSIM lands well inside (0, 1)."""
  out = skimage.filters.gaussian(img, sigma=blur_sigma, channel_axis=-1)
  out = out + noise * rng.standard_normal(img.shape)
  return np.clip(out, 0.0, 1.0)


def _random_pair(rng, batch, h, w, c=3):
  a = rng.random((batch, h, w, c))
  b = np.stack([_distort(x, rng, blur_sigma=0.7, noise=0.15) for x in a])
  return a, b


def _assert_matches_skimage(a, b, variant):
  got = np.asarray(ssim_lib.ssim(a, b, variant=variant))
  assert got.shape == (a.shape[0],)
  want = np.array([_skimage_ssim(x, y, variant) for x, y in zip(a, b)])
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  return got


@pytest.mark.parametrize('variant,size', [
    ('gaussian', (64, 44)),
    ('gaussian', (65, 47)),
    ('pidm_gauss12', (64, 44)),
    ('pidm_gauss12', (65, 47)),
    ('pidm_win51', (64, 64)),
    ('pidm_win51', (67, 54)),
    ('pidm_win51', (51, 51)),  # The smallest size skimage accepts: the crop leaves one pixel.
])
def test_random_images_match_skimage(variant, size):
  rng = np.random.default_rng(sum(size))
  a, b = _random_pair(rng, 3, *size)
  got = _assert_matches_skimage(a, b, variant)
  assert np.all((got > 0.05) & (got < 0.99)), got  # A degenerate SSIM would test nothing.


def _real_images():
  """astronaut (RGB) and camera (grayscale, C=1), resized to 256x176, on [0, 1]."""
  astro = skimage.transform.resize(skimage.data.astronaut(), (256, 176), anti_aliasing=True)
  camera = skimage.transform.resize(skimage.data.camera(), (256, 176), anti_aliasing=True)
  return astro, camera[..., None]


@pytest.mark.parametrize('variant', sorted(ssim_lib.VARIANTS))
def test_real_images_match_skimage(variant):
  rng = np.random.default_rng(0)
  astro, camera = _real_images()
  for img in (astro, camera, np.repeat(camera, 3, axis=-1)):
    a = np.stack([img, img])
    b = np.stack([_distort(img, rng, blur_sigma=1.0, noise=0.03),
                  _distort(img, rng, blur_sigma=2.0, noise=0.0)])
    got = _assert_matches_skimage(a, b, variant)
    assert np.all((got > 0.2) & (got < 0.99)), got


@pytest.mark.parametrize('variant', sorted(ssim_lib.VARIANTS))
def test_uint8_matches_skimage(variant):
  rng = np.random.default_rng(1)
  astro, _ = _real_images()
  a = np.round(astro * 255).astype(np.uint8)[None]
  b = np.round(_distort(astro, rng) * 255).astype(np.uint8)[None]
  got = np.asarray(ssim_lib.ssim_uint8(a, b, variant))
  want = _skimage_ssim(a[0] / 255.0, b[0] / 255.0, variant)
  np.testing.assert_allclose(got, [want], atol=TOL, rtol=0)


@pytest.mark.parametrize('variant', sorted(ssim_lib.VARIANTS))
def test_full_map_matches_skimage_including_reflect_border(variant):
  rng = np.random.default_rng(2)
  a, b = _random_pair(rng, 1, 64, 53)
  got = np.asarray(ssim_lib.ssim_map(a, b, variant=variant))[0]
  _, want = _skimage_ssim(a[0], b[0], variant, full=True)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize('variant', sorted(ssim_lib.VARIANTS))
def test_identical_images_give_one(variant):
  rng = np.random.default_rng(3)
  a = rng.random((2, 64, 60, 3))
  np.testing.assert_allclose(np.asarray(ssim_lib.ssim(a, a, variant)), 1.0, atol=1e-6)
  # Constant images make every variance zero: C1 and C2 must still give exactly 1.
  c = np.full((1, 64, 60, 3), 0.3)
  np.testing.assert_allclose(np.asarray(ssim_lib.ssim(c, c, variant)), 1.0, atol=1e-6)


@pytest.mark.parametrize('variant', sorted(ssim_lib.VARIANTS))
def test_batched_equals_per_image(variant):
  rng = np.random.default_rng(4)
  a, b = _random_pair(rng, 4, 64, 56)
  batched = np.asarray(ssim_lib.ssim(a, b, variant))
  single = np.array([float(ssim_lib.ssim(a[i:i + 1], b[i:i + 1], variant)[0]) for i in range(4)])
  np.testing.assert_allclose(batched, single, atol=1e-6, rtol=0)


def test_data_range_and_symmetry():
  rng = np.random.default_rng(5)
  a, b = _random_pair(rng, 2, 64, 48)
  ref = np.asarray(ssim_lib.ssim(a, b, 'pidm_gauss12'))
  on_255 = np.asarray(ssim_lib.ssim(a * 255.0, b * 255.0, 'pidm_gauss12', data_range=255.0))
  np.testing.assert_allclose(on_255, ref, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ssim_lib.ssim(b, a, 'pidm_gauss12')), ref, atol=1e-6)


def test_jit_and_mean_ssim():
  rng = np.random.default_rng(6)
  a, b = _random_pair(rng, 5, 64, 48)
  eager = np.asarray(ssim_lib.ssim(a, b, 'gaussian'))
  jitted = jax.jit(ssim_lib.ssim, static_argnames='variant')(a, b, variant='gaussian')
  np.testing.assert_allclose(np.asarray(jitted), eager, atol=1e-6)
  # A batch size that does not divide N: the remainder must count, unlike PIDM's FID loader.
  mean = ssim_lib.mean_ssim(a, b, 'gaussian', batch_size=2)
  assert isinstance(mean, float)
  np.testing.assert_allclose(mean, eager.mean(), atol=1e-6)


def test_variant_settings():
  v = ssim_lib.VARIANTS
  assert (v['gaussian'].win_size, v['pidm_gauss12'].win_size, v['pidm_win51'].win_size) == (
      11, 9, 51)
  assert v['pidm_win51'].use_sample_covariance and not v['pidm_win51'].gaussian_weights
  assert v['pidm_gauss12'].data_range == 255.0


def test_errors():
  a = np.zeros((1, 40, 60, 3))
  with pytest.raises(ValueError, match='window'):
    ssim_lib.ssim(a, a, 'pidm_win51')
  with pytest.raises(ValueError, match='Unknown'):
    ssim_lib.ssim(a, a, 'ms_ssim')
  with pytest.raises(ValueError, match='same shape'):
    ssim_lib.ssim(a, a[:, :-1], 'gaussian')
  with pytest.raises(ValueError, match='NHWC'):
    ssim_lib.ssim(a[0], a[0], 'gaussian')
