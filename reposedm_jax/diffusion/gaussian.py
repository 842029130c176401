"""Gaussian diffusion maths (Improved DDPM, eps-prediction, learned-range variance).

All images are channel-last (x_bhwc); `t` is a [B] int array of schedule indices into the
Schedule's tables (not the model-facing timestep, which is s.timestep_map[t]). The model
output `out` has 2C channels: eps in the first C, the variance interpolant v in [-1, 1]
in the last C.
"""

import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax.diffusion.schedule import Schedule, extract

# 8-bit data in [-1, 1]: bins are 2/255 wide, so a pixel covers +-1/255 around its value.
_HALF_BIN = 1.0 / 255.0
_EDGE = 0.999  # values beyond this are the first/last bin, integrated to -inf/+inf
_LOG_FLOOR = 1e-12


def _mean_flat(x: jnp.ndarray) -> jnp.ndarray:
  """[B, ...] -> [B] mean over every non-batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def q_sample(s: Schedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
  """Samples x_t ~ q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with the given noise."""
  return (extract(s.sqrt_alphas_cumprod, t, x0.ndim) * x0
          + extract(s.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def q_posterior(s: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray):
  """q(x_{t-1} | x_t, x0).

  Returns:
    (mean [B, H, W, C], variance [B, 1, 1, 1], log_variance_clipped [B, 1, 1, 1]).
  """
  nd = x_t.ndim
  mean = extract(s.posterior_mean_coef1, t, nd) * x0 + extract(s.posterior_mean_coef2, t, nd) * x_t
  return (mean, extract(s.posterior_variance, t, nd),
          extract(s.posterior_log_variance_clipped, t, nd))


def split_model_output(out: jnp.ndarray):
  """[..., 2C] model output -> (eps [..., C], v [..., C])."""
  return jnp.split(out, 2, axis=-1)


def learned_range_log_variance(s: Schedule, v: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """log sigma^2 = f log beta_t + (1 - f) log beta~_t (clipped), f = (v + 1) / 2.

  Interpolating in log space between the two DDPM extremes keeps the variance positive and
  in a sensible range whatever v the network emits.
  """
  frac = (v + 1.0) / 2.0
  max_log = extract(np.log(s.betas), t, v.ndim)
  min_log = extract(s.posterior_log_variance_clipped, t, v.ndim)
  return frac * max_log + (1.0 - frac) * min_log


def predict_x0_from_eps(s: Schedule, x_t: jnp.ndarray, t: jnp.ndarray,
                        eps: jnp.ndarray) -> jnp.ndarray:
  """x0 = x_t / sqrt(abar_t) - sqrt(1 / abar_t - 1) eps."""
  return (extract(s.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
          - extract(s.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)


def eps_from_x0(s: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, x0: jnp.ndarray) -> jnp.ndarray:
  """Inverse of predict_x0_from_eps: eps = (x_t / sqrt(abar_t) - x0) / sqrt(1 / abar_t - 1)."""
  return ((extract(s.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0)
          / extract(s.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))


def p_mean_variance(s: Schedule, out: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray,
                    clip_x0: bool) -> dict:
  """Model distribution p(x_{t-1} | x_t) from a [B, H, W, 2C] output.

  Args:
    s: schedule whose indices `t` refers to.
    out: [B, H, W, 2C] model output (eps, v).
    x_t: [B, H, W, C].
    t: [B] schedule indices.
    clip_x0: clamp the x0 prediction to [-1, 1] before forming the mean (DDPM sampling).

  Returns:
    dict with 'mean', 'log_variance', 'pred_x0', 'eps', each [B, H, W, C].
  """
  eps, v = split_model_output(out)
  log_variance = learned_range_log_variance(s, v, t)
  pred_x0 = predict_x0_from_eps(s, x_t, t, eps)
  if clip_x0:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean, _, _ = q_posterior(s, pred_x0, x_t, t)
  return {'mean': mean, 'log_variance': log_variance, 'pred_x0': pred_x0, 'eps': eps}


def normal_kl(mean1, logvar1, mean2, logvar2) -> jnp.ndarray:
  """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (broadcasting)."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jnp.ndarray) -> jnp.ndarray:
  """Tanh approximation of the standard normal CDF (the one ADM / Improved DDPM use)."""
  return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jnp.ndarray, means: jnp.ndarray,
                                        log_scales: jnp.ndarray) -> jnp.ndarray:
  """Elementwise log-likelihood (nats) of 8-bit data x in [-1, 1] under a binned Gaussian.

  Each value owns the bin [x - 1/255, x + 1/255]; the two edge bins extend to -inf / +inf so
  the bins' masses sum to one.

  Args:
    x: [...] data, rescaled 8-bit values in [-1, 1].
    means: Gaussian means, broadcastable to x.
    log_scales: log standard deviations, broadcastable to x.
  """
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + _HALF_BIN))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - _HALF_BIN))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, _LOG_FLOOR))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, _LOG_FLOOR))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, _LOG_FLOOR))
  return jnp.where(x < -_EDGE, log_cdf_plus,
                   jnp.where(x > _EDGE, log_one_minus_cdf_min, log_delta))


