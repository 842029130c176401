"""Pose Interaction Fields: heatmaps, W_h, G_phi's gradient, and guidance in the train step and sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from reposedm_jax import pif, pose_estimator, sharding, train, train_state
from reposedm_jax import sample as sample_lib
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory
from reposedm_jax.data import keypoints
from tests.conftest import random_batch
from tests.test_train import tiny_config

pytestmark = pytest.mark.usefixtures('fast_compile')


def test_render_heatmaps_matches_float64_closed_form():
  rng = np.random.default_rng(0)
  kpts = rng.uniform(0, 20, (2, 17, 2)).astype(np.float32)
  kpts[1, 3] = -1  # missing joint -> all-zero map
  image_hw, out_hw, sigma = (32, 22), (16, 11), 1.5
  got = np.asarray(pif.render_heatmaps(jnp.asarray(kpts), image_hw, out_hw, sigma))
  ys, xs = np.mgrid[0:16, 0:11].astype(np.float64)
  for b in range(2):
    for k in range(17):
      if kpts[b, k, 0] == -1:
        assert np.all(got[b, :, :, k] == 0)
        continue
      cx = (kpts[b, k, 0] + 0.5) * 11 / 22 - 0.5
      cy = (kpts[b, k, 1] + 0.5) * 16 / 32 - 0.5
      want = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
      np.testing.assert_allclose(got[b, :, :, k], want, atol=1e-6)


def test_interaction_mask_thresholds_the_summed_heatmaps():
  heat = np.zeros((1, 3, 4, 17), np.float32)
  heat[0, 0, 0, 0] = 0.06
  heat[0, 0, 0, 1] = 0.05  # sum 0.11 > 0.1: inside, though each joint alone is below
  heat[0, 1, 1, 2] = 0.1  # exactly at the threshold: outside (strict >)
  heat[0, 2, 3, 16] = 0.9
  mask = np.asarray(pif.interaction_mask(jnp.asarray(heat), 0.1))[0, :, :, 0]
  want = np.zeros((3, 4))
  want[0, 0] = want[2, 3] = 1
  np.testing.assert_array_equal(mask, want)


def _toy_heat_fn(hw=(16, 12), seed=0):
  est = pose_estimator.ToyEstimator()
  variables = est.init(jax.random.key(seed), jnp.zeros((1,) + hw + (3,)))
  return lambda x: est.apply(variables, x)


@pytest.mark.parametrize('reference', ['heatmaps', 'features'])
def test_guidance_gradient_matches_finite_differences(reference):
  heat_fn = _toy_heat_fn()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 16, 12, 3)), jnp.float32)
  if reference == 'heatmaps':
    kpts = jnp.asarray(rng.uniform(0, 12, (2, 17, 2)), jnp.float32)
    ref = pif.render_heatmaps(kpts, (16, 12), (8, 6), 1.0)
  else:
    ref = heat_fn(jnp.asarray(rng.uniform(-1, 1, (2, 16, 12, 3)), jnp.float32))['features']
  kw = dict(threshold=0.1, reference=reference, target_support=True)
  g, grad = pif.guidance_gradient(heat_fn, x, ref, **kw)
  assert g.shape == (2,) and grad.shape == x.shape
  total = lambda y: float(jnp.sum(pif.g_phi(heat_fn(y), ref, **kw)))
  h = 1e-2
  for i in range(4):
    d = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    fd = (total(x + h * d) - total(x - h * d)) / (2 * h)
    an = float(jnp.vdot(grad, d))
    assert abs(fd - an) <= 2e-2 * abs(an) + 1e-6, (i, fd, an)
  # Examples are independent: example 0's gradient does not depend on example 1.
  _, grad0 = pif.guidance_gradient(heat_fn, x[:1], ref[:1], **kw)
  np.testing.assert_allclose(np.asarray(grad[:1]), np.asarray(grad0), rtol=1e-4, atol=1e-7)


def test_corrected_eps_moves_x0_downhill_on_G():
  """x̂0 from ε̃ = ε + s sqrt(1-ᾱ) ∇G is x̂0 - s (1-ᾱ)/sqrt(ᾱ) ∇G: a small step lowers G."""
  heat_fn = _toy_heat_fn()
  rng = np.random.default_rng(2)
  x0 = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 16, 12, 3)), jnp.float32)
  ref = pif.render_heatmaps(jnp.asarray(rng.uniform(0, 12, (2, 17, 2)), jnp.float32), (16, 12), (8, 6), 1.0)
  kw = dict(threshold=0.1, reference='heatmaps', target_support=True)
  acp = 0.7
  eps = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  x_t = np.sqrt(acp) * x0 + np.sqrt(1 - acp) * eps
  g_before, grad = pif.guidance_gradient(heat_fn, x0, ref, **kw)
  eps_t = pif.correct_eps(eps, grad, jnp.float32(acp), 0.05)
  x0_new = (x_t - np.sqrt(1 - acp) * eps_t) / np.sqrt(acp)
  np.testing.assert_allclose(np.asarray(x0_new), np.asarray(x0 - 0.05 * (1 - acp) / np.sqrt(acp) * grad), atol=1e-5)
  g_after = pif.g_phi(heat_fn(x0_new), ref, **kw)
  assert np.all(np.asarray(g_after) < np.asarray(g_before))


def full_config(scale=1.0):
  config = tiny_config()
  config.variant = 'full'
  config.rpa.dim, config.rpa.ds, config.rpa.heads, config.rpa.windows = 16, 4, 2, (3,)
  config.rpa.radius, config.rpa.iterations = 1, 1
  config.pif.estimator = 'toy'
  config.pif.train_scale = config.pif.sample_scale = scale
  config.pif.train_fraction = 0.5
  config.pif.train_mode = 'literal'
  config.pif.grad_blur = 0.0  # the raw ∇G, so tests can compare with eq. 15 / 16 directly (low_pass: own tests)
  config.pose.sigma = 1.0
  return config


def batch_with_kpts(config, seed=0):
  batch = random_batch(config, seed)
  rng = np.random.default_rng(seed + 100)
  kpts = rng.uniform(0, config.data.width, (config.train.batch_size, 18, 2)).astype(np.float32)
  kpts[:, 3] = -1
  return {**batch, 'tgt_kpts': kpts}


def one_step(config, with_guide: bool):
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  model = factory.build_model(config)
  tx = train_state.make_optimizer(config)
  state = train_state.init_state(model, tx, config, jax.random.key(0))
  if with_guide:
    state['guide'] = pose_estimator.load_guide_variables(config, '')
  repl = sharding.replicated(mesh)
  state = jax.device_put(state, repl)
  step = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh,
                                  jax.tree.map(lambda _: repl, state))
  return jax.device_get(step(state, sharding.global_batch(batch_with_kpts(config), mesh), jax.random.key(1)))


def test_guided_train_step_with_zero_scale_equals_unguided_step():
  s_full, m_full = one_step(full_config(scale=0.0), with_guide=True)
  b2 = full_config()
  b2.variant = 'b2'
  s_b2, m_b2 = one_step(b2, with_guide=False)
  assert np.isfinite(m_full['pif_g']) and m_full['pif_grad_rms'] > 0  # guidance was computed, then scaled by 0
  assert float(m_full['loss']) == float(m_b2['loss'])
  jax.tree.map(np.testing.assert_array_equal, s_full['params'], s_b2['params'])


def _toy_train_inputs(b=4, hw=(16, 12)):
  rng = np.random.default_rng(4)
  x_t = jnp.asarray(rng.normal(size=(b,) + hw + (3,)), jnp.float32)
  kpts = rng.uniform(0, hw[1], (b, 18, 2)).astype(np.float32)
  batch = {'tgt_kpts': jnp.asarray(kpts), 'tgt_img': jnp.asarray(rng.uniform(-1, 1, x_t.shape), jnp.float32)}
  return x_t, batch


def test_guide_train_output_touches_only_guided_rows_and_timesteps():
  config = full_config(scale=3.0)
  pcfg = config.pif
  pcfg.train_fraction, pcfg.train_t_max = 0.5, 500
  heat_fn = _toy_heat_fn()
  x_t, batch = _toy_train_inputs()
  out = jnp.asarray(np.random.default_rng(5).normal(size=x_t.shape[:3] + (6,)), jnp.float32)
  t = jnp.asarray([100, 900, 200, 300])  # row 1 is above train_t_max; rows 2-3 are past the guided half
  new, extra, m = pif.train_terms(pcfg, heat_fn, pose_estimator.reference_heads(config), out, sched=linear_schedule(1000),
                                  x_t=x_t, t=t, noise=jnp.zeros_like(x_t), batch=batch)
  assert float(extra) == 0.0  # literal mode changes the output, adds no loss
  changed = np.any(np.asarray(new) != np.asarray(out), axis=(1, 2, 3))
  np.testing.assert_array_equal(changed, [True, False, False, False])
  np.testing.assert_array_equal(np.asarray(new)[..., 3:], np.asarray(out)[..., 3:])  # v is never guided
  assert m['pif_grad_rms'] > 0


def test_second_order_guidance_differentiates_through_the_gradient():
  """With stop_gradient off, d loss / d theta includes the path through ∇G(x̂0(theta))."""
  heat_fn = _toy_heat_fn()
  x_t, batch = _toy_train_inputs(b=2)
  t = jnp.asarray([300, 600])
  sched = linear_schedule(1000)

  def loss(theta, stop):
    config = full_config(scale=5.0)
    config.pif.stop_gradient, config.pif.train_fraction = stop, 1.0
    out = jnp.concatenate([theta * x_t, jnp.zeros_like(x_t)], -1)  # a one-parameter "network"
    new, _, _ = pif.train_terms(config.pif, heat_fn, pose_estimator.reference_heads(config), out, sched=sched, x_t=x_t,
                                t=t, noise=jnp.zeros_like(x_t), batch=batch)
    return jnp.mean(jnp.square(new[..., :3]))

  theta = jnp.float32(0.3)
  g_first, g_second = jax.grad(loss)(theta, True), jax.grad(loss)(theta, False)
  assert float(loss(theta, True)) == float(loss(theta, False))  # same value, different derivative
  assert abs(float(g_first) - float(g_second)) > 1e-6 * abs(float(g_first))
  h = 1e-2
  fd = (float(loss(theta + h, False)) - float(loss(theta - h, False))) / (2 * h)
  assert abs(fd - float(g_second)) <= 3e-2 * abs(fd)


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_guided_sampling_zero_scale_equals_unguided_and_guidance_lowers_G(sampler):
  config = full_config(scale=0.0)
  config.sample.sampler, config.sample.num_steps = sampler, 4
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  model = factory.build_model(config)
  params = factory.init_params(model, config, jax.random.key(0))
  gv = pose_estimator.load_guide_variables(config, '')
  sched = linear_schedule(1000)
  batch = batch_with_kpts(config, seed=3)
  key = jax.random.key(5)
  plain = sample_lib.make_sampler(model, sched, config, mesh, 4)(params, batch, key)
  zero = sample_lib.make_sampler(model, sched, config, mesh, 4, guide_vars=gv)(params, batch, key)
  np.testing.assert_array_equal(plain, zero)
  if sampler == 'ddpm':  # The guided direction is checked once (DDIM); both samplers share the hook.
    return
  config.pif.sample_scale = 20.0
  guided = sample_lib.make_sampler(model, sched, config, mesh, 4, guide_vars=gv)(params, batch, key)
  heat_fn = pose_estimator.make_heat_fn(config, gv)
  ref = pif.render_heatmaps(keypoints.openpose_to_coco(jnp.asarray(batch['tgt_kpts'])), (32, 22), (16, 11), 1.0)
  kw = dict(threshold=0.1, reference='heatmaps', target_support=True)
  g_plain = float(jnp.mean(pif.g_phi(heat_fn(jnp.asarray(plain)), ref, **kw)))
  g_guided = float(jnp.mean(pif.g_phi(heat_fn(jnp.asarray(guided)), ref, **kw)))
  assert g_guided < g_plain


def test_full_variant_trains_and_samples_with_the_b1_commands(tmp_path):
  import json
  import os
  from reposedm_jax.data import synthetic
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=2, identities=10, views_per_identity=3, height=32, width=22, fmt='pidm')
  config = full_config(scale=1.0)
  config.data.root = root
  # A grid at step 2: the sampler then runs after donated train steps (it must read the live estimator).
  config.train.num_steps, config.train.log_every, config.train.ckpt_every, config.train.sample_every = 2, 1, 1, 2
  config.sample.num, config.sample.batch_size, config.sample.num_steps = 4, 4, 2
  workdir = str(tmp_path / 'run')
  last = train.train_and_evaluate(config, workdir)
  assert np.isfinite(last['pif_g']) and last['pif_grad_rms'] > 0
  logged = [json.loads(ln) for ln in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert all('pif_g' in row for row in logged)
  assert all('rpa_l1' in row and row['rpa_l1'] > 0 for row in logged)
  assert os.path.exists(os.path.join(workdir, 'samples', 'train_step_0000002.png'))
  out = sample_lib.run_sample(config, workdir)  # Restores a checkpoint that holds the estimator ('guide').
  assert len([f for f in os.listdir(out) if f.endswith('_vis.png')]) == 4  # + the training grid
  # RPA's strips: source | F^0 .. F^N | target, N + 3 columns of 22 px (upscaled f times) plus 2-px padding.
  from PIL import Image
  from reposedm_jax import visualize
  strips = os.listdir(os.path.join(out, 'rpa_strips'))
  strip = np.asarray(Image.open(os.path.join(out, 'rpa_strips', strips[0])))
  f = visualize.upscale_factor(config.data.height)
  assert strip.shape[1] == (config.rpa.iterations + 3) * (22 * f + 2) + 2
  with open(os.path.join(out, 'rpa_alignment_p0.json')) as fh:  # the alignment error, all pixels and body only
    summary = json.load(fh)
  per_update = summary['body_l1_warped_source_vs_target_per_update']
  assert summary['pairs'] == 4 and len(per_update) == config.rpa.iterations + 1
  assert 0 < summary['body_l1_unwarped_source_vs_target'] != summary['l1_unwarped_source_vs_target']


# ----------------------------------------------------------------------------- the reference is the ideal output

def _ideal_hrnet_heat_fn(image_hw, heads):
  """An 'ideal' two-head estimator: reads 17 (x, y) keypoints from the image's first row and outputs exactly
  the targets HigherHRNet's trainer renders for them (stride 4 and stride 2), aggregated as hrnet does.
  Differentiable in the image, so ∇G is the real gradient through a two-head aggregation."""
  from reposedm_jax.models import hrnet
  (s4, sig4), (s2, sig2) = heads

  def heat_fn(images):
    kpts = images[:, 0, :17, :2] * 100.0  # [B, 17, 2] COCO keypoints, pixels
    maps = {}
    for name, s, sig in (('heatmaps_s4', s4, sig4), ('heatmaps_s2', s2, sig2)):
      hw = (-(-image_hw[0] // s), -(-image_hw[1] // s))
      maps[name] = pif.render_heatmaps(kpts, (hw[0] * s, hw[1] * s), hw, sig)
    return {'heatmaps': hrnet.aggregate_heatmaps(maps), 'features': maps['heatmaps_s2']}

  return heat_fn


def _image_with_kpts(kpts_coco, hw):
  img = np.zeros((kpts_coco.shape[0],) + hw + (3,), np.float32)
  img[:, 0, :17, :2] = kpts_coco / 100.0
  return jnp.asarray(img)


def test_G_vanishes_at_the_true_pose_and_grows_with_displacement():
  hw, heads = (64, 44), ((4, 2.0), (2, 2.0))
  heat_fn = _ideal_hrnet_heat_fn(hw, heads)
  rng = np.random.default_rng(7)
  op = rng.uniform(8, 36, (1, 18, 2)).astype(np.float32)  # OpenPose-18 target keypoints
  coco = np.asarray(keypoints.openpose_to_coco(jnp.asarray(op)))
  ref = pif.reference_heatmaps(jnp.asarray(op), hw, heads)
  kw = dict(threshold=0.1, reference='heatmaps', target_support=True, normalize='sum')
  g0, grad0 = pif.guidance_gradient(heat_fn, _image_with_kpts(coco, hw), ref, **kw)
  assert float(g0[0]) < 1e-9
  gs, grads = [], []
  for shift in (0.5, 1, 2, 4, 8):
    moved = coco.copy()
    moved[:, 9, 0] += shift  # one wrist moves right
    g, grad = pif.guidance_gradient(heat_fn, _image_with_kpts(moved, hw), ref, **kw)
    gs.append(float(g[0]))
    grads.append(float(jnp.max(jnp.abs(grad))))
  assert all(b > a for a, b in zip(gs, gs[1:])) and gs[0] > 1e-4, gs
  # ∇G at the true pose is float32 rounding of the keypoints read back from the image (~1e-4 here), far
  # below the gradient half a pixel away.
  assert float(jnp.max(jnp.abs(grad0))) < 1e-2 * grads[0], (float(jnp.max(jnp.abs(grad0))), grads[0])
  # A one-sigma reference (the old reading) does not vanish at the true pose: the inconsistency fixed here.
  old = pif.render_heatmaps(jnp.asarray(coco), hw, (32, 22), 2.0)
  assert float(pif.g_phi(heat_fn(_image_with_kpts(coco, hw)), old, **kw)[0]) > 1e-2


def test_area_normalisation_divides_the_sum():
  rng = np.random.default_rng(8)
  pred = {'heatmaps': jnp.asarray(rng.uniform(0, 1, (2, 8, 6, 17)), jnp.float32)}
  ref = jnp.asarray(rng.uniform(0, 1, (2, 8, 6, 17)), jnp.float32)
  kw = dict(threshold=0.1, reference='heatmaps', target_support=True)
  np.testing.assert_allclose(np.asarray(pif.g_phi(pred, ref, normalize='area', **kw)) * 48,
                             np.asarray(pif.g_phi(pred, ref, normalize='sum', **kw)), rtol=1e-6)


def test_eq16_has_its_three_terms_and_w1_s0_is_the_conditional_prediction():
  rng = np.random.default_rng(9)
  eu, ec, g = (jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32) for _ in range(3))
  acp = jnp.float32(0.36)
  got = pif.eq16(eu, ec, g, acp, w_c=2.0, s=3.0)
  want = np.float64(eu) + 2.0 * (np.float64(ec) - np.float64(eu)) + 2.0 * 3.0 * 0.8 * np.float64(g)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(pif.eq16(eu, ec, g, acp, w_c=1.0, s=0.0)), np.asarray(ec))


def test_sampling_window_turns_guidance_off_above_t_max():
  config = full_config(scale=5.0)
  config.pif.sample_t_max = 400
  heat_fn = _toy_heat_fn()
  x, _ = _toy_train_inputs(b=2)
  kpts = jnp.asarray(np.random.default_rng(3).uniform(0, 12, (2, 18, 2)), jnp.float32)
  corr = pif.sampling_correction(config.pif, heat_fn, pose_estimator.reference_heads(config), linear_schedule(1000), kpts,
                                 2.0)
  eps = jnp.zeros_like(x)
  assert float(jnp.max(jnp.abs(corr(x, jnp.int32(800), eps, x)))) == 0.0
  inside = corr(x, jnp.int32(300), eps, x)
  assert float(jnp.max(jnp.abs(inside))) > 0.0
  # Inside the window the lax.cond branch is exactly the every-step correction (no window, no branch).
  config.pif.sample_t_max = 999
  every = pif.sampling_correction(config.pif, heat_fn, pose_estimator.reference_heads(config), linear_schedule(1000),
                                  kpts, 2.0)
  np.testing.assert_array_equal(np.asarray(jax.jit(corr)(x, jnp.int32(300), eps, x)),
                                np.asarray(jax.jit(every)(x, jnp.int32(300), eps, x)))
  np.testing.assert_allclose(np.asarray(inside), np.asarray(every(x, jnp.int32(300), eps, x)), atol=1e-5)


def test_penalty_mode_adds_a_loss_whose_gradient_reaches_theta():
  config = full_config(scale=5.0)
  config.pif.train_mode, config.pif.train_fraction, config.pif.penalty_weight = 'penalty', 1.0, 0.5
  heat_fn, heads = _toy_heat_fn(), pose_estimator.reference_heads(config)
  x_t, batch = _toy_train_inputs(b=2)
  t, sched = jnp.asarray([200, 300]), linear_schedule(1000)

  def extra(theta):
    out = jnp.concatenate([theta * x_t, jnp.zeros_like(x_t)], -1)
    new, loss, _ = pif.train_terms(config.pif, heat_fn, heads, out, sched=sched, x_t=x_t, t=t,
                                   noise=jnp.zeros_like(x_t), batch=batch)
    return loss, new - out

  theta = jnp.float32(0.3)
  loss, delta = extra(theta)
  assert float(loss) > 0 and float(jnp.max(jnp.abs(delta))) == 0.0  # the prediction itself is untouched
  assert abs(float(jax.grad(lambda th: extra(th)[0])(theta))) > 0


@pytest.mark.parametrize('mode', ['off', 'literal', 'penalty'])
def test_each_training_mode_runs_in_the_sharded_train_step(mode):
  config = full_config(scale=2.0)
  config.pif.train_mode = mode
  mesh = Mesh(np.asarray(jax.devices()[:2]), ('data',))
  model = factory.build_model(config)
  tx = train_state.make_optimizer(config)
  state = train_state.init_state(model, tx, config, jax.random.key(0))
  state['guide'] = pose_estimator.load_guide_variables(config, '')
  repl = sharding.replicated(mesh)
  state = jax.device_put(state, repl)
  step = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, jax.tree.map(lambda _: repl, state))
  _, m = step(state, sharding.global_batch(batch_with_kpts(config), mesh), jax.random.key(1))
  assert np.isfinite(float(m['loss']))
  assert ('pif_g' in m) == (mode != 'off')


def _blur_reference(x, sigma):
  """float64 numpy: edge-replicated separable Gaussian (radius ceil(3 sigma)), normalised taps."""
  r = max(1, int(np.ceil(3 * sigma)))
  k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
  k /= k.sum()
  xp = np.pad(np.float64(x), ((0, 0), (r, r), (r, r), (0, 0)), mode='edge')
  h, w = x.shape[1:3]
  y = sum(k[i] * xp[:, i:i + h] for i in range(2 * r + 1))
  return sum(k[j] * y[:, :, j:j + w] for j in range(2 * r + 1))


def test_low_pass_matches_a_float64_gaussian_and_keeps_constants():
  x = np.random.default_rng(11).normal(size=(2, 13, 9, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(pif.low_pass(jnp.asarray(x), 1.5)), _blur_reference(x, 1.5), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(pif.low_pass(jnp.asarray(x), 0.0)), x)
  np.testing.assert_allclose(np.asarray(pif.low_pass(jnp.full((1, 7, 5, 2), 3.0), 2.0)), 3.0, rtol=1e-6)
  # it removes high frequencies: a checkerboard nearly vanishes.
  checker = np.indices((16, 16)).sum(0) % 2 * 2.0 - 1.0
  assert float(jnp.max(jnp.abs(pif.low_pass(jnp.asarray(checker)[None, :, :, None], 1.0)[:, 4:-4, 4:-4]))) < 0.02


def test_sampling_correction_low_passes_the_gradient():
  config = full_config(scale=5.0)
  heat_fn, heads = _toy_heat_fn(), pose_estimator.reference_heads(config)
  x, _ = _toy_train_inputs(b=2)
  kpts = jnp.asarray(np.random.default_rng(3).uniform(0, 12, (2, 18, 2)), jnp.float32)
  eps, sched = jnp.zeros_like(x), linear_schedule(1000)
  raw = pif.sampling_correction(config.pif, heat_fn, heads, sched, kpts, 2.0)(x, jnp.int32(300), eps, x)
  config.pif.grad_blur = 1.5 / x.shape[1]  # a fraction of the image height: 1.5 px here
  blurred = pif.sampling_correction(config.pif, heat_fn, heads, sched, kpts, 2.0)(x, jnp.int32(300), eps, x)
  assert float(jnp.max(jnp.abs(raw))) > 0
  np.testing.assert_allclose(np.asarray(blurred), _blur_reference(np.asarray(raw), 1.5), atol=1e-5)
