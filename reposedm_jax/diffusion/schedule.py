"""Noise schedules for Gaussian diffusion: float64 tables, Improved-DDPM respacing, DDIM steps.

Tables are float64 NumPy arrays (as in PIDM / Improved DDPM) so that products like
1 - alphas_cumprod near t = 0 keep their precision; they are cast to float32 only when
gathered by `extract`, inside the traced computation.
"""

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np


# eq=False: NumPy fields make the generated __eq__/__hash__ unusable; identity hashing
# lets a Schedule be closed over or passed as a static jit argument.
@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """Precomputed diffusion tables, each a float64 array of length T (index = schedule step).

  Attributes:
    betas: beta_t.
    alphas_cumprod: abar_t = prod_{s<=t} (1 - beta_s).
    alphas_cumprod_prev: abar_{t-1}, with abar_{-1} = 1.
    sqrt_alphas_cumprod: sqrt(abar_t).
    sqrt_one_minus_alphas_cumprod: sqrt(1 - abar_t).
    sqrt_recip_alphas_cumprod: 1 / sqrt(abar_t).
    sqrt_recipm1_alphas_cumprod: sqrt(1 / abar_t - 1).
    posterior_variance: beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).
    posterior_log_variance_clipped: log beta~_t with element 0 replaced by element 1
      (beta~_0 = 0, whose log is -inf).
    posterior_mean_coef1: coefficient of x0 in the posterior mean of q(x_{t-1} | x_t, x0).
    posterior_mean_coef2: coefficient of x_t in that mean.
    timestep_map: int64 [T], the model-facing timestep for each schedule index (identity for a
      base schedule, the kept original timesteps for a respaced one).
  """
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray
  timestep_map: np.ndarray

  @property
  def num_timesteps(self) -> int:
    """Number of steps T of this schedule."""
    return int(self.betas.shape[0])


def from_betas(betas: Sequence[float], timestep_map: Sequence[int] | None = None) -> Schedule:
  """Builds every table of a Schedule from its betas.

  Args:
    betas: [T] values in (0, 1].
    timestep_map: [T] model-facing timesteps; identity when None.

  Returns:
    The Schedule, all tables float64.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
    raise ValueError(f'betas must be 1-D in (0, 1], got shape {betas.shape}')
  num_timesteps = betas.shape[0]
  if timestep_map is None:
    timestep_map = np.arange(num_timesteps)
  timestep_map = np.asarray(timestep_map, dtype=np.int64)
  if timestep_map.shape != betas.shape:
    raise ValueError(f'timestep_map shape {timestep_map.shape} != betas shape {betas.shape}')

  alphas = 1.0 - betas
  acp = np.cumprod(alphas)
  acp_prev = np.append(1.0, acp[:-1])
  posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
  # beta~_0 is exactly 0; Improved DDPM substitutes beta~_1 so the log stays finite.
  posterior_log_variance_clipped = np.log(
      np.append(posterior_variance[1], posterior_variance[1:]) if num_timesteps > 1
      else posterior_variance)
  return Schedule(
      betas=betas,
      alphas_cumprod=acp,
      alphas_cumprod_prev=acp_prev,
      sqrt_alphas_cumprod=np.sqrt(acp),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1.0),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=posterior_log_variance_clipped,
      posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
      posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
      timestep_map=timestep_map,
  )


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 2e-2) -> Schedule:
  """PIDM's schedule: betas linear in float64 from beta_start to beta_end (inclusive)."""
  return from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


def respace(schedule: Schedule, use_timesteps: Sequence[int]) -> Schedule:
  """Improved-DDPM respacing: a shorter chain visiting only `use_timesteps`.

  The kept steps' abar are preserved exactly: beta_i = 1 - abar[t_i] / abar[t_{i-1}] with
  abar[t_{-1}] = 1, so q(x_{t_i} | x0) is unchanged and the model sees the original t_i.

  Args:
    schedule: the base schedule.
    use_timesteps: indices of `schedule` to keep (any order; duplicates ignored).

  Returns:
    A Schedule of length len(set(use_timesteps)) whose timestep_map holds the kept
    model-facing timesteps of `schedule`.
  """
  kept = np.unique(np.asarray(use_timesteps, dtype=np.int64))  # sorted ascending
  if kept.size == 0 or kept[0] < 0 or kept[-1] >= schedule.num_timesteps:
    raise ValueError(f'use_timesteps must be non-empty in [0, {schedule.num_timesteps})')
  acp = schedule.alphas_cumprod[kept]
  betas = 1.0 - acp / np.append(1.0, acp[:-1])
  return from_betas(betas, timestep_map=schedule.timestep_map[kept])


def ddim_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
  """`num_steps` timesteps floor(i T / n), i < n: PIDM's list(range(0, T, T // n)) whenever n divides T.

  PIDM's own form gives more than n steps otherwise (n = 30: T // n = 33, 31 steps); this one gives n.
  """
  if not 0 < num_steps <= num_timesteps:
    raise ValueError(f'num_steps must be in [1, {num_timesteps}], got {num_steps}')
  return [i * num_timesteps // num_steps for i in range(num_steps)]


def extract(table_np: np.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """Gathers table[t] as float32, shaped [B, 1, ..., 1] to broadcast against an ndim array.

  Args:
    table_np: [T] float64 table.
    t: [B] int schedule indices (a scalar is treated as [1]).
    ndim: rank of the array the result multiplies (e.g. 4 for x_bhwc).

  Returns:
    [B] + [1] * (ndim - 1) float32.
  """
  table = jnp.asarray(np.asarray(table_np, dtype=np.float32))
  vals_b = table[jnp.atleast_1d(jnp.asarray(t, dtype=jnp.int32))]
  return vals_b.reshape(vals_b.shape + (1,) * (ndim - 1))
