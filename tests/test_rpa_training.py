"""RPA training: the person / in-frame masks of the auxiliary loss, and the pre-train-then-freeze phases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from reposedm_jax import rpa_training, sharding, train, train_state
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory
from tests.conftest import random_batch
from tests.test_train import tiny_config

pytestmark = pytest.mark.usefixtures('fast_compile')


def test_person_mask_is_the_union_of_limb_capsules():
  kpts = -np.ones((1, 18, 2), np.float32)
  kpts[0, 1] = (10, 5)   # neck
  kpts[0, 8] = (10, 25)  # right hip: only limb (1, 8) has both ends
  mask = np.asarray(rpa_training.person_mask(jnp.asarray(kpts), (32, 22), 2.0))[0, :, :, 0]
  ys, xs = np.mgrid[0:32, 0:22].astype(np.float64)
  t = np.clip((ys - 5) / 20, 0, 1)
  want = np.hypot(xs - 10, ys - (5 + 20 * t)) <= 2.0  # float64 distance to the segment
  np.testing.assert_array_equal(mask.astype(bool), want)


def test_aux_loss_counts_only_the_weighted_pixels_of_kept_rows():
  class R:
    aux_region, aux_person_radius, aux_in_frame = 'all', 0.06, True
  target = jnp.zeros((2, 4, 4, 3))
  warped = jnp.ones((2, 4, 4, 3))
  valid = jnp.zeros((2, 4, 4, 1)).at[:, :2].set(1.0)
  warped = warped.at[:, 2:].set(5.0)  # outside the frame: the fixed penalty, not |5 - 0|
  got = rpa_training.aux_loss(R, warped, valid, target, jnp.zeros((2, 18, 2)), jnp.asarray([1.0, 0.0]))
  # Half the pixels in frame with L1 1, half out with OUT_OF_FRAME_L1; the second row is dropped (keep 0).
  assert float(got) == pytest.approx(0.5 * 1.0 + 0.5 * rpa_training.OUT_OF_FRAME_L1)


def test_leaving_the_frame_is_never_free():
  """The first form divided by the in-frame area only: a warp entirely out of the frame scored 0."""
  class R:
    aux_region, aux_person_radius, aux_in_frame = 'all', 0.06, True
  target = jnp.full((1, 4, 4, 3), 0.5)
  good = rpa_training.aux_loss(R, target + 0.1, jnp.ones((1, 4, 4, 1)), target, jnp.zeros((1, 18, 2)),
                               jnp.ones(1))
  gone = rpa_training.aux_loss(R, jnp.zeros_like(target), jnp.zeros((1, 4, 4, 1)), target, jnp.zeros((1, 18, 2)),
                               jnp.ones(1))
  assert float(good) == pytest.approx(0.1, abs=1e-6) and float(gone) == pytest.approx(rpa_training.OUT_OF_FRAME_L1)
  assert float(gone) > float(good)


def _b2_config(pretrain, mult):
  config = tiny_config()
  config.variant = 'b2'
  config.rpa.dim, config.rpa.ds, config.rpa.heads, config.rpa.windows = 16, 4, 2, (3,)
  config.rpa.radius, config.rpa.iterations = 1, 1
  config.rpa.pretrain_steps, config.rpa.lr_mult_after_pretrain = pretrain, mult
  return config


def _replicated_run(config):
  """(mesh, model, tx, replicated sharding, initial state on it, the state's shardings) for a 2-device step."""
  mesh = Mesh(np.asarray(jax.devices()[:2]), ('data',))
  model = factory.build_model(config)
  tx = train_state.make_optimizer(config)
  repl = sharding.replicated(mesh)
  state = jax.device_put(train_state.init_state(model, tx, config, jax.random.key(0)), repl)
  return mesh, model, tx, repl, state, jax.tree.map(lambda _: repl, state)


def test_pretraining_moves_only_rpa_then_freezes_it():
  config = _b2_config(pretrain=2, mult=0.0)
  mesh, model, tx, repl, state, shard = _replicated_run(config)
  pre = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, shard, pretrain=True)
  full = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, shard)
  batch = sharding.global_batch(random_batch(config), mesh)
  start = jax.device_get(state['params'])
  for _ in range(2):
    state, m = pre(state, batch, jax.random.key(1))
  after_pre = jax.device_get(state['params'])
  assert float(m['rpa_l1']) > 0
  jax.tree.map(np.testing.assert_array_equal, after_pre['unet'], start['unet'])
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(after_pre['rpa']), jax.tree.leaves(start['rpa'])))
  state, _ = full(state, batch, jax.random.key(1))
  after = jax.device_get(state['params'])
  jax.tree.map(np.testing.assert_array_equal, after['rpa'], after_pre['rpa'])  # frozen (lr x 0)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(after['unet']), jax.tree.leaves(after_pre['unet'])))