# What the network's first C channels predict: eps (PIDM / the paper); v = sqrt(abar) eps - sqrt(1 - abar) x0
# (Salimans & Ho, 2022); or 'v_aligned', v around a prior image A (B2 / RePoseDM: RPA's aligned source), i.e. the
# network's zero output means x0_hat = sqrt(abar) x_t + (1 - abar) A, the posterior mean of x0 under the prior
# x0 ~ N(A, I). Everything downstream (losses, samplers, PIF, CFG) reads eps: `eps_output` converts.
PREDICTIONS = ('eps', 'v', 'v_aligned')


def eps_output(s: Schedule, out: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray, prediction: str,
               prior=None) -> jnp.ndarray:
  """[B, H, W, 2C] network output -> the (eps, variance interpolant) output the rest of the code reads.

  For 'v': eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t, affine in v with x_t shared, so classifier-free guidance
  on the converted eps equals guidance on v. For 'v_aligned': v = out - sqrt(1 - abar_t) prior first ([B, H, W, C];
  zero for CFG's null rows, whose prior is the all-zero aligned source). `t` indexes `s` (the base schedule for
  model-facing timesteps). Why v: an eps-network's x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) amplifies its
  error by sqrt(1/abar - 1) (about 9x at t = 700).
  """
  if prediction == 'eps':
    return out
  if prediction not in PREDICTIONS:
    raise ValueError(f'prediction must be one of {PREDICTIONS}, got {prediction!r}')
  v_pred, var = split_model_output(out)
  sqrt_1m = extract(s.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
  if prediction == 'v_aligned':
    if prior is None:
      raise ValueError("prediction='v_aligned' needs the prior image (RPA's aligned source: variant b2 / full)")
    v_pred = v_pred - sqrt_1m * prior
  eps = extract(s.sqrt_alphas_cumprod, t, x_t.ndim) * v_pred + sqrt_1m * x_t
  return jnp.concatenate([eps, var], axis=-1)


def prediction_mse_weight(s: Schedule, t: jnp.ndarray, prediction: str):
  """[B] factor that turns the eps-MSE of an `eps_output` into the MSE of what the network predicts, or None.

  For 'v' / 'v_aligned': eps_hat - eps = sqrt(abar_t) (v_hat - v) at the same x_t, so
  ||v_hat - v||^2 = ||eps_hat - eps||^2 / abar_t.
  """
  if prediction == 'eps':
    return None
  return jnp.asarray(1.0 / np.asarray(s.alphas_cumprod, np.float64), jnp.float32)[t]


MSE_WEIGHTINGS = ('uniform', 'min_snr')


def min_snr_weight(s: Schedule, t: jnp.ndarray, gamma: float) -> jnp.ndarray:
  """Min-SNR-gamma weight of the eps-MSE at schedule index t [B]: min(SNR, gamma) / SNR (Hang et al., 2023).

  SNR = acp / (1 - acp). Noisy steps (SNR < gamma) keep weight 1; nearly clean ones, whose eps-MSE is
  large, easy to lower and of little use to the sample, are down-weighted."""
  acp = np.asarray(s.alphas_cumprod, np.float64)  # 1 - acp in float32 loses 4 digits near t = 0
  snr = acp / (1.0 - acp)
  return jnp.asarray(np.minimum(snr, gamma) / snr, jnp.float32)[t]


def hybrid_loss(s: Schedule, out: jnp.ndarray, x0: jnp.ndarray, x_t: jnp.ndarray,
                t: jnp.ndarray, noise: jnp.ndarray, vlb_weight: float = 1.0, mse_weight=None) -> dict:
  """Improved-DDPM hybrid loss as PIDM trains it: L_simple + vlb_weight * L_vb.

  The VLB term sees a stop-gradiented eps, so it only trains the variance head and the mean
  is driven by the MSE alone (Improved DDPM, Sec. 3.1).

  Args:
    s: schedule; `t` indexes it.
    out: [B, H, W, 2C] model output at (x_t, t).
    x0: [B, H, W, C] clean data in [-1, 1].
    x_t: [B, H, W, C] = q_sample(s, x0, t, noise).
    t: [B] int schedule indices.
    noise: [B, H, W, C] the noise used for x_t.
    vlb_weight: multiplier of the vb term (1 in PIDM).
    mse_weight: optional [B] per-example weight of the MSE in 'loss' (e.g. `min_snr_weight`); 'mse' stays
      unweighted so logs compare across weightings.

  Returns:
    dict of [B] arrays: 'mse', 'vb' (bits/dim; decoder NLL where t == 0), 'loss'.
  """
  eps, v = split_model_output(out)
  mse = _mean_flat(jnp.square(noise - eps))

  frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
  p = p_mean_variance(s, frozen, x_t, t, clip_x0=False)
  true_mean, _, true_log_var = q_posterior(s, x0, x_t, t)
  kl_b = _mean_flat(normal_kl(true_mean, true_log_var, p['mean'], p['log_variance'])) / np.log(2.0)
  nll_b = -_mean_flat(discretized_gaussian_log_likelihood(
      x0, means=p['mean'], log_scales=0.5 * p['log_variance'])) / np.log(2.0)
  # Both branches are finite everywhere, so the where's gradient stays NaN-free.
  vb = jnp.where(jnp.asarray(t) == 0, nll_b, kl_b)
  weighted = mse if mse_weight is None else mse_weight * mse
  return {'mse': mse, 'vb': vb, 'loss': weighted + vlb_weight * vb}
