"""Diffusion maths and samplers against independent float64 NumPy / SciPy closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from reposedm_jax.diffusion import gaussian, samplers
from reposedm_jax.diffusion.schedule import ddim_timesteps, linear_schedule, respace

T = 1000


@pytest.fixture(scope='module')
def base():
  return linear_schedule()


def _np_tables():
  """Closed-form float64 tables written out independently of schedule.py."""
  betas = np.linspace(1e-4, 2e-2, T, dtype=np.float64)
  acp = np.cumprod(1.0 - betas)
  acp_prev = np.concatenate([[1.0], acp[:-1]])
  return betas, acp, acp_prev


def _oracle_model_fn(x0_bhwc, acp_model_np):
  """model_fn returning the true eps for a known x0 and v = -1 (log var = clipped posterior)."""
  acp = jnp.asarray(acp_model_np, jnp.float32)

  def model_fn(x_bhwc, t_b):
    a = acp[t_b][:, None, None, None]
    eps = (x_bhwc - jnp.sqrt(a) * x0_bhwc) / jnp.sqrt(1.0 - a)
    return jnp.concatenate([eps, -jnp.ones_like(eps)], axis=-1)
  return model_fn


# ------------------------------------------------------------------------------------ schedule

def test_schedule_tables_match_closed_forms(base):
  betas, acp, acp_prev = _np_tables()
  pv = betas * (1.0 - acp_prev) / (1.0 - acp)
  np.testing.assert_allclose(base.betas, betas, rtol=1e-12)
  np.testing.assert_allclose(base.alphas_cumprod, acp, rtol=1e-12)
  np.testing.assert_allclose(base.alphas_cumprod_prev, acp_prev, rtol=1e-12)
  np.testing.assert_allclose(base.sqrt_alphas_cumprod, acp ** 0.5, rtol=1e-12)
  np.testing.assert_allclose(base.sqrt_one_minus_alphas_cumprod, (1 - acp) ** 0.5, rtol=1e-12)
  np.testing.assert_allclose(base.sqrt_recip_alphas_cumprod, acp ** -0.5, rtol=1e-12)
  np.testing.assert_allclose(base.sqrt_recipm1_alphas_cumprod, (1 / acp - 1) ** 0.5, rtol=1e-10)
  np.testing.assert_allclose(base.posterior_variance, pv, rtol=1e-10)
  np.testing.assert_allclose(base.posterior_log_variance_clipped[1:], np.log(pv[1:]), rtol=1e-10)
  assert base.posterior_log_variance_clipped[0] == pytest.approx(np.log(pv[1]))
  assert base.num_timesteps == T and base.betas.dtype == np.float64
  np.testing.assert_array_equal(base.timestep_map, np.arange(T))


def test_posterior_matches_bayes_rule(base):
  """q(x_{t-1}|x_t,x0) from conditioning N(x_{t-1}; sqrt(abar') x0, 1-abar') on x_t."""
  betas, acp, acp_prev = _np_tables()
  rng = np.random.default_rng(0)
  t = np.array([1, 7, 300, 999])
  x0, x_t = rng.normal(size=(2, 4, 3, 2, 3))
  tb = lambda a: a[t][:, None, None, None]
  prec = 1.0 / (1.0 - tb(acp_prev)) + (1.0 - tb(betas)) / tb(betas)
  mean = (tb(acp_prev) ** 0.5 * x0 / (1.0 - tb(acp_prev))
          + (1.0 - tb(betas)) ** 0.5 * x_t / tb(betas)) / prec
  got_mean, got_var, got_logvar = gaussian.q_posterior(
      base, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
  np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_var, 1.0 / prec, rtol=1e-5)
  np.testing.assert_allclose(got_logvar, np.log(1.0 / prec), rtol=1e-5)


def test_respace(base):
  full = respace(base, range(T))
  np.testing.assert_allclose(full.betas, base.betas, rtol=1e-9)
  np.testing.assert_array_equal(full.timestep_map, np.arange(T))
  kept = ddim_timesteps(T, 50)
  assert kept[:3] == [0, 20, 40] and len(kept) == 50
  r = respace(base, kept)
  assert r.num_timesteps == 50
  np.testing.assert_allclose(r.alphas_cumprod, _np_tables()[1][kept], rtol=1e-10)
  np.testing.assert_array_equal(r.timestep_map, kept)


def test_q_sample_statistics(base):
  n, t = 20000, 250
  acp = _np_tables()[1][t]
  x0 = jnp.asarray(np.linspace(-1, 1, 6).reshape(1, 2, 1, 3), jnp.float32)
  noise = jax.random.normal(jax.random.key(0), (n, 2, 1, 3))
  x_t = np.asarray(gaussian.q_sample(base, jnp.broadcast_to(x0, noise.shape),
                                     jnp.full((n,), t), noise), np.float64)
  np.testing.assert_allclose(x_t.mean(0), acp ** 0.5 * np.asarray(x0[0]), atol=0.03)
  np.testing.assert_allclose(x_t.var(0), np.full((2, 1, 3), 1.0 - acp), rtol=0.05)


# ----------------------------------------------------------------------------- likelihoods

def test_normal_kl_matches_numpy():
  rng = np.random.default_rng(1)
  m1, m2 = rng.normal(size=(2, 100))
  lv1, lv2 = rng.uniform(-4, 1, size=(2, 100))
  s1, s2 = np.exp(0.5 * lv1), np.exp(0.5 * lv2)
  want = np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
  got = gaussian.normal_kl(*(jnp.asarray(a, jnp.float32) for a in (m1, lv1, m2, lv2)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_discretized_gaussian_log_likelihood_matches_scipy():
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, size=500) / 127.5 - 1.0
  x[:5], x[5:10] = -1.0, 1.0  # edge bins
  scale = rng.uniform(0.02, 0.3, size=500)
  mean = x + scale * rng.uniform(-1.5, 1.5, size=500)
  lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
  hi = np.where(x > 0.999, np.inf, x + 1 / 255)
  mass = norm.cdf((hi - mean) / scale) - norm.cdf((lo - mean) / scale)
  got = np.asarray(gaussian.discretized_gaussian_log_likelihood(
      jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32),
      jnp.asarray(np.log(scale), jnp.float32)))
  # The tanh CDF approximation is within 1.8e-4 of the exact CDF, so masses within 4e-4.
  np.testing.assert_allclose(np.exp(got), mass, atol=4e-4)
  big = mass > 0.05
  np.testing.assert_allclose(got[big], np.log(mass[big]), atol=1e-2)


# ------------------------------------------------------------------------------------- loss

def _np_model_gaussian(t, x_t, eps, v):
  """Model mean / log variance from (eps, v), float64."""
  betas, acp, acp_prev = (a[t][:, None, None, None] for a in _np_tables())
  pv_all = _np_tables()[0] * (1 - _np_tables()[2]) / (1 - _np_tables()[1])
  log_pv = np.log(np.append(pv_all[1], pv_all[1:]))[t][:, None, None, None]
  x0_hat = (x_t - (1 - acp) ** 0.5 * eps) / acp ** 0.5
  mean = (betas * acp_prev ** 0.5 * x0_hat + (1 - acp_prev) * (1 - betas) ** 0.5 * x_t) / (1 - acp)
  frac = (v + 1) / 2
  return mean, frac * np.log(betas) + (1 - frac) * log_pv, log_pv


def test_hybrid_loss_values(base):
  rng = np.random.default_rng(3)
  t = np.array([0, 1, 10, 500, 999])
  x0 = rng.integers(0, 256, size=(5, 4, 4, 3)) / 127.5 - 1.0
  noise = rng.normal(size=x0.shape)
  acp = _np_tables()[1][t][:, None, None, None]
  x_t = acp ** 0.5 * x0 + (1 - acp) ** 0.5 * noise
  eps = noise + 0.3 * rng.normal(size=x0.shape)
  v = rng.uniform(-1, 1, size=x0.shape)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  loss = jax.jit(functools.partial(gaussian.hybrid_loss, base))(
      f32(np.concatenate([eps, v], -1)), f32(x0), f32(x_t), jnp.asarray(t), f32(noise))

  mse = ((noise - eps) ** 2).mean((1, 2, 3))
  np.testing.assert_allclose(loss['mse'], mse, rtol=1e-5)
  # t > 0: KL(q posterior || p model) in bits/dim, Gaussian KL in its textbook form.
  betas, acp_t, acp_prev = (a[t][:, None, None, None] for a in _np_tables())
  x0_true = (x_t - (1 - acp_t) ** 0.5 * noise) / acp_t ** 0.5
  q_mean = (betas * acp_prev ** 0.5 * x0_true
            + (1 - acp_prev) * (1 - betas) ** 0.5 * x_t) / (1 - acp_t)
  p_mean, p_logvar, q_logvar = _np_model_gaussian(t, x_t, eps, v)
  s_q, s_p = np.exp(0.5 * q_logvar), np.exp(0.5 * p_logvar)
  kl = np.log(s_p / s_q) + (s_q ** 2 + (q_mean - p_mean) ** 2) / (2 * s_p ** 2) - 0.5
  want_vb = kl.mean((1, 2, 3)) / np.log(2)
  np.testing.assert_allclose(loss['vb'][1:], want_vb[1:], rtol=2e-3)
  # t == 0: decoder NLL of x0 under the binned model Gaussian (exact CDF; see tolerance above).
  sd = np.broadcast_to(s_p[0], x0[0].shape)
  lo = np.where(x0[0] < -0.999, -np.inf, x0[0] - 1 / 255)
  hi = np.where(x0[0] > 0.999, np.inf, x0[0] + 1 / 255)
  mass = norm.cdf((hi - p_mean[0]) / sd) - norm.cdf((lo - p_mean[0]) / sd)
  want_nll0 = -np.log(np.maximum(mass, 1e-12)).mean() / np.log(2)
  np.testing.assert_allclose(loss['vb'][0], want_nll0, rtol=2e-2)
  np.testing.assert_allclose(loss['loss'], loss['mse'] + loss['vb'], rtol=1e-6)


def test_hybrid_loss_vb_gradient_only_reaches_variance_head(base):
  rng = np.random.default_rng(4)
  x0 = jnp.asarray(rng.uniform(-1, 1, size=(4, 4, 4, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  t = jnp.array([0, 3, 400, 999])
  x_t = gaussian.q_sample(base, x0, t, noise)
  out = jnp.asarray(rng.normal(size=(4, 4, 4, 6)) * 0.5, jnp.float32)
  vb_sum = lambda o: gaussian.hybrid_loss(base, o, x0, x_t, t, noise)['vb'].sum()
  grad_fn = jax.jit(jax.grad(vb_sum))
  g_eps, g_v = np.split(np.asarray(grad_fn(out)), 2, axis=-1)
  assert np.all(g_eps == 0)
  assert np.all(np.isfinite(g_v)) and np.all(np.abs(g_v).sum((1, 2, 3)) > 0)



def test_min_snr_weight_matches_closed_form_and_weights_only_the_mse(base):
  t = np.array([0, 5, 50, 200, 500, 999])
  acp = _np_tables()[1][t]
  snr = acp / (1 - acp)
  want = np.minimum(snr, 5.0) / snr
  got = np.asarray(gaussian.min_snr_weight(base, jnp.asarray(t), 5.0))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[0] < 1e-3 and got[-1] == 1.0  # nearly clean steps down-weighted, noisy ones untouched
  rng = np.random.default_rng(5)
  x0 = jnp.asarray(rng.uniform(-1, 1, (6, 4, 4, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  out = jnp.asarray(rng.normal(size=(6, 4, 4, 6)), jnp.float32)
  x_t = gaussian.q_sample(base, x0, jnp.asarray(t), noise)
  plain = gaussian.hybrid_loss(base, out, x0, x_t, jnp.asarray(t), noise)
  weighted = gaussian.hybrid_loss(base, out, x0, x_t, jnp.asarray(t), noise, mse_weight=jnp.asarray(got))
  np.testing.assert_array_equal(weighted['mse'], plain['mse'])
  np.testing.assert_array_equal(weighted['vb'], plain['vb'])
  np.testing.assert_allclose(weighted['loss'], got * plain['mse'] + plain['vb'], rtol=1e-6)


@pytest.mark.parametrize('n', [1, 7, 10, 30, 50, 100, 250, 333, 999, 1000])
def test_ddim_timesteps_gives_n_steps_and_pidms_sequence_when_n_divides_t(n):
  seq = ddim_timesteps(T, n)
  assert len(seq) == len(set(seq)) == n and seq == sorted(seq) and seq[0] == 0 and seq[-1] < T
  if T % n == 0:
    assert seq == list(range(0, T, T // n))

# ---------------------------------------------------------------------------------- samplers

def test_ddim_eta1_variance_is_respaced_posterior_variance(base):
  n_steps = 50
  t_index, acp, acp_prev = samplers.ddim_tables(base, n_steps)
  r = respace(base, t_index)
  rng = np.random.default_rng(5)
  x_t = jnp.asarray(rng.normal(size=(n_steps, 2, 2, 3)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=x_t.shape), jnp.float32)
  z = jnp.asarray(rng.normal(size=x_t.shape), jnp.float32)
  col = lambda a: jnp.asarray(a, jnp.float32)[:, None, None, None]
  step = functools.partial(samplers.ddim_step, x_t, eps, col(acp), col(acp_prev), eta=1.0)
  sigma_z = np.asarray(step(z)[0] - step(jnp.zeros_like(z))[0], np.float64)
  sigma2 = (sigma_z / np.asarray(z)).mean((1, 2, 3)) ** 2
  np.testing.assert_allclose(sigma2[1:], r.posterior_variance[1:], rtol=1e-3)
  assert sigma2[0] == 0.0 and r.posterior_variance[0] == 0.0


@pytest.mark.parametrize('x_scale', [1.0, 3.0])
def test_ddim_oracle_recovers_x0(base, x_scale):
  rng = np.random.default_rng(6)
  x0 = jnp.asarray(rng.uniform(-0.95, 0.95, size=(2, 8, 8, 3)), jnp.float32)
  x_T = jnp.asarray(x_scale * rng.normal(size=x0.shape), jnp.float32)
  model_fn = _oracle_model_fn(x0, base.alphas_cumprod)
  sample = jax.jit(functools.partial(samplers.ddim_sample, model_fn, base, num_steps=25))
  np.testing.assert_allclose(sample(x_T), x0, atol=1e-4)


def _recording(model_fn, x0, log):
  """Wraps model_fn to log the model timesteps; returns it and a hook logging max|x0_hat - x0|."""
  def recorded_model_fn(x, t_b):
    jax.debug.callback(lambda t: log['t'].append(np.asarray(t)), t_b, ordered=True)
    return model_fn(x, t_b)

  def hook(x, t_index, eps, pred_x0):
    err = jnp.max(jnp.abs(pred_x0 - x0))
    jax.debug.callback(lambda i, e: log['x0_err'].append((int(i), float(e))), t_index, err,
                       ordered=True)
    return eps
  return recorded_model_fn, hook


def test_ddim_hook_and_trajectory(base):
  """Model sees seq reversed; with an oracle every step's x0_hat is x0, not just the last's."""
  x0 = jnp.full((2, 4, 4, 3), 0.25)
  x_T = jax.random.normal(jax.random.key(1), x0.shape)
  log = {'t': [], 'x0_err': []}
  model_fn, hook = _recording(_oracle_model_fn(x0, base.alphas_cumprod), x0, log)
  out = jax.jit(functools.partial(samplers.ddim_sample, model_fn, base, num_steps=10,
                                  eps_correction_fn=hook))(x_T)
  np.testing.assert_allclose(out, x0, atol=1e-4)
  seq = ddim_timesteps(T, 10)[::-1]
  assert [int(t[0]) for t in log['t']] == seq and all(len(set(t)) == 1 for t in log['t'])
  assert [i for i, _ in log['x0_err']] == seq and max(e for _, e in log['x0_err']) < 1e-3
  zero = lambda x, i, eps, pred_x0: jnp.zeros_like(eps)
  assert not np.allclose(samplers.ddim_sample(model_fn, base, x_T, 10, eps_correction_fn=zero), x0,
                         atol=1e-2)


def test_cfg_model_fn():
  rng = np.random.default_rng(7)
  b = 3
  out_c, out_u = (jnp.asarray(rng.normal(size=(b, 4, 4, 6)), jnp.float32) for _ in range(2))
  x = jnp.asarray(rng.normal(size=(b, 4, 4, 3)), jnp.float32)
  t = jnp.array([5, 6, 7], jnp.int32)
  calls = []

  def apply_fn(x_2b, t_2b):
    calls.append(x_2b.shape[0])
    np.testing.assert_array_equal(x_2b[:b], x_2b[b:])
    np.testing.assert_array_equal(t_2b, jnp.concatenate([t, t]))
    return jnp.concatenate([out_c, out_u]) + 0.0 * x_2b.sum()

  np.testing.assert_array_equal(samplers.cfg_model_fn(apply_fn, 1.0)(x, t), out_c)
  got = samplers.cfg_model_fn(apply_fn, 2.0)(x, t)
  (ec, vc), (eu, _) = np.split(np.asarray(out_c), 2, -1), np.split(np.asarray(out_u), 2, -1)
  np.testing.assert_allclose(got[..., :3], eu + 2.0 * (ec - eu), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got[..., 3:], vc)
  pidm = samplers.cfg_model_fn(apply_fn, 2.0, guide_variance=True)(x, t)
  np.testing.assert_allclose(pidm, out_u + 2.0 * (out_c - out_u), rtol=1e-6, atol=1e-6)
  assert calls == [2 * b] * 3


def test_ddpm_oracle_respaced_recovers_x0(base):
  kept = ddim_timesteps(T, 50)
  r = respace(base, kept)
  rng = np.random.default_rng(8)
  x0 = jnp.asarray(rng.uniform(-0.95, 0.95, size=(2, 8, 8, 3)), jnp.float32)
  x_T = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  # The oracle reads abar at the MODEL timestep: x0_hat == x0 at every step only if the
  # sampler passes s.timestep_map[i] and uses the respaced tables at index i.
  log = {'t': [], 'x0_err': []}
  model_fn, hook = _recording(_oracle_model_fn(x0, base.alphas_cumprod), x0, log)
  sample = jax.jit(functools.partial(samplers.ddpm_sample, model_fn, r, eps_correction_fn=hook))
  got = sample(x_T, jax.random.key(2))
  np.testing.assert_allclose(got, x0, atol=1e-4)
  assert [int(t[0]) for t in log['t']] == kept[::-1]
  assert [i for i, _ in log['x0_err']] == list(range(49, -1, -1))
  assert max(e for _, e in log['x0_err']) < 1e-3
  plain = samplers.ddpm_sample(_oracle_model_fn(x0, base.alphas_cumprod), r, x_T,
                               jax.random.key(2))
  np.testing.assert_allclose(plain, got, atol=1e-6)



def test_ddim_coefficients_come_from_float64_tables(base):
  t_index, acp, acp_prev = samplers.ddim_tables(base, 50)
  exact = np.sqrt(1.0 - _np_tables()[1][t_index])
  f64 = np.asarray(samplers.ddim_coefficients(acp, acp_prev, 0.0)['sqrt_1m_a'], np.float32)
  f32 = np.asarray(samplers.ddim_coefficients(jnp.asarray(acp, jnp.float32), jnp.asarray(acp_prev, jnp.float32),
                                              0.0, xp=jnp)['sqrt_1m_a'])
  rel = lambda a: np.abs(a / exact - 1.0)
  assert rel(f64).max() < 1e-6  # what ddim_sample uses
  assert rel(f32)[0] > 1e-5  # 1 - abar in float32 at t = 0 (abar = 0.9999): why it does not


def test_ddpm_fixed_variances_replace_the_networks_v(base):
  """'small' / 'large' sample exactly as a network emitting v = -1 / +1 would, whatever v it emits."""
  r = respace(base, ddim_timesteps(T, 10))
  rng = np.random.default_rng(9)
  x0 = jnp.asarray(rng.uniform(-0.9, 0.9, size=(2, 4, 4, 3)), jnp.float32)
  x_T = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  oracle = _oracle_model_fn(x0, base.alphas_cumprod)

  def with_v(value):
    def fn(x, t):
      eps = 0.5 * oracle(x, t)[..., :3]  # a wrong network: the added noise stays in the sample
      return jnp.concatenate([eps, jnp.full_like(eps, value)], -1)
    return fn

  key = jax.random.key(3)
  for variance, v in (('small', -1.0), ('large', 1.0)):
    want = samplers.ddpm_sample(with_v(v), r, x_T, key, clip_output=False)
    got = samplers.ddpm_sample(with_v(0.3), r, x_T, key, clip_output=False, variance=variance)
    np.testing.assert_array_equal(got, want)
  learned = samplers.ddpm_sample(with_v(0.3), r, x_T, key, clip_output=False)
  assert float(jnp.abs(learned - want).max()) > 1e-3  # the switch changes the sample
  with pytest.raises(ValueError, match='variance must be one of'):
    samplers.ddpm_sample(with_v(0.3), r, x_T, key, variance='fixed')


def test_v_prediction_converts_to_the_true_eps_and_its_loss_is_the_v_mse(base):
  """eps_output maps the true v = sqrt(abar) eps - sqrt(1 - abar) x0 to the true eps (float64 closed form), the
  variance channels pass through, and the weighted eps-MSE equals the MSE of v (Salimans & Ho's loss)."""
  t = np.array([0, 7, 120, 500, 850, 999])
  acp = _np_tables()[1][t][:, None, None, None]
  rng = np.random.default_rng(11)
  x0 = rng.uniform(-1, 1, (6, 4, 4, 3))
  noise = rng.normal(size=x0.shape)
  x_t = np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise
  v_true = np.sqrt(acp) * noise - np.sqrt(1 - acp) * x0
  var = rng.uniform(-1, 1, x0.shape)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  out = gaussian.eps_output(base, f32(np.concatenate([v_true, var], -1)), f32(x_t), jnp.asarray(t), 'v')
  np.testing.assert_allclose(out[..., :3], noise, atol=2e-5)
  np.testing.assert_array_equal(out[..., 3:], f32(var))
  raw = f32(np.concatenate([noise, var], -1))
  assert gaussian.eps_output(base, raw, f32(x_t), jnp.asarray(t), 'eps') is raw
  assert gaussian.prediction_mse_weight(base, jnp.asarray(t), 'eps') is None
  # A wrong v: the weighted eps error is the v error, at every noise level including abar ~ 4e-5 (t = 999).
  v_hat = v_true + 0.1 * rng.normal(size=x0.shape)
  eps_hat = gaussian.eps_output(base, f32(np.concatenate([v_hat, var], -1)), f32(x_t), jnp.asarray(t), 'v')[..., :3]
  w = np.asarray(gaussian.prediction_mse_weight(base, jnp.asarray(t), 'v'))
  np.testing.assert_allclose(w, 1 / acp.ravel(), rtol=1e-6)
  got = w * np.mean((np.asarray(eps_hat, np.float64) - noise) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(got, np.mean((v_hat - v_true) ** 2, axis=(1, 2, 3)), rtol=2e-3)
  with pytest.raises(ValueError, match='prediction'):
    gaussian.eps_output(base, raw, f32(x_t), jnp.asarray(t), 'x0')


def test_v_aligned_zero_output_is_the_posterior_mean_under_the_prior_image(base):
  """'v_aligned': a network that outputs zero predicts x0 = sqrt(abar) x_t + (1 - abar) A, the posterior mean of x0
  under x0 ~ N(A, I) (float64 closed form); a zero prior is plain v; and the true v + sqrt(1 - abar) A gives the
  true eps, so the v-MSE loss is unchanged by the prior."""
  t = np.array([0, 30, 400, 999])
  acp = _np_tables()[1][t][:, None, None, None]
  rng = np.random.default_rng(13)
  x0 = rng.uniform(-1, 1, (4, 3, 5, 3))
  prior = rng.uniform(-1, 1, x0.shape)
  noise = rng.normal(size=x0.shape)
  x_t = np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  tt = jnp.asarray(t)
  zero = f32(np.zeros(x0.shape[:3] + (6,)))
  eps = np.asarray(gaussian.eps_output(base, zero, f32(x_t), tt, 'v_aligned', prior=f32(prior))[..., :3], np.float64)
  x0_hat = (x_t - np.sqrt(1 - acp) * eps) / np.sqrt(acp)
  want = np.sqrt(acp) * x_t + (1 - acp) * prior
  np.testing.assert_allclose(x0_hat, want, atol=1e-3 / np.sqrt(acp.min()))
  np.testing.assert_allclose(x0_hat[1:], want[1:], atol=2e-4)  # where abar is not ~4e-5
  out = f32(rng.normal(size=x0.shape[:3] + (6,)))
  np.testing.assert_array_equal(gaussian.eps_output(base, out, f32(x_t), tt, 'v_aligned', prior=f32(0 * prior)),
                                gaussian.eps_output(base, out, f32(x_t), tt, 'v'))
  v_true = np.sqrt(acp) * noise - np.sqrt(1 - acp) * x0
  net = np.concatenate([v_true + np.sqrt(1 - acp) * prior, np.zeros_like(x0)], -1)
  got = gaussian.eps_output(base, f32(net), f32(x_t), tt, 'v_aligned', prior=f32(prior))[..., :3]
  np.testing.assert_allclose(got, noise, atol=5e-5)
  with pytest.raises(ValueError, match='prior'):
    gaussian.eps_output(base, out, f32(x_t), tt, 'v_aligned')


def test_v_oracle_through_eps_output_recovers_x0_with_respaced_ddpm(base):
  """A v-predicting oracle, converted at model-facing timesteps on the base schedule (as sample.generate does),
  drives the respaced DDPM sampler to x0: the conversion must read abar at the model timestep, not the index."""
  r = respace(base, ddim_timesteps(T, 25))
  rng = np.random.default_rng(12)
  x0 = jnp.asarray(rng.uniform(-0.95, 0.95, size=(2, 8, 8, 3)), jnp.float32)
  acp = jnp.asarray(base.alphas_cumprod, jnp.float32)

  def v_model_fn(x, t_b):
    a = acp[t_b][:, None, None, None]
    eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    v = jnp.sqrt(a) * eps - jnp.sqrt(1.0 - a) * x0
    return gaussian.eps_output(base, jnp.concatenate([v, -jnp.ones_like(v)], -1), x, t_b, 'v')
  got = samplers.ddpm_sample(v_model_fn, r, jnp.asarray(rng.normal(size=x0.shape), jnp.float32),
                             jax.random.key(3))
  np.testing.assert_allclose(got, x0, atol=1e-4)
