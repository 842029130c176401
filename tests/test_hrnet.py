"""Flax HigherHRNet: shapes, parameter count, padding, BatchNorm semantics, aggregation, decoding, input gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reposedm_jax.models import hrnet

pytestmark = pytest.mark.usefixtures('fast_compile')

# Every stage, one block: the smallest network with the full topology (input gradients, BN checks).
TINY = hrnet.HigherHRNet(width=4, stem_channels=4, layer1_planes=2, layer1_blocks=1, num_modules=(1, 1, 1),
                         num_blocks=1, deconv_blocks=1)


def _perturbed(variables, seed):
  """Random BN statistics / affine terms so frozen-BN paths are not identities."""
  rng = np.random.default_rng(seed)
  def bump(path, x):
    name = path[-1].key
    if name == 'var':
      return jnp.asarray(rng.uniform(0.5, 2.0, x.shape), x.dtype)
    if name in ('mean', 'bias', 'scale'):
      return x + jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(bump, variables)


def test_w32_shapes_at_512_and_parameter_count():
  module = hrnet.build_hrnet('w32')
  shapes = hrnet.variable_shapes(module)
  assert hrnet.count_params(shapes['params']) == 28_645_331  # the reference's count (1,509 tensors)
  images = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: module.apply(v, x), shapes, images)
  assert out['heatmaps_s4'].shape == out['tags_s4'].shape == (2, 128, 128, 17)
  assert out['heatmaps_s2'].shape == (2, 256, 256, 17)
  assert out['features'].shape == (2, 128, 128, 32)
  # W48 (pose_higher_hrnet_w48_640): the README's 63.8 M.
  assert round(hrnet.count_params(hrnet.variable_shapes(hrnet.build_hrnet('w48'))['params']) / 1e5) == 638
  with pytest.raises(ValueError, match='pose.arch'):
    hrnet.build_hrnet('w64')


def test_small_forward_pads_and_crops():
  module = hrnet.build_hrnet('small')
  variables = _perturbed(hrnet.init_variables(module, jax.random.key(0)), 1)
  x = jax.random.uniform(jax.random.key(2), (2, 64, 44, 3), minval=-1, maxval=1)
  out = jax.jit(lambda v, x: module.apply(v, x))(variables, x)
  assert out['heatmaps_s4'].shape == (2, 16, 11, 17) and out['tags_s4'].shape == (2, 16, 11, 17)
  assert out['heatmaps_s2'].shape == (2, 32, 22, 17) and out['features'].shape == (2, 16, 11, 16)
  # Internal padding = the image padded by hand with black (-1), run at 64x64 and cropped.
  padded = jnp.pad(x, ((0, 0), (0, 0), (0, 20), (0, 0)), constant_values=-1.0)
  ref = module.apply(variables, padded)
  np.testing.assert_allclose(out['heatmaps_s2'], ref['heatmaps_s2'][:, :, :22], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['heatmaps_s4'], ref['heatmaps_s4'][:, :, :11], rtol=1e-5, atol=1e-6)
  # Odd sizes are fine too: ceil(H / s).
  odd = module.apply(variables, x[:, :50, :37])
  assert odd['heatmaps_s4'].shape[1:3] == (13, 10) and odd['heatmaps_s2'].shape[1:3] == (25, 19)
  assert hrnet.aggregate_heatmaps(odd).shape == (2, 25, 19, 17)


def test_batchnorm_train_and_frozen_modes():
  variables = hrnet.init_variables(TINY, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3), minval=-1, maxval=1)
  other = _perturbed(variables, 5)
  # Training mode normalises with batch statistics: the running statistics do not matter.
  train_a, mutated = TINY.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'],
                                capture_intermediates=True)
  train_b, _ = TINY.apply({'params': variables['params'], 'batch_stats': other['batch_stats']}, x, train=True,
                          mutable=['batch_stats'])
  np.testing.assert_allclose(train_a['heatmaps_s2'], train_b['heatmaps_s2'], rtol=1e-5, atol=1e-7)
  # ...and updates them with torch's momentum 0.1 and the batch mean of the conv output.
  conv1 = np.asarray(mutated['intermediates']['conv1']['__call__'][0], np.float64)
  np.testing.assert_allclose(mutated['batch_stats']['bn1']['mean'],
                             0.9 * np.asarray(variables['batch_stats']['bn1']['mean']) + 0.1 * conv1.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  # Frozen mode uses the running statistics.
  frozen_a = TINY.apply(variables, x)
  frozen_b = TINY.apply({'params': variables['params'], 'batch_stats': other['batch_stats']}, x)
  assert np.abs(np.asarray(frozen_a['heatmaps_s2']) - np.asarray(frozen_b['heatmaps_s2'])).max() > 1e-4


def test_aggregate_heatmaps_matches_torch_bilinear():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  for h4, w4, h2, w2 in ((8, 6, 16, 12), (7, 5, 13, 9)):  # exact 2x and the odd-size crop
    s4 = rng.standard_normal((2, h4, w4, 17)).astype(np.float32)
    s2 = rng.standard_normal((2, h2, w2, 17)).astype(np.float32)
    got = hrnet.aggregate_heatmaps({'heatmaps_s4': s4, 'heatmaps_s2': s2})
    up = torch.nn.functional.interpolate(torch.from_numpy(s4).permute(0, 3, 1, 2), size=(2 * h4, 2 * w4),
                                         mode='bilinear', align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, 0.5 * (up[:, :h2, :w2] + s2), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='do not belong together'):
    hrnet.aggregate_heatmaps({'heatmaps_s4': s4, 'heatmaps_s2': s2[:, :5]})


def _gaussian_maps(points_uv, h, w, sigma):
  """float64 reference: [B, K, 2] heatmap-pixel centres -> [B, h, w, K] Gaussians (peak 1)."""
  u = np.arange(w)[None, None, :, None]
  v = np.arange(h)[None, :, None, None]
  pu, pv = points_uv[:, None, None, :, 0], points_uv[:, None, None, :, 1]
  return np.exp(-((u - pu) ** 2 + (v - pv) ** 2) / (2 * sigma ** 2))


def test_decode_keypoints_on_hand_made_heatmaps():
  # Sub-pixel peaks well inside the map, one on the border, and a scaled-down peak (its score).
  uv = np.array([[[5.3, 7.8], [10.0, 3.0], [0.0, 12.6], [17.45, 20.2]]])
  maps = _gaussian_maps(uv, 32, 22, 2.0)
  maps[..., 3] *= 0.4
  xy, score = jax.jit(hrnet.decode_keypoints, static_argnums=1)(jnp.asarray(maps, jnp.float32), (64, 44))
  xy, score = np.asarray(xy), np.asarray(score)
  # Interior: exact for a Gaussian (log-parabola); border axis falls back to the arg-max column.
  want_uv = uv.copy()
  want_uv[0, 2, 0] = 0.0
  np.testing.assert_allclose(xy, (want_uv + 0.5) * 2 - 0.5, atol=2e-3)
  assert score[0, 3] == pytest.approx(0.4 * np.exp(-(0.45 ** 2 + 0.2 ** 2) / 8), rel=1e-4)
  assert score[0, 1] == pytest.approx(1.0)
  # Stride 4 is inferred from the sizes, including odd image sizes (ceil).
  xy4, _ = hrnet.decode_keypoints(jnp.asarray(_gaussian_maps(uv[:, :1], 13, 10, 1.5), jnp.float32), (50, 37))
  np.testing.assert_allclose(np.asarray(xy4)[0, 0], (uv[0, 0] + 0.5) * 4 - 0.5, atol=2e-3)
  with pytest.raises(ValueError, match='do not match images'):
    hrnet.decode_keypoints(jnp.zeros((1, 30, 22, 17)), (64, 44))


def test_gradient_wrt_input_matches_finite_differences():
  """d/dx of a PIF-like scalar of the aggregated heatmaps, params frozen (float64 central differences)."""
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                             _perturbed(hrnet.init_variables(TINY, jax.random.key(3)), 2))
    x = jnp.asarray(rng.uniform(-0.9, 0.9, (1, 32, 22, 3)))  # 22 -> padded to 32 inside
    weights = jnp.asarray(rng.standard_normal((1, 16, 11, 17)))

    def g(images):
      heat = hrnet.aggregate_heatmaps(TINY.apply(variables, images, train=False))
      return jnp.sum(weights * heat ** 2)

    grad = jax.jit(jax.grad(g))(x)
    g = jax.jit(g)
    assert grad.dtype == jnp.float64 and np.isfinite(np.asarray(grad)).all()
    for k in range(3):
      direction = jnp.asarray(rng.standard_normal(x.shape))
      eps = 1e-7  # ReLU kinks: the network is piecewise smooth, so the step must stay inside one piece
      fd = (g(x + eps * direction) - g(x - eps * direction)) / (2 * eps)
      np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=1e-5, atol=1e-9)
