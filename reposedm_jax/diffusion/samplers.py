"""DDIM and ancestral (DDPM) samplers, classifier-free guidance wrapper.

Contract: `model_fn(x_t_bhwc, t_b) -> out_bhw(2C)`, where t_b are MODEL-facing timesteps
(int32 [B], i.e. s.timestep_map[index]) and out holds (eps, v) on the last axis.

Both loops are `lax.scan`s (one compiled body whatever the number of steps) and accept an
optional `eps_correction_fn(x_t, t_index, eps, pred_x0) -> eps` applied to eps before each
update; gradient guidance plugs in there. `t_index` is the int32 scalar index into the
schedule's tables at that step, `pred_x0` the x0 implied by the uncorrected eps.
The per-step noise key is fold_in(rng, t_index), so no key is threaded through the loop.

Two more hooks serve predict's sequences and garment editing: `shared_noise=True` draws one noise image per
step (and the caller one x_T) for the whole batch, so frames of a pose sequence share their noise; and
`post_step_fn(x_prev, t_index, sqrt_abar_prev, sqrt_1m_abar_prev) -> x_prev` rewrites each step's result
(RePaint-style editing, `inpaint_post_step`), given abar of the time x_prev is at (1 after the last step).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax.diffusion.gaussian import p_mean_variance, split_model_output
from reposedm_jax.diffusion.schedule import Schedule, ddim_timesteps

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
EpsCorrectionFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
PostStepFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def step_noise(rng: jax.Array, t_index, like: jnp.ndarray, shared: bool = False) -> jnp.ndarray:
  """Standard normal noise of `like`'s shape for step `t_index`; `shared`: one draw for every batch row."""
  key = jax.random.fold_in(rng, t_index)
  if shared:
    return jnp.broadcast_to(jax.random.normal(key, (1,) + like.shape[1:], like.dtype), like.shape)
  return jax.random.normal(key, like.shape, like.dtype)


def inpaint_post_step(ref: jnp.ndarray, keep_mask: jnp.ndarray, rng: jax.Array) -> PostStepFn:
  """x_prev -> m x_prev + (1 - m) q_sample(ref, t_prev): outside the mask the reference, noised to x_prev's time.

  `keep_mask` [B, H, W, 1] is 1 where the sampler generates (the edited garment) and 0 where the reference
  stays; after the last step (abar = 1) the unmasked region is the reference exactly. The re-noising draws
  its own noise (key fold_in(rng, t_index)), independent of the sampler's.
  """
  def post(x_prev, t_index, sqrt_a_prev, sqrt_1m_a_prev):
    noise = jax.random.normal(jax.random.fold_in(rng, t_index), x_prev.shape, x_prev.dtype)
    known = sqrt_a_prev * ref + sqrt_1m_a_prev * noise
    return keep_mask * x_prev + (1.0 - keep_mask) * known
  return post


def cfg_combine(out_c: jnp.ndarray, out_u: jnp.ndarray, scale: float) -> jnp.ndarray:
  """ε_u + scale (ε_c − ε_u), written as ε_c + (scale − 1)(ε_c − ε_u) so that scale = 1 is ε_c exactly."""
  return out_c + (scale - 1.0) * (out_c - out_u)


