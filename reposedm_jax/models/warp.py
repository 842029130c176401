"""Dense flow fields: bilinear sampling, backward warping, composition, resizing.

Used by Recurrent Pose Alignment (paper §3.2, eq. 7-9), which accumulates the
per-iteration flow ΔF into the running flow F by composition,
F^{n+1}(x) = ΔF(x) + F^n(x + ΔF(x)), and warps the source with F^n.

Conventions (shared by every function here):
  * Images/feature maps are channels-last, `x_bhwc`.
  * A flow `flow_bhw2` is in PIXELS of the map it is applied to; channel 0 is
    dx (along columns), channel 1 is dy (along rows).
  * Warping is backward: warp(x, F)(p) = x(p + F(p)). Every output pixel pulls
    from the input, so the result has no holes and is differentiable in F.
  * Pixel centres sit at integer coordinates 0..W-1 / 0..H-1 (torch's
    `align_corners=True` in pixel units), so the identity grid samples every
    pixel centre exactly and the zero flow is an exact identity warp.
  * Flow resizing follows `jax.image.resize` (half-pixel centres); under that
    convention a displacement of d source pixels is d*s target pixels for a
    scale s, so values are multiplied by the per-axis scale.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

_PADDINGS = ('zeros', 'border')


def identity_grid(b: int, h: int, w: int, dtype=jnp.float32) -> jax.Array:
  """Absolute pixel coordinates of every pixel centre.

  Args:
    b, h, w: Batch size, height, width.
    dtype: Floating dtype of the grid.

  Returns:
    grid_bhw2 with grid[..., 0] = column index x, grid[..., 1] = row index y.
  """
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype),
                        indexing='ij')
  grid_hw2 = jnp.stack([xs, ys], axis=-1)
  return jnp.broadcast_to(grid_hw2[None], (b, h, w, 2))


def bilinear_sample(x_bhwc: jax.Array, coords_bhw2: jax.Array,
                    padding: str = 'zeros') -> jax.Array:
  """Bilinearly samples `x` at absolute pixel coordinates.

  Equivalent to `torch.nn.functional.grid_sample(mode='bilinear',
  align_corners=True)` after converting pixel coordinates to [-1, 1].
  Differentiable w.r.t. both `x` (through the gather) and `coords` (through
  the bilinear weights; piecewise linear, so the gradient jumps at integers).

  Args:
    x_bhwc: Input map [B, H, W, C].
    coords_bhw2: Sample positions [B, Ho, Wo, 2], (x=col, y=row) in pixels of x;
      the output grid may differ in size from the input.
    padding: 'zeros': neighbours outside the map contribute zero (the sample
      fades to 0 over the one-pixel band past the edge). 'border': coordinates
      are clamped into [0, W-1] x [0, H-1] first, i.e. the edge is extended
      (and the gradient w.r.t. a clamped coordinate is zero, as in torch).

  Returns:
    [B, Ho, Wo, C] samples, in the dtype of `x`.
  """
  if padding not in _PADDINGS:
    raise ValueError(f'padding must be one of {_PADDINGS}, got {padding!r}')
  b, h, w, c = x_bhwc.shape
  _, ho, wo, _ = coords_bhw2.shape
  coords = coords_bhw2.astype(jnp.promote_types(coords_bhw2.dtype, jnp.float32))
  cx, cy = coords[..., 0], coords[..., 1]
  if padding == 'border':
    cx = jnp.clip(cx, 0, w - 1)
    cy = jnp.clip(cy, 0, h - 1)
  # floor() has zero gradient; the coordinate gradient flows through the
  # fractional weights below, which is exactly d(bilinear)/d(coord).
  x0 = jnp.floor(cx)
  y0 = jnp.floor(cy)
  wx1 = cx - x0
  wy1 = cy - y0
  wx0 = 1 - wx1
  wy0 = 1 - wy1
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)

  x_flat = x_bhwc.reshape(b, h * w, c)

  def corner(yi, xi, weight):
    # One gather per corner over the flattened map. Out-of-range indices are
    # clamped only to keep the gather in bounds; their weight is zeroed so
    # they contribute nothing ('border' never produces them, except for the
    # zero-weight x0+1 / y0+1 neighbour at the last row/column).
    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
    vals = jnp.take_along_axis(x_flat, idx.reshape(b, ho * wo, 1), axis=1)
    weight = jnp.where(valid, weight, 0).astype(x_bhwc.dtype)
    return vals.reshape(b, ho, wo, c) * weight[..., None]

  # Sum order is fixed so the identity grid (weights 1, 0, 0, 0) is exact.
  return (corner(y0, x0, wy0 * wx0) + corner(y0, x0 + 1, wy0 * wx1)
          + corner(y0 + 1, x0, wy1 * wx0) + corner(y0 + 1, x0 + 1, wy1 * wx1))


def warp(x_bhwc: jax.Array, flow_bhw2: jax.Array,
         padding: str = 'zeros') -> jax.Array:
  """Backward warp: out(p) = x(p + flow(p)), bilinear.

  Args:
    x_bhwc: Map to warp [B, H, W, C].
    flow_bhw2: Displacement [B, H, W, 2] in pixels (dx, dy); its spatial size
      is the output size and normally equals x's.
    padding: See `bilinear_sample`.

  Returns:
    Warped map [B, H, W, C]; the zero flow returns `x` exactly.
  """
  b, h, w, _ = flow_bhw2.shape
  grid = identity_grid(b, h, w, jnp.promote_types(flow_bhw2.dtype, jnp.float32))
  return bilinear_sample(x_bhwc, grid + flow_bhw2, padding=padding)


def compose(flow_a_bhw2: jax.Array, flow_b_bhw2: jax.Array) -> jax.Array:
  """Flow of "apply b's displacement, then a's": b(x) + a(x + b(x)).

  With a = F^n and b = ΔF this is the RPA accumulator
  F^{n+1}(x) = ΔF(x) + F^n(x + ΔF(x)), and
  warp(warp(x, a), b) ≈ warp(x, compose(a, b)) (exact where b is integer).

  `a` is sampled with 'border' padding: where x + b(x) leaves the map, the
  best guess of a's displacement there is the nearest known one. Zero padding
  would blend a towards 0 over the edge band, i.e. silently drop the
  accumulated displacement and snap boundary pixels back to the identity.

  Args:
    flow_a_bhw2: Outer flow a (applied second) [B, H, W, 2], pixels.
    flow_b_bhw2: Inner flow b (applied first) [B, H, W, 2], pixels.

  Returns:
    Composed flow [B, H, W, 2].
  """
  b, h, w, _ = flow_b_bhw2.shape
  grid = identity_grid(b, h, w, jnp.promote_types(flow_b_bhw2.dtype, jnp.float32))
  a_at = bilinear_sample(flow_a_bhw2, grid + flow_b_bhw2, padding='border')
  return flow_b_bhw2 + a_at.astype(flow_b_bhw2.dtype)


def resize_flow(flow_bhw2: jax.Array, hw: Sequence[int]) -> jax.Array:
  """Resizes a flow field to `hw` and rescales its values to the new pixels.

  The field is resampled with `jax.image.resize(..., 'linear')` (half-pixel
  centres; antialiased when shrinking). dx is scaled by W'/W and dy by H'/H,
  which is exact for the half-pixel convention.

  Args:
    flow_bhw2: Flow [B, H, W, 2] in pixels of an H x W map.
    hw: Target (H', W').

  Returns:
    Flow [B, H', W', 2] in pixels of an H' x W' map.
  """
  b, h, w, _ = flow_bhw2.shape
  h2, w2 = int(hw[0]), int(hw[1])
  out = jax.image.resize(flow_bhw2, (b, h2, w2, 2), method='linear')
  scale = jnp.asarray([w2 / w, h2 / h], dtype=out.dtype)
  return out * scale


def upsample_flow(flow_bhw2: jax.Array, factor: int = 2) -> jax.Array:
  """Bilinear upsampling of a flow by an integer factor; values times `factor`.

  Args:
    flow_bhw2: Flow [B, H, W, 2] in pixels.
    factor: Integer scale factor.

  Returns:
    Flow [B, H*factor, W*factor, 2] in pixels of the larger map.
  """
  _, h, w, _ = flow_bhw2.shape
  return resize_flow(flow_bhw2, (h * factor, w * factor))


def downsample_flow(flow_bhw2: jax.Array, factor: int = 2) -> jax.Array:
  """Antialiased bilinear downsampling of a flow; values divided by `factor`.

  Args:
    flow_bhw2: Flow [B, H, W, 2] in pixels; H and W divisible by `factor`.
    factor: Integer scale factor.

  Returns:
    Flow [B, H//factor, W//factor, 2] in pixels of the smaller map.
  """
  _, h, w, _ = flow_bhw2.shape
  if h % factor or w % factor:
    raise ValueError(f'flow size {(h, w)} is not divisible by {factor}')
  return resize_flow(flow_bhw2, (h // factor, w // factor))

