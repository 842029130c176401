"""Flow warping (models/warp.py) and local correlation (models/correlation.py).

References are independent of the code under test: jnp.roll for integer
shifts, torch's grid_sample (align_corners=True) for bilinear sampling and its
gradients, and a float64 NumPy loop for the correlation volume.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reposedm_jax.models import correlation
from reposedm_jax.models import warp

# Jitted once per shape: eager op-by-op dispatch would dominate the test time.
_sample = jax.jit(warp.bilinear_sample, static_argnames='padding')
_warp = jax.jit(warp.warp, static_argnames='padding')
_compose = jax.jit(warp.compose)


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _uniform(seed, shape, lo, hi):
  return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), jnp.float32)


def _smooth_flow(seed, b, h, w, amplitude=2.0):
  """Low-frequency flow: a 4x4 random field resized to h x w, times `amplitude` px."""
  coarse = _normal(seed, (b, 4, 4, 2))
  return amplitude * jax.image.resize(coarse, (b, h, w, 2), 'linear')


def _smooth_image(b, h, w, c):
  """Sum of sinusoids, wavelengths >= 40 px: |x_xx| + |x_yy| <= ~0.05 per channel."""
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  chans = []
  for k in range(c):
    chans.append(np.sin(2 * np.pi * xs / (40 + 4 * k) + k)
                 + 0.5 * np.cos(2 * np.pi * ys / (40 + 3 * k))
                 + 0.5 * np.sin(2 * np.pi * (xs + ys) / 60 + 0.3 * k))
  img = np.stack(chans, -1).astype(np.float32)
  return jnp.asarray(np.broadcast_to(img, (b, h, w, c)))


# ---------------------------------------------------------------- warp basics


def test_identity_flow_is_exact():
  x = _normal(0, (2, 7, 6, 3))
  flow = jnp.zeros((2, 7, 6, 2))
  for padding in ('zeros', 'border'):
    np.testing.assert_array_equal(np.asarray(_warp(x, flow, padding)), np.asarray(x))


def test_integer_shift_equals_roll():
  x = _normal(1, (2, 9, 8, 3))
  flow = jnp.broadcast_to(jnp.asarray([2.0, -1.0]), (2, 9, 8, 2))
  out = _warp(x, flow)
  # out[r, c] = x[r - 1, c + 2]  ==  roll by +1 row, -2 columns.
  ref = jnp.roll(x, shift=(1, -2), axis=(1, 2))
  band = 2
  np.testing.assert_array_equal(np.asarray(out[:, band:-band, band:-band]),
                                np.asarray(ref[:, band:-band, band:-band]))
  # Pixels whose source lies outside the map are zero with 'zeros' padding.
  assert float(jnp.abs(out[:, 0]).max()) == 0.0
  assert float(jnp.abs(out[:, :, -2:]).max()) == 0.0


# ----------------------------------------------------- torch grid_sample parity


def _torch_grid_sample(x_bhwc, coords_bhw2, padding):
  torch = pytest.importorskip('torch')
  _, h, w, _ = x_bhwc.shape
  x_t = torch.tensor(np.asarray(x_bhwc), dtype=torch.float64).permute(0, 3, 1, 2)
  c = np.asarray(coords_bhw2, np.float64)
  # align_corners=True: pixel 0 -> -1, pixel size-1 -> +1.
  grid = np.stack([2 * c[..., 0] / (w - 1) - 1, 2 * c[..., 1] / (h - 1) - 1], -1)
  grid_t = torch.tensor(grid, dtype=torch.float64)
  x_t.requires_grad_(True)
  grid_t.requires_grad_(True)
  out = torch.nn.functional.grid_sample(x_t, grid_t, mode='bilinear',
                                        padding_mode=padding, align_corners=True)
  return out, x_t, grid_t


@pytest.mark.parametrize('hw', [(7, 6), (8, 5), (6, 9)])
@pytest.mark.parametrize('padding', ['zeros', 'border'])
def test_bilinear_sample_matches_torch(hw, padding):
  pytest.importorskip('torch')
  h, w = hw
  seed = h * 10 + w
  x = _normal(seed, (2, h, w, 3))
  # Fractional flows up to +-3 px push many samples past the edge; add a few
  # far-out coordinates and exact pixel centres / edges too.
  coords = np.array(warp.identity_grid(2, h, w) + _uniform(seed, (2, h, w, 2), -3.0, 3.0))
  coords[0, 0, 0] = [-7.5, 2.25]
  coords[0, 0, 1] = [w + 4.0, h - 1.0]
  coords[0, 1, 0] = [w - 1.0, 0.0]
  coords[1, 1, 1] = [-0.5, h - 0.5]
  out = _sample(x, jnp.asarray(coords), padding)
  ref, _, _ = _torch_grid_sample(x, coords, padding)
  ref = ref.detach().permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=0)

  # A differently-sized output grid (sampling a 5x4 grid out of h x w).
  small = _uniform(seed + 1, (2, 5, 4, 2), -2.0, max(h, w) + 1.0)
  ref_s, _, _ = _torch_grid_sample(x, small, padding)
  np.testing.assert_allclose(np.asarray(_sample(x, small, padding)),
                             ref_s.detach().permute(0, 2, 3, 1).numpy(), atol=2e-5, rtol=0)


@pytest.mark.parametrize('padding', ['zeros', 'border'])
def test_bilinear_sample_gradients_match_torch(padding):
  torch = pytest.importorskip('torch')
  h, w = 6, 7
  x = _normal(3, (1, h, w, 2))
  coords = warp.identity_grid(1, h, w) + _uniform(4, (1, h, w, 2), -2.5, 2.5)
  g = _normal(5, (1, h, w, 2))
  gx, gc = jax.jit(jax.grad(lambda a, c: jnp.sum(warp.bilinear_sample(a, c, padding) * g),
                            argnums=(0, 1)))(x, coords)
  out, x_t, grid_t = _torch_grid_sample(x, coords, padding)
  g_t = torch.tensor(np.asarray(g, np.float64)).permute(0, 3, 1, 2)
  (out * g_t).sum().backward()
  np.testing.assert_allclose(np.asarray(gx), x_t.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)
  # d/d(pixel) = d/d(normalised) * 2 / (size - 1).
  scale = np.asarray([2 / (w - 1), 2 / (h - 1)])
  np.testing.assert_allclose(np.asarray(gc), grid_t.grad.numpy() * scale, atol=1e-4)


def test_warp_gradient_wrt_flow_is_finite_and_nonzero():
  x = _normal(6, (2, 8, 6, 3))
  flow = _normal(7, (2, 8, 6, 2), scale=0.7)
  target = jnp.roll(x, 1, axis=2)
  grad = jax.jit(jax.grad(lambda f: jnp.mean((warp.warp(x, f) - target) ** 2)))(flow)
  assert bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).max()) > 1e-4


# ------------------------------------------------------------------ composition


def _interior_mask(flow_a, flow_b, h, w, margin=1.0):
  """Pixels whose every sample point (p + b, then + a there) stays inside by `margin`."""
  q = np.asarray(warp.identity_grid(flow_b.shape[0], h, w) + flow_b)
  r = q + np.asarray(_sample(flow_a, jnp.asarray(q), padding='border'))
  lim = np.asarray([w - 1 - margin, h - 1 - margin])
  inside = lambda p: np.all((p >= margin) & (p <= lim), axis=-1)
  return inside(q) & inside(r)


def test_compose_matches_sequential_warps_on_smooth_image():
  b, h, w = 2, 48, 40
  flow_f = _smooth_flow(8, b, h, w)
  flow_d = _smooth_flow(9, b, h, w)
  x = _smooth_image(b, h, w, 3)
  seq = _warp(_warp(x, flow_f), flow_d)
  comp = _warp(x, _compose(flow_f, flow_d))
  mask = _interior_mask(flow_f, flow_d, h, w)
  assert mask.mean() > 0.5  # the check covers most of the map
  err = np.abs(np.asarray(seq - comp))[mask]
  # Bilinear interpolation at fraction (t, s) errs by t(1-t)/2 f_xx + s(1-s)/2 f_yy
  # (the f_xy term is reproduced exactly), i.e. by <= (|f_xx| + |f_yy|) / 8.
  # For x that is <= 0.05 / 8 ~= 0.006. The sequential route also interpolates
  # warp(x, F), whose curvature is ~x''(1 + F')^2 + x' F'' with |F'| <~ 0.5
  # px/px for these fields, i.e. <= ~0.014; the composed route interpolates x
  # once and F once (exact inside F's linear pieces). The worst case is thus
  # ~0.02-0.025; over seeds 0-4 the maximum seen was 0.018, the mean ~0.002.
  assert err.max() < 2.5e-2, err.max()
  assert err.mean() < 3e-3, err.mean()


def test_compose_is_exact_for_integer_inner_flow():
  # Sampling at integer positions is exact, so with an integer inner flow both
  # routes coincide even on a random (non-smooth) image.
  b, h, w = 1, 16, 12
  x = _normal(10, (b, h, w, 2))
  flow_f = _smooth_flow(11, b, h, w, amplitude=1.5)
  flow_d = jnp.broadcast_to(jnp.asarray([-1.0, 2.0]), (b, h, w, 2))
  seq = _warp(_warp(x, flow_f), flow_d)
  comp = _warp(x, _compose(flow_f, flow_d))
  mask = _interior_mask(flow_f, flow_d, h, w, margin=0.0)
  np.testing.assert_allclose(np.asarray(seq)[mask], np.asarray(comp)[mask], atol=1e-5)


def test_compose_with_zero_flow_is_identity():
  flow = _normal(12, (2, 9, 7, 2), scale=1.3)
  zero = jnp.zeros_like(flow)
  np.testing.assert_array_equal(np.asarray(_compose(flow, zero)), np.asarray(flow))
  np.testing.assert_array_equal(np.asarray(_compose(zero, flow)), np.asarray(flow))


# --------------------------------------------------------------------- resizing


def test_upsample_constant_flow_doubles():
  c = jnp.asarray([1.25, -0.5])
  flow = jnp.broadcast_to(c, (2, 5, 4, 2))
  up = warp.upsample_flow(flow, 2)
  assert up.shape == (2, 10, 8, 2)
  np.testing.assert_allclose(np.asarray(up), np.broadcast_to(2 * np.asarray(c), up.shape),
                             rtol=1e-6)
  down = warp.downsample_flow(up, 2)
  assert down.shape == flow.shape
  np.testing.assert_allclose(np.asarray(down), np.asarray(flow), rtol=1e-6)


# ------------------------------------------------------------------ correlation


def _naive_correlation(ft, fs, r, normalize):
  ft = np.asarray(ft, np.float64)
  fs = np.asarray(fs, np.float64)
  b, h, w, c = ft.shape
  out = np.zeros((b, h, w, (2 * r + 1) ** 2))
  for n in range(b):
    for y in range(h):
      for x in range(w):
        k = 0
        for dy in range(-r, r + 1):
          for dx in range(-r, r + 1):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w:
              out[n, y, x, k] = max(0.0, float(ft[n, y, x] @ fs[n, yy, xx]))
            k += 1
  return out / math.sqrt(c) if normalize else out


@pytest.mark.parametrize('shape,radius', [((2, 7, 6, 5), 1), ((1, 6, 9, 4), 2),
                                          ((1, 5, 4, 3), 3), ((1, 4, 5, 2), 0)])
@pytest.mark.parametrize('normalize,impl', [(True, 'scan'), (False, 'scan'),
                                            (True, 'unrolled')])
def test_correlation_matches_naive_loop(shape, radius, normalize, impl):
  ft = _normal(sum(shape) + radius, shape)
  fs = _normal(sum(shape) + radius + 100, shape)
  out = jax.jit(correlation.local_correlation, static_argnums=(2, 3, 4))(
      ft, fs, radius, normalize, impl)
  assert out.shape == shape[:3] + ((2 * radius + 1) ** 2,)
  ref = _naive_correlation(ft, fs, radius, normalize)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)
  offsets = np.asarray(correlation.correlation_offsets(radius))
  assert offsets[0].tolist() == [-radius, -radius] and offsets[-1].tolist() == [radius, radius]
  if radius:
    assert offsets[1].tolist() == [-radius, -radius + 1]  # dx is the inner index


def _largest_intermediate(jaxpr):
  """Largest array (elements) produced anywhere in a jaxpr, sub-jaxprs included."""
  best = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      best = max(best, int(np.prod(v.aval.shape)))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          best = max(best, _largest_intermediate(inner))
  return best


@pytest.mark.parametrize('impl', ['scan', 'unrolled'])
def test_correlation_has_no_hw_by_hw_intermediate(impl):
  b, h, w, c, r = 1, 64, 44, 8, 3
  ft = jnp.zeros((b, h, w, c))
  fs = jnp.zeros((b, h, w, c))
  bound = 4 * h * w * (2 * r + 1) ** 2 * c
  assert (h * w) ** 2 > bound  # the check can tell the two apart
  # The detector itself must see a dense HW x HW correlation (traced only).
  dense = lambda a, s: jnp.einsum('bpc,bqc->bpq', a.reshape(b, h * w, c), s.reshape(b, h * w, c))
  assert _largest_intermediate(jax.make_jaxpr(dense)(ft, fs).jaxpr) >= (h * w) ** 2
  fn = jax.jit(lambda a, s: correlation.local_correlation(a, s, r, impl=impl))
  for f in (fn, jax.grad(lambda a, s: jnp.sum(fn(a, s)), argnums=(0, 1))):
    largest = _largest_intermediate(jax.make_jaxpr(f)(ft, fs).jaxpr)
    assert largest < bound, (largest, bound)
  # Compiled temporaries too (4 bytes per float32 element), where reported.
  mem = fn.lower(ft, fs).compile().memory_analysis()
  if mem is not None and hasattr(mem, 'temp_size_in_bytes'):
    assert mem.temp_size_in_bytes < 4 * bound, mem.temp_size_in_bytes


def test_correlation_impls_agree_in_value_and_gradient():
  ft = _normal(20, (2, 6, 5, 4))
  fs = _normal(21, (2, 6, 5, 4))
  g = _normal(22, (2, 6, 5, 25))

  def grads(impl):
    loss = lambda a, s: jnp.sum(correlation.local_correlation(a, s, 2, impl=impl) * g)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(ft, fs)

  for got, want in zip(grads('scan'), grads('unrolled')):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