def cfg_model_fn(apply_fn: ModelFn, scale: float, guide_variance: bool = False) -> ModelFn:
  """Wraps a 2B-batch network call into a classifier-free-guided model_fn.

  `apply_fn(x_2b, t_2b)` must treat the first half of the batch as conditional and the second
  as null (the caller arranges the conditions, e.g. encoder(src) then encoder(zeros)); one
  batched call serves both halves. eps = eps_u + scale (eps_c - eps_u), evaluated as
  eps_c + (scale - 1)(eps_c - eps_u) so that scale = 1 returns eps_c bit-exactly.

  By default the variance channels v come from the conditional half, unguided: guidance is
  an extrapolation of the score (eps), while v is an interpolation weight in [-1, 1] that
  extrapolation could push outside its range. PIDM's DDIM reads only eps, so it is
  unaffected. PIDM's public `forward_with_cond_scale` extrapolates all 2C channels, which
  changes its DDPM sampler's variance; `guide_variance=True` reproduces that.

  Args:
    apply_fn: network call on [2B, H, W, C] inputs and [2B] timesteps -> [2B, H, W, 2C].
    scale: guidance scale s (PIDM uses 2).
    guide_variance: extrapolate v as well (PIDM's exact behaviour).

  Returns:
    model_fn(x_bhwc, t_b) -> [B, H, W, 2C].
  """
  def model_fn(x_bhwc, t_b):
    out_2b = apply_fn(jnp.concatenate([x_bhwc, x_bhwc], axis=0), jnp.concatenate([t_b, t_b]))
    out_c, out_u = jnp.split(out_2b, 2, axis=0)
    if guide_variance:
      return cfg_combine(out_c, out_u, scale)
    eps_c, v_c = split_model_output(out_c)
    eps_u, _ = split_model_output(out_u)
    eps = cfg_combine(eps_c, eps_u, scale)
    return jnp.concatenate([eps, v_c], axis=-1)
  return model_fn


# ---------------------------------------------------------------------------------------- DDIM

def ddim_tables(s: Schedule, num_steps: int):
  """PIDM's DDIM step tables, ascending in time (NumPy).

  Returns:
    (t_index int64 [N], acp float64 [N], acp_prev float64 [N]); acp_prev[0] = 1 because the
    step before the first is -1 with abar(-1) = 1.
  """
  t_index = np.asarray(ddim_timesteps(s.num_timesteps, num_steps), dtype=np.int64)
  acp = s.alphas_cumprod[t_index]
  return t_index, acp, np.append(1.0, acp[:-1])


def ddim_coefficients(acp_t, acp_prev, eta, xp=np) -> dict:
  """The DDIM update's coefficients from abar at this and the previous step, in `xp`'s precision.

  ddim_sample computes them in float64 NumPy (1 - abar in float32 loses ~1e-4 relative near t = 0, where
  abar ~ 0.9999); ddim_step, called on traced values, in float32.
  """
  sigma = eta * xp.sqrt((1.0 - acp_prev) / (1.0 - acp_t)) * xp.sqrt(1.0 - acp_t / acp_prev)
  # max(., 0): at the last step 1 - a_prev - sigma^2 is 0 and rounding must not make it < 0.
  return {'sqrt_a': xp.sqrt(acp_t), 'sqrt_1m_a': xp.sqrt(1.0 - acp_t), 'sqrt_a_prev': xp.sqrt(acp_prev),
          'dir': xp.sqrt(xp.maximum(1.0 - acp_prev - sigma * sigma, 0.0)), 'sigma': sigma,
          'sqrt_1m_a_prev': xp.sqrt(1.0 - acp_prev)}


def _x0_from_eps(x_t, eps, c):
  return (x_t - c['sqrt_1m_a'] * eps) / c['sqrt_a']


def _ddim_update(x_t, eps, c, noise, clip_x0: bool, pred_x0=None):
  pred_x0 = _x0_from_eps(x_t, eps, c) if pred_x0 is None else pred_x0
  if clip_x0:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    eps = (x_t - c['sqrt_a'] * pred_x0) / c['sqrt_1m_a']
  return c['sqrt_a_prev'] * pred_x0 + c['dir'] * eps + c['sigma'] * noise, pred_x0


def ddim_step(x_t: jnp.ndarray, eps: jnp.ndarray, acp_t, acp_prev, noise: jnp.ndarray,
              eta: float = 0.0, clip_x0: bool = False):
  """One generalised DDIM update x_t -> x_prev.

  x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t);
  sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev);
  x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma noise.
  With eta = 1, sigma^2 is the DDPM posterior variance of the chain through these steps.

  Args:
    x_t: [B, H, W, C].
    eps: [B, H, W, C] noise prediction.
    acp_t, acp_prev: abar at this and the previous step; scalars or broadcastable arrays.
    noise: [B, H, W, C] standard normal (ignored when eta = 0).
    eta: DDIM stochasticity (0 = deterministic, PIDM's setting).
    clip_x0: clamp x0 to [-1, 1] and re-derive eps from it (as ADM does). PIDM: False.

  Returns:
    (x_prev, pred_x0), each [B, H, W, C].
  """
  c = ddim_coefficients(jnp.asarray(acp_t, jnp.float32), jnp.asarray(acp_prev, jnp.float32), eta, xp=jnp)
  return _ddim_update(x_t, eps, c, noise, clip_x0)