def test_a_frozen_rpa_step_skips_its_backward_and_updates_the_rest_as_before(monkeypatch):
  """lr_mult_after_pretrain=0: the joint step differentiates the U-Net only; params, EMA and the loss metrics equal
  the step that also differentiates RPA (whose updates the optimizer then scales by 0)."""
  config = _b2_config(pretrain=1, mult=0.0)  # rpa.unet_grad=False, as the demo trains
  assert rpa_training.frozen_after_pretrain(config)
  assert not rpa_training.frozen_after_pretrain(_b2_config(pretrain=1, mult=0.5))
  mesh, model, tx, repl, state, shard = _replicated_run(config)
  batch = sharding.global_batch(random_batch(config), mesh)
  pre = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, shard, pretrain=True)
  state, _ = pre(state, batch, jax.random.key(1))
  fast = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, shard)
  fast_text = fast.lower(state, batch, jax.random.key(1)).as_text()
  with monkeypatch.context() as m:
    m.setattr(rpa_training, 'frozen_after_pretrain', lambda _: False)
    slow = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, shard)
    slow_text = slow.lower(state, batch, jax.random.key(1)).as_text()
  assert len(fast_text) < len(slow_text)  # the RPA backward is gone from the program
  keep = jax.device_get(state)
  got, got_m = jax.device_get(fast(jax.device_put(keep, repl), batch, jax.random.key(1)))
  want, want_m = jax.device_get(slow(jax.device_put(keep, repl), batch, jax.random.key(1)))
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-7)
  jax.tree.map(close, got['params'], want['params'])
  jax.tree.map(close, got['ema_params'], want['ema_params'])
  jax.tree.map(np.testing.assert_array_equal, got['params']['rpa'], keep['params']['rpa'])
  for k in ('loss', 'mse', 'vb', 'rpa_l1', 'update_norm'):
    close(got_m[k], want_m[k])


def test_the_unet_optimizer_starts_at_step_k_as_if_fresh():
  """Adam's count of the U-Net starts at the end of pre-training: its first update equals a fresh one."""
  config = _b2_config(pretrain=3, mult=1.0)
  plain = _b2_config(pretrain=0, mult=1.0)
  params = factory.init_params(factory.build_model(config), config, jax.random.key(0))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
  tx, tx_plain = train_state.make_optimizer(config), train_state.make_optimizer(plain)
  s = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, grads)
  for _ in range(3):
    _, s = tx.update(zero, s, params)
  u, _ = tx.update(grads, s, params)
  u_plain, _ = tx_plain.update(grads, tx_plain.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6),
               u['unet'], u_plain['unet'])


@pytest.mark.parametrize('unet_grad', [False, True])
def test_the_diffusion_gradient_reaches_rpa_only_with_unet_grad(unet_grad):
  from flax import traverse_util
  config = _b2_config(pretrain=0, mult=1.0)
  config.rpa.unet_grad = unet_grad
  model = factory.build_model(config)
  params = factory.init_params(model, config, jax.random.key(0))
  flat = traverse_util.flatten_dict(params)
  rng = np.random.default_rng(0)
  for k in flat:  # open the zero-initialised aligned input and output convs so gradients flow at all
    if ('aligned_input' in k or 'out_2' in k) and k[-1] == 'kernel':
      flat[k] = jnp.asarray(rng.normal(0, 0.5, flat[k].shape), jnp.float32)
  params = traverse_util.unflatten_dict(flat)
  batch = random_batch(config)
  x = jnp.asarray(rng.normal(size=batch['tgt_img'].shape), jnp.float32)
  t = jnp.full((x.shape[0],), 500, jnp.int32)

  def diffusion_only(p):  # no auxiliary term: any RPA gradient comes through the U-Net
    out = model.apply({'params': p}, x, t, batch['tgt_pose'], batch['src_img'], train=False,
                      kpts=(batch['src_kpts'], batch['tgt_kpts']))
    return jnp.mean(jnp.square(out))

  grads = jax.grad(diffusion_only)(params)
  rpa_norm = float(optax_norm(grads['rpa']))
  assert (rpa_norm > 0) == unet_grad, rpa_norm
  assert float(optax_norm(grads['unet'])) > 0


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def test_out_of_frame_fraction_counts_the_region_sampled_outside():
  class R:
    aux_region, aux_person_radius = 'all', 0.06
  valid = jnp.zeros((2, 4, 4, 1)).at[0].set(1.0).at[1, :1].set(1.0)  # row 0 all in, row 1 a quarter in
  assert float(rpa_training.out_of_frame(R, valid, jnp.zeros((2, 18, 2)))) == pytest.approx((0 + 12) / 32)
