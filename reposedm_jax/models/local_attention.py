"""Local-window (neighbourhood) multi-head attention on 2D feature maps.

MapFormer (paper §3.2, eq. 5) attends from each position x to the keys in a
region N(x) around it. `local_window_attention` computes that without ever
forming the (HW x HW) logit matrix: the k*k neighbour keys/values of every
position are gathered by zero padding + static shifted slices (rows, then
columns), so memory grows with HW * k^2 * d (gathered keys/values
[B, H, W, k^2, n, d], logits [B, H, W, k^2, n]) instead of (HW)^2.

`dense_masked_attention` is the O((HW)^2) reference with an explicit window
mask. Both are exact, and for small maps or large windows the dense form is the
cheaper one (k^2 * (2d + 1) >= HW), so models call `window_attention`, which
picks by static shapes (`prefers_local`).

Conventions:
  * Layout is channels-last with heads split out: q/k/v are [B, H, W, n, d]
    (n heads of width d); the output has q's shape.
  * Window of size w around query (i, j): key rows i + dy and columns j + dx for
    dy, dx in -(w // 2) .. w - 1 - w // 2. For odd w that is the centred
    -(w//2) .. w//2; for even w it is -(w//2) .. w//2 - 1 (one more offset
    up/left than down/right), so w = 1 is "attend to yourself only".
  * Keys outside the map are masked out of the softmax (they get exactly zero
    weight); they are not treated as zero-valued keys. Offset (0, 0) is always in
    the window, so no query ever has an empty window.
  * `window=None` is global (dense) attention over all key positions.
  * Logits are scaled by 1/sqrt(d); the softmax runs in float32 whatever the
    input dtype, and its weights are cast back to v's dtype for the weighted sum.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# Finite stand-in for -inf: a masked logit minus the row max is hugely negative
# (or overflows to -inf) and exp() of it is 0, while a row whose every logit were
# masked would give a uniform softmax instead of NaN (the window convention rules
# such rows out anyway).
_MASKED_LOGIT = float(np.finfo(np.float32).min)


def window_offsets(window: int) -> tuple[int, int]:
  """Inclusive offset range (lo, hi) of a window, the same on both axes.

  Args:
    window: Window size w >= 1.

  Returns:
    (-(w // 2), w - 1 - w // 2): e.g. 3 -> (-1, 1), 4 -> (-2, 1), 1 -> (0, 0).
  """
  if window < 1:
    raise ValueError(f'window must be >= 1 or None, got {window}.')
  return -(window // 2), window - 1 - window // 2


def window_covers_map(window: Optional[int], height: int, width: int) -> bool:
  """True if every query's window contains every position of a height x width map.

  Then local attention equals global attention exactly, and the dense form is
  cheaper (HW keys per query instead of w*w).
  """
  if window is None:
    return True
  lo, hi = window_offsets(window)
  # Key-minus-query offsets on a map of size s span -(s-1) .. s-1.
  extent = max(height, width) - 1
  return -lo >= extent and hi >= extent


def effective_window(window: Optional[int], height: int, width: int) -> Optional[int]:
  """`window`, or None (global) when it covers the whole map (same result, cheaper)."""
  return None if window_covers_map(window, height, width) else window


def local_window_mask(height: int, width: int, window: int) -> np.ndarray:
  """Which gathered neighbours of each position lie inside the map.

  Returns:
    valid_hwk: bool [H, W, w*w]; neighbour index k = a * w + b stands for the
      offset (dy, dx) = (lo + a, lo + b) with lo = -(w // 2).
  """
  lo, hi = window_offsets(window)
  offs = np.arange(lo, hi + 1)
  rows = np.arange(height)[:, None] + offs[None, :]
  cols = np.arange(width)[:, None] + offs[None, :]
  row_ok = (rows >= 0) & (rows < height)  # [H, w]
  col_ok = (cols >= 0) & (cols < width)  # [W, w]
  valid = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # [H, W, w, w]
  return valid.reshape(height, width, window * window)


def gather_windows(x_bhwnd: jax.Array, window: int) -> jax.Array:
  """Neighbourhood of every position: [B, H, W, n, d] -> [B, H, W, w*w, n, d].

  Out-of-map neighbours are zeros from the padding; callers mask them (see
  `local_window_mask`, same neighbour order).
  """
  lo, hi = window_offsets(window)
  b, h, w, n, d = x_bhwnd.shape
  padded = jnp.pad(x_bhwnd, ((0, 0), (-lo, hi), (-lo, hi), (0, 0), (0, 0)))
  # Separable gather, rows then columns: 2w slices instead of w*w keeps the
  # traced program (and compile time) linear in w; w = 15 compiled ~4x faster.
  # Padded row i + a holds map row i + lo + a, i.e. offset dy = lo + a.
  rows_bhawnd = jnp.stack(
      [jax.lax.slice_in_dim(padded, a, a + h, axis=1) for a in range(window)], axis=3)
  rows_cols_bhawcnd = jnp.stack(
      [jax.lax.slice_in_dim(rows_bhawnd, c, c + w, axis=2) for c in range(window)], axis=4)
  return rows_cols_bhawcnd.reshape(b, h, w, window * window, n, d)


def _check_shapes(q_bhwnd: jax.Array, k_bhwnd: jax.Array, v_bhwnd: jax.Array, local: bool):
  if q_bhwnd.ndim != 5 or k_bhwnd.ndim != 5 or k_bhwnd.shape != v_bhwnd.shape:
    raise ValueError(
        'Expected q, k, v of shape [B, H, W, n, d] with k.shape == v.shape, got '
        f'{q_bhwnd.shape}, {k_bhwnd.shape}, {v_bhwnd.shape}.')
  if local and q_bhwnd.shape[:4] != k_bhwnd.shape[:4]:
    raise ValueError(
        'Local attention needs queries and keys on the same map (same B, H, W, n), got '
        f'{q_bhwnd.shape} and {k_bhwnd.shape}.')
  if q_bhwnd.shape[0] != k_bhwnd.shape[0] or q_bhwnd.shape[3:] != k_bhwnd.shape[3:]:
    raise ValueError(f'q {q_bhwnd.shape} and k {k_bhwnd.shape} disagree on B, n or d.')


def _dense_attention(
    q_bhwnd: jax.Array, k_bhwnd: jax.Array, v_bhwnd: jax.Array,
    mask_qk: Optional[np.ndarray]) -> jax.Array:
  """Attention over flattened maps with an optional [HqWq, HkWk] bool mask."""
  b, h, w, n, d = q_bhwnd.shape
  q_bqnd = q_bhwnd.reshape(b, h * w, n, d) * jnp.asarray(d**-0.5, q_bhwnd.dtype)
  k_bknd = k_bhwnd.reshape(b, -1, n, d)
  v_bknd = v_bhwnd.reshape(b, -1, n, d)
  logits_bnqk = jnp.einsum('bqnd,bknd->bnqk', q_bqnd, k_bknd).astype(jnp.float32)
  if mask_qk is not None:
    logits_bnqk = jnp.where(mask_qk[None, None], logits_bnqk, _MASKED_LOGIT)
  weights_bnqk = jax.nn.softmax(logits_bnqk, axis=-1).astype(v_bhwnd.dtype)
  out_bqnd = jnp.einsum('bnqk,bknd->bqnd', weights_bnqk, v_bknd)
  return out_bqnd.reshape(b, h, w, n, d)


def local_window_attention(
    q_bhwnd: jax.Array, k_bhwnd: jax.Array, v_bhwnd: jax.Array,
    window: Optional[int]) -> jax.Array:
  """Multi-head attention of each position to its w x w neighbourhood.

  Args:
    q_bhwnd: [B, H, W, n, d] queries.
    k_bhwnd: [B, H, W, n, d] keys (for `window=None`: [B, H', W', n, d]).
    v_bhwnd: values, shaped like k_bhwnd.
    window: Window size w >= 1 (see the module docstring for even w), or None
      for global attention over all key positions.

  Returns:
    [B, H, W, n, d] attention output, in v's dtype.
  """
  _check_shapes(q_bhwnd, k_bhwnd, v_bhwnd, local=window is not None)
  if window is None:
    return _dense_attention(q_bhwnd, k_bhwnd, v_bhwnd, None)
  _, h, w, _, d = q_bhwnd.shape
  valid_hwk = local_window_mask(h, w, window)
  k_bhwknd = gather_windows(k_bhwnd, window)
  v_bhwknd = gather_windows(v_bhwnd, window)
  q_bhwnd = q_bhwnd * jnp.asarray(d**-0.5, q_bhwnd.dtype)
  # Broadcast-multiply + reduce rather than einsum: a dot_general batched over
  # (B, H, W, n) with tiny (d x k^2) matrices ran 1.5-1.7x slower on CPU (fwd+bwd),
  # and the elementwise form fuses without a transpose of the gathered keys.
  logits_bhwkn = jnp.sum(q_bhwnd[:, :, :, None] * k_bhwknd, axis=-1).astype(jnp.float32)
  logits_bhwkn = jnp.where(valid_hwk[None, :, :, :, None], logits_bhwkn, _MASKED_LOGIT)
  weights_bhwkn = jax.nn.softmax(logits_bhwkn, axis=3).astype(v_bhwnd.dtype)
  return jnp.sum(weights_bhwkn[..., None] * v_bhwknd, axis=3)


def prefers_local(height: int, width: int, window: Optional[int], head_dim: int) -> bool:
  """Whether the gathered form needs less memory than dense masked attention.

  Per batch-head, the gathered form holds ~HW * w^2 * (2d + 1) elements (keys,
  values, logits) and the dense form ~(HW)^2 logits. With d = 16, window 7 only
  pays off above ~1600 positions (64x44 yes, 32x22 no), and window 15 above ~7400;
  measured fwd+bwd on CPU the time follows the same crossover.
  """
  if window_covers_map(window, height, width):
    return False
  return window * window * (2 * head_dim + 1) < height * width


def window_attention(
    q_bhwnd: jax.Array, k_bhwnd: jax.Array, v_bhwnd: jax.Array,
    window: Optional[int]) -> jax.Array:
  """Windowed attention by the cheaper of the two exact forms (see `prefers_local`).

  Same arguments and result as `local_window_attention`; the choice depends
  only on static shapes, so it is made once at trace time.
  """
  _, h, w, _, d = q_bhwnd.shape
  if window is None:
    return local_window_attention(q_bhwnd, k_bhwnd, v_bhwnd, None)
  if prefers_local(h, w, window, d):
    return local_window_attention(q_bhwnd, k_bhwnd, v_bhwnd, window)
  return dense_masked_attention(q_bhwnd, k_bhwnd, v_bhwnd, effective_window(window, h, w))


def dense_window_mask(height: int, width: int, window: int) -> np.ndarray:
  """bool [HW, HW]: key position inside the query's window (row-major positions)."""
  lo, hi = window_offsets(window)
  rows, cols = np.divmod(np.arange(height * width), width)
  dy = rows[None, :] - rows[:, None]
  dx = cols[None, :] - cols[:, None]
  return (dy >= lo) & (dy <= hi) & (dx >= lo) & (dx <= hi)


def dense_masked_attention(
    q_bhwnd: jax.Array, k_bhwnd: jax.Array, v_bhwnd: jax.Array,
    window: Optional[int]) -> jax.Array:
  """Reference for `local_window_attention`: full (HW x HW) logits + window mask.

  Same arguments, conventions and result; O((HW)^2) memory. The tests' and the
  benchmark's reference, and `window_attention`'s choice where HW is small.
  """
  _check_shapes(q_bhwnd, k_bhwnd, v_bhwnd, local=window is not None)
  mask = None if window is None else dense_window_mask(*q_bhwnd.shape[1:3], window)
  return _dense_attention(q_bhwnd, k_bhwnd, v_bhwnd, mask)