def ddim_sample(model_fn: ModelFn, s: Schedule, x_T: jnp.ndarray, num_steps: int,
                eta: float = 0.0, clip_x0: bool = False, rng: Optional[jax.Array] = None,
                eps_correction_fn: Optional[EpsCorrectionFn] = None, shared_noise: bool = False,
                post_step_fn: Optional[PostStepFn] = None, clip_output: bool = True) -> jnp.ndarray:
  """PIDM's DDIM sampler over `num_steps` steps of `ddim_timesteps`, run from the last step down.

  Only the eps half of the model output is used. The result is clamped to [-1, 1]; x0 is not
  clipped inside the loop unless clip_x0 (PIDM does not). jit-able with num_steps static. The step
  coefficients come from the float64 tables (ddim_coefficients).

  Args:
    model_fn: see module docstring; called with s.timestep_map[t_index].
    s: schedule (base or respaced); seq indexes it.
    x_T: [B, H, W, C] starting noise.
    num_steps: number of DDIM steps (Python int).
    eta: 0 for deterministic DDIM; > 0 needs `rng` (a Python number).
    clip_x0: see ddim_step.
    rng: PRNG key for eta > 0.
    eps_correction_fn: optional hook, see module docstring.
    shared_noise, post_step_fn: see module docstring.
    clip_output: clamp the result to [-1, 1] (images; latent mode's latents are not bounded).

  Returns:
    [B, H, W, C] sample (in [-1, 1] with clip_output).
  """
  stochastic = eta != 0
  if stochastic and rng is None:
    raise ValueError('ddim_sample with eta != 0 needs rng')
  t_index, acp, acp_prev = ddim_tables(s, num_steps)
  coefs = {k: jnp.asarray(v[::-1], jnp.float32) for k, v in ddim_coefficients(acp, acp_prev, float(eta)).items()}
  xs = (jnp.asarray(t_index[::-1], jnp.int32), jnp.asarray(s.timestep_map[t_index][::-1], jnp.int32), coefs)
  batch = x_T.shape[0]

  def body(x, step):
    idx, t_model, c = step
    eps, _ = split_model_output(model_fn(x, jnp.full((batch,), t_model, jnp.int32)))
    pred_x0 = _x0_from_eps(x, eps, c)
    if eps_correction_fn is not None:
      eps = eps_correction_fn(x, idx, eps, jnp.clip(pred_x0, -1.0, 1.0) if clip_x0 else pred_x0)
      pred_x0 = _x0_from_eps(x, eps, c)
    if stochastic:
      noise = step_noise(rng, idx, x, shared_noise)
    else:
      noise = jnp.zeros_like(x)
    x_prev, _ = _ddim_update(x, eps, c, noise, clip_x0, pred_x0)
    if post_step_fn is not None:
      x_prev = post_step_fn(x_prev, idx, c['sqrt_a_prev'], c['sqrt_1m_a_prev'])
    return x_prev, None

  x0, _ = jax.lax.scan(body, x_T, xs)
  return jnp.clip(x0, -1.0, 1.0) if clip_output else x0


# ---------------------------------------------------------------------------------------- DDPM

