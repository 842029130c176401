"""The keypoint pre-warp (rpa.init_flow='keypoints'): closed forms, missing joints, and its place in B2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from reposedm_jax import checkpoint
from reposedm_jax.models import factory, keypoint_flow, warp
from tests.conftest import random_batch
from tests.test_b2_inclusion import _b1_params, _config, _outputs

pytestmark = pytest.mark.usefixtures('fast_compile')

H, W = 32, 22


def _pose(rng):
  """A plausible OpenPose-18 skeleton inside a 32 x 22 frame (every joint present)."""
  base = np.array([[11, 4], [11, 8], [8, 8], [7, 13], [6, 17], [14, 8], [15, 13], [16, 17], [9, 17], [9, 23],
                   [9, 29], [13, 17], [13, 23], [13, 29], [10, 3], [12, 3], [9, 4], [13, 4]], np.float64)
  return base + rng.uniform(-0.5, 0.5, base.shape)


def _flow(src, tgt, sigma=1.0, background=6.0):
  flow, person = keypoint_flow.limb_flow(jnp.asarray(src[None], jnp.float32), jnp.asarray(tgt[None], jnp.float32),
                                         (H, W), sigma, background)
  return np.asarray(flow[0], np.float64), np.asarray(person[0, ..., 0], np.float64)


def test_the_same_pose_gives_the_identity():
  kp = _pose(np.random.default_rng(0))
  flow, person = _flow(kp, kp)
  np.testing.assert_allclose(flow, 0.0, atol=1e-4)
  assert person.max() > 0.99 and person.min() < 0.01  # the limbs, and background far from them


def test_a_translated_pose_is_followed_by_a_translation_where_the_person_is():
  kp = _pose(np.random.default_rng(1))
  shift = np.array([3.0, -2.0])
  flow, person = _flow(kp, kp + shift)
  on = person > 0.999  # there the background's identity map has under 1e-3 of the blend
  assert on.sum() > 50
  np.testing.assert_allclose(flow[on], np.broadcast_to(-shift, flow[on].shape), atol=4e-3)


def test_each_limb_maps_along_and_across_as_the_closed_form():
  """One limb present (the right forearm, joints 3-4): the float64 map of a point at fraction u along the target
  limb and v pixels across it is a_s + u (b_s - a_s) + v n_s, with n_s the source limb's unit normal."""
  src = np.full((18, 2), -1.0)
  tgt = np.full((18, 2), -1.0)
  src[3], src[4] = (5.0, 10.0), (5.0, 20.0)  # vertical, length 10
  tgt[3], tgt[4] = (4.0, 12.0), (14.0, 12.0)  # horizontal, length 10
  flow, person = _flow(src, tgt, sigma=1.0, background=50.0)  # background far: the limb owns every pixel
  a_t, b_t, a_s, b_s = tgt[3], tgt[4], src[3], src[4]
  d_t, d_s = b_t - a_t, b_s - a_s
  n_s = np.array([-d_s[1], d_s[0]]) / np.linalg.norm(d_s)
  for x, y in [(6, 12), (9, 13), (12, 10), (4, 14)]:
    p = np.array([x, y], np.float64)
    u = np.dot(p - a_t, d_t) / np.dot(d_t, d_t)
    v = (d_t[0] * (p - a_t)[1] - d_t[1] * (p - a_t)[0]) / np.linalg.norm(d_t)
    want = a_s + u * d_s + v * n_s
    np.testing.assert_allclose(flow[y, x] + p, want, atol=1e-3)
    assert person[y, x] > 0.999


def test_missing_joints_give_the_identity_and_no_person():
  src = _pose(np.random.default_rng(2))
  flow, person = _flow(src, np.full((18, 2), -1.0))
  np.testing.assert_array_equal(flow, 0.0)
  np.testing.assert_array_equal(person, 0.0)


