"""Local-window attention against dense references; MapFormer shapes and gradient flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tools import bench_attention
from reposedm_jax.models import local_attention as la
from reposedm_jax.models import mapformer


def _qkv(shape, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))


@pytest.mark.parametrize('window', [1, 3, 4, 5, 7])
@pytest.mark.parametrize('hw', [(7, 5), (8, 6), (9, 11)])
def test_local_equals_dense_masked(window, hw):
  q, k, v = _qkv((2,) + hw + (3, 4), seed=window)
  got = jax.jit(la.local_window_attention, static_argnums=3)(q, k, v, window)
  want = jax.jit(la.dense_masked_attention, static_argnums=3)(q, k, v, window)
  assert got.shape == q.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_window_offsets_convention():
  assert la.window_offsets(1) == (0, 0)
  assert la.window_offsets(3) == (-1, 1)
  assert la.window_offsets(4) == (-2, 1)
  # Window 1: each query sees only itself, so the output is its own value.
  q, k, v = _qkv((1, 4, 3, 2, 4))
  np.testing.assert_allclose(la.local_window_attention(q, k, v, 1), v, rtol=1e-6)


@pytest.mark.parametrize('hw', [(7, 5), (8, 6)])
def test_large_window_equals_global(hw):
  q, k, v = _qkv((2,) + hw + (2, 4), seed=1)
  window = 2 * max(hw)
  assert la.window_covers_map(window, *hw)
  assert not la.window_covers_map(window - 2, *hw)
  got = la.local_window_attention(q, k, v, window)  # gather path, k^2 > HW
  np.testing.assert_allclose(got, la.local_window_attention(q, k, v, None), rtol=1e-5, atol=1e-5)


def test_window_attention_dispatch():
  # Crossover of gathered vs dense memory (d = 16): window 7 pays off at 64x44, not 32x22.
  assert la.prefers_local(64, 44, 7, head_dim=16)
  assert not la.prefers_local(32, 22, 7, head_dim=16)
  assert not la.prefers_local(64, 44, 15, head_dim=16)
  assert not la.prefers_local(5, 4, 9, head_dim=1)  # covers the map: global
  for hw, window in (((12, 10), 3), ((7, 5), 5), ((7, 5), 13)):
    q, k, v = _qkv((1,) + hw + (2, 2), seed=window)
    np.testing.assert_allclose(
        la.window_attention(q, k, v, window), la.dense_masked_attention(q, k, v, window),
        rtol=1e-5, atol=1e-5)


def test_global_equals_numpy_float64():
  q, k, v = (np.asarray(x, np.float64) for x in _qkv((2, 5, 4, 3, 8), seed=2))
  b, h, w, n, d = q.shape
  qf, kf, vf = (x.reshape(b, h * w, n, d) for x in (q, k, v))
  logits = np.einsum('bqnd,bknd->bnqk', qf, kf) / np.sqrt(d)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  want = np.einsum('bnqk,bknd->bqnd', weights, vf).reshape(q.shape)
  got = la.local_window_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), None)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_no_hw_by_hw_intermediate():
  b, h, w, n, d, window = 1, 64, 44, 2, 8, 7
  q, k, v = _qkv((b, h, w, n, d), seed=3)
  limit = (h * w) ** 2 // 4  # elements per batch-head

  def loss(attn):
    return jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v, window) ** 2), argnums=(0, 1, 2))

  local_max = bench_attention.largest_intermediate(loss(la.local_window_attention), q, k, v)
  dense_max = bench_attention.largest_intermediate(loss(la.dense_masked_attention), q, k, v)
  # The largest local buffers are the gathered keys/values, HW * k^2 * d per batch-head.
  assert local_max // (b * n) <= h * w * window**2 * d < limit
  assert dense_max // (b * n) >= limit


def test_mapformer_shapes_and_window_levels():
  model = mapformer.MapFormer(dim=16, heads=2, windows=(None, 5, 3), depth=2)
  f_t, f_s = _qkv((2, 6, 5, 16), seed=4)[:2]
  # Eager: XLA:CPU compiling the parameter initialisers costs more than running them.
  (out_t, out_s), params = model.init_with_output(jax.random.PRNGKey(0), f_t, f_s)
  assert out_t.shape == f_t.shape and out_s.shape == f_s.shape
  assert np.all(np.isfinite(out_t)) and np.all(np.isfinite(out_s))
  names = set(params['params'])
  assert {f'level{i}_layer{j}' for i in range(3) for j in range(2)} < names
  assert {'norm_out_t', 'norm_out_s'} < names


def test_mapformer_rejects_bad_shapes():
  model = mapformer.MapFormer(dim=16, heads=2, windows=(3,), depth=1)
  f_t = jnp.zeros((1, 4, 4, 16))
  with pytest.raises(ValueError, match='F_T and F_S'):
    model.init(jax.random.PRNGKey(0), f_t, jnp.zeros((1, 4, 5, 16)))


def test_mapformer_gradients_reach_every_parameter():
  model = mapformer.MapFormer(dim=8, heads=2, windows=(None, 3), depth=1)
  f_t, f_s, r = _qkv((2, 5, 4, 8), seed=5)
  params = model.init(jax.random.PRNGKey(1), f_t, f_s)
  r_s = jnp.roll(r, 1, axis=-1)

  def loss(p):
    out_t, out_s = model.apply(p, f_t, f_s)
    # Random projections: a loss like sum(LN(x)^2) would be flat in x.
    return jnp.sum(out_t * r) + jnp.sum(out_s * r_s)

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.any(np.asarray(g) != 0), f'no gradient reaches {jax.tree_util.keystr(path)}'


def test_mapformer_layer_is_local():
  # Window 3: self-attention then cross-attention reach 2 positions away, no further.
  # 12x12 map with head width 2: window_attention takes the gathered local path.
  f_t, f_s = _qkv((1, 12, 12, 8), seed=6)[:2]
  assert la.prefers_local(12, 12, 3, head_dim=2)
  layer = mapformer.MapFormerLayer(8, 4, window=3)
  params = layer.init(jax.random.PRNGKey(2), f_t, f_s)
  out_t, _ = layer.apply(params, f_t, f_s)
  far_t, _ = layer.apply(params, f_t, f_s.at[:, 3:, 3:].multiply(-2.0))
  near_t, _ = layer.apply(params, f_t, f_s.at[:, 2, 2].multiply(-2.0))
  np.testing.assert_allclose(far_t[:, :1, :1], out_t[:, :1, :1], rtol=1e-6, atol=1e-6)
  assert not np.allclose(near_t[:, :1, :1], out_t[:, :1, :1])