def ddpm_step(s: Schedule, x_t: jnp.ndarray, t_index, eps: jnp.ndarray, v: jnp.ndarray,
              noise: jnp.ndarray, clip_x0: bool = True):
  """One ancestral step x_t -> x_{t-1} ~ N(mu(x_t, x0_hat), exp(learned log variance)).

  Args:
    s: schedule; t_index indexes it.
    x_t: [B, H, W, C].
    t_index: int scalar (or [B]) schedule index; no noise is added where it is 0.
    eps: [B, H, W, C] noise prediction.
    v: [B, H, W, C] variance interpolant in [-1, 1].
    noise: [B, H, W, C] standard normal.
    clip_x0: clamp x0_hat to [-1, 1] before forming the mean (PIDM: True).

  Returns:
    (x_prev, pred_x0), each [B, H, W, C].
  """
  batch = x_t.shape[0]
  t_b = jnp.broadcast_to(jnp.asarray(t_index, jnp.int32), (batch,))
  p = p_mean_variance(s, jnp.concatenate([eps, v], axis=-1), x_t, t_b, clip_x0)
  nonzero = (t_b != 0).astype(x_t.dtype).reshape((batch,) + (1,) * (x_t.ndim - 1))
  x_prev = p['mean'] + nonzero * jnp.exp(0.5 * p['log_variance']) * noise
  return x_prev, p['pred_x0']


DDPM_VARIANCES = ('learned', 'small', 'large')


def ddpm_sample(model_fn: ModelFn, s: Schedule, x_T: jnp.ndarray, rng: jax.Array,
                clip_x0: bool = True,
                eps_correction_fn: Optional[EpsCorrectionFn] = None, shared_noise: bool = False,
                post_step_fn: Optional[PostStepFn] = None, clip_output: bool = True,
                variance: str = 'learned') -> jnp.ndarray:
  """Ancestral sampling with the learned (or a fixed, `variance`) variance over every index of `s`, T-1 down to 0.

  Pass a respaced schedule for fewer steps; the model sees s.timestep_map[i].

  Args:
    model_fn: see module docstring.
    s: schedule (base or respaced).
    x_T: [B, H, W, C] starting noise.
    rng: PRNG key; step i uses fold_in(rng, i).
    clip_x0: see ddpm_step.
    eps_correction_fn: optional hook, see module docstring.
    shared_noise, post_step_fn: see module docstring.
    clip_output: clamp the result to [-1, 1] (images; latent mode's latents are not bounded).
    variance: 'learned' (the network's v), or DDPM's fixed extremes in its place: 'small' = the posterior
      variance beta~_t (v = -1), 'large' = beta_t (v = +1).

  Returns:
    [B, H, W, C] sample (in [-1, 1] with clip_output).
  """
  if variance not in DDPM_VARIANCES:
    raise ValueError(f'variance must be one of {DDPM_VARIANCES}, got {variance!r}')
  num = s.num_timesteps
  # abar of the time each step's x_prev is at, from the float64 tables.
  sqrt_prev = jnp.asarray(np.sqrt(s.alphas_cumprod_prev), jnp.float32)
  sqrt_1m_prev = jnp.asarray(np.sqrt(1.0 - s.alphas_cumprod_prev), jnp.float32)
  xs = (jnp.arange(num - 1, -1, -1, dtype=jnp.int32),
        jnp.asarray(s.timestep_map[::-1], jnp.int32))
  batch = x_T.shape[0]

  def body(x, step):
    idx, t_model = step
    eps, v = split_model_output(model_fn(x, jnp.full((batch,), t_model, jnp.int32)))
    if variance != 'learned':
      v = jnp.full_like(v, -1.0 if variance == 'small' else 1.0)
    if eps_correction_fn is not None:
      t_b = jnp.full((batch,), idx, jnp.int32)
      pred_x0 = p_mean_variance(s, jnp.concatenate([eps, v], -1), x, t_b, clip_x0)['pred_x0']
      eps = eps_correction_fn(x, idx, eps, pred_x0)
    noise = step_noise(rng, idx, x, shared_noise)
    x_prev, _ = ddpm_step(s, x, idx, eps, v, noise, clip_x0=clip_x0)
    if post_step_fn is not None:
      x_prev = post_step_fn(x_prev, idx, sqrt_prev[idx], sqrt_1m_prev[idx])
    return x_prev, None

  x0, _ = jax.lax.scan(body, x_T, xs)
  return jnp.clip(x0, -1.0, 1.0) if clip_output else x0