def test_the_pre_warp_moves_the_source_onto_the_target_pose():
  """A bright square on the source's right forearm lands on the target's (moved) forearm."""
  rng = np.random.default_rng(3)
  src_kp = _pose(rng)
  tgt_kp = src_kp.copy()
  tgt_kp[[3, 4]] += np.array([-3.0, 2.0])  # the right forearm moves (and with it the upper arm's end)
  img = np.zeros((1, H, W, 1), np.float32)
  c = np.round((src_kp[3] + src_kp[4]) / 2).astype(int)
  img[0, c[1] - 1:c[1] + 2, c[0] - 1:c[0] + 2] = 1.0
  flow, _ = _flow(src_kp, tgt_kp)
  out = np.asarray(warp.warp(jnp.asarray(img), jnp.asarray(flow[None], jnp.float32)))[0, ..., 0]
  x, y = np.round((tgt_kp[3] + tgt_kp[4]) / 2).astype(int)
  assert out[y, x] > 0.5, out[y - 2:y + 3, x - 2:x + 3]


@pytest.mark.parametrize('path', ['input', 'tokens'])
def test_b2_with_the_keypoint_start_is_still_b1_at_initialisation(tmp_path, path):
  b1 = _b1_params()
  ckpt = str(tmp_path / 'b1')
  checkpoint.save_params(ckpt, b1)
  config = _config('b2', path)
  config.rpa.init_flow = 'keypoints'
  model = factory.build_model(config)
  fresh = factory.init_params(model, config, jax.random.key(3))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fresh)
  params = checkpoint.load_params(ckpt, abstract, fresh_params=fresh)
  batch = random_batch(config)
  t = jnp.asarray([10, 500, 900, 999])
  kpts = (jnp.asarray(batch['src_kpts']), jnp.asarray(batch['tgt_kpts']))
  src = jnp.asarray(batch['src_img']).at[1].set(0.0)
  got = model.apply({'params': params}, jnp.asarray(batch['tgt_img']), t, jnp.asarray(batch['tgt_pose']), src,
                    train=False, kpts=kpts)
  want = _outputs(_config('b1'), b1, batch, t)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match='init_flow=keypoints needs kpts'):
    model.apply({'params': params}, jnp.asarray(batch['tgt_img']), t, jnp.asarray(batch['tgt_pose']), src,
                train=False)


def test_the_aligned_input_is_the_pre_warped_source_masked_to_the_person():
  config = _config('b2', 'input')
  config.rpa.init_flow = 'keypoints'
  model = factory.build_model(config)
  params = traverse_util.flatten_dict(factory.init_params(model, config, jax.random.key(0)))
  # RPA's update zeroed (its last layer), so what RPA is handed is what comes out.
  params = traverse_util.unflatten_dict({k: (jnp.zeros_like(v) if 'aggregator' in k and 'conv_1' in k else v)
                                         for k, v in params.items()})
  assert any('aggregator' in k and 'conv_1' in k for k in traverse_util.flatten_dict(params))
  rng = np.random.default_rng(4)
  src_kp = np.stack([_pose(rng), _pose(rng)]).astype(np.float32)
  tgt_kp = src_kp + np.float32(2.0)
  src = jnp.asarray(rng.uniform(-1, 1, (2, H, W, 3)), jnp.float32)
  warped, valid, _ = model.apply({'params': params}, src, jnp.zeros((2, H, W, 20)), (src_kp, tgt_kp),
                                 method=model.align)
  flow, person = keypoint_flow.limb_flow(jnp.asarray(src_kp), jnp.asarray(tgt_kp), (H, W),
                                         config.rpa.init_flow_sigma * H, config.rpa.init_flow_background * H)
  mask = warp.warp(jnp.ones((2, H, W, 1)), flow) * person
  np.testing.assert_allclose(np.asarray(warped), np.asarray(warp.warp(src, flow) * mask), atol=1e-5)
  np.testing.assert_allclose(np.asarray(valid), np.asarray(mask), atol=1e-5)
  assert float(jnp.mean(valid)) < 0.9  # the background is masked out
