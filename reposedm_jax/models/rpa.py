"""Recurrent Pose Alignment (paper §3.2, eq. 5-9): iteratively warp the source towards the target pose.

Reading implemented (DESIGN.md, "Readings of the paper"; WORKSPACE.md):
  F_T = E_pose(P)                        target-pose features at 1/ds resolution      [B, h, w, D]
  F_S^n = E_src(warp(I_S, F^n))          source re-encoded after each warp, eq. 9     [B, h, w, D]
  (F_T', F_S') = MapFormer(F_T, F_S^n)   local-window self/cross attention, eq. 5
  C = corr(F_T', F_S', R)                local correlation volume, eq. 6              [B, h, w, (2R+1)^2]
  dF = Agg([C | F_T'])                   2 convs + max-pool, upsampled back, eq. 8    [B, h, w, 2]
  F^{n+1}(x) = dF(x) + F^n(x + dF(x))    composition of warps (the accumulator), eq. 7
Flows are dense (dx, dy) fields in pixels of the 1/ds feature map, applied to the image after a
bilinear upsampling (values scaled by the resolution ratio). Starting from the identity flow
F = 0, the first update is exactly the paper's F^0 = M(F_T, F_S); N further updates follow.
The output is the source warped by the final flow (and the flow); models/b2.py decides how the U-Net
receives it (models/aligned.py).
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models import correlation, mapformer, warp


class ConvEncoder(nn.Module):
  """Strided conv stack: [B, H, W, C_in] -> [B, ceil(H/ds), ceil(W/ds), dim]."""
  dim: int
  ds: int

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    levels = int(math.log2(self.ds))
    width = max(self.dim // 2**levels, 16)
    h = nn.Conv(width, (3, 3), name='conv_in')(x_bhwc)
    for i in range(levels):
      width = min(2 * width, self.dim)
      h = nn.Conv(width, (3, 3), strides=(2, 2), name=f'down_{i}')(nn.silu(h))
    return nn.Conv(self.dim, (1, 1), name='proj')(nn.silu(h))


class PoseAggregator(nn.Module):
  """Correlation + pose features -> flow update dF [B, h, w, 2] (2 convs + 1 max-pool, eq. 8).

  The max-pool halves the resolution (robustness to small misalignments); the update is
  upsampled back bilinearly. The last conv starts tiny (not zero) so the first steps are close
  to the identity warp while every parameter still receives a gradient.
  """
  hidden: int

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    b, h, w, _ = x_bhwc.shape
    y = nn.relu(nn.Conv(self.hidden, (3, 3), name='conv_0')(x_bhwc))
    y = nn.max_pool(y, (2, 2), strides=(2, 2), padding='SAME')
    y = nn.Conv(2, (3, 3), kernel_init=nn.initializers.normal(1e-3), name='conv_1')(y)
    return jax.image.resize(y, (b, h, w, 2), 'linear')


def image_flow(flow_bhw2: jax.Array, height: int, width: int) -> jax.Array:
  """Feature-resolution flow -> image-resolution flow (bilinear resize, values scaled per axis)."""
  return warp.resize_flow(flow_bhw2, (height, width))


class RPACell(nn.Module):
  """One recurrent update: (flow, source, F_T) -> (composed flow, source warped by it)."""
  dim: int
  ds: int
  heads: int
  windows: Sequence[int | None]
  depth: int
  radius: int

  @nn.compact
  def __call__(self, flow_bhw2, src_bhwc, f_t_bhwc):
    height, width = src_bhwc.shape[1:3]
    warped = warp.warp(src_bhwc, image_flow(flow_bhw2, height, width))
    f_s = ConvEncoder(self.dim, self.ds, name='src_encoder')(warped)
    f_t2, f_s2 = mapformer.MapFormer(self.dim, self.heads, tuple(self.windows), self.depth, name='mapformer')(
        f_t_bhwc, f_s)
    corr = correlation.local_correlation(f_t2, f_s2, self.radius)
    delta = PoseAggregator(self.dim, name='aggregator')(jnp.concatenate([corr, f_t2], axis=-1))
    new_flow = warp.compose(flow_bhw2, delta)
    return new_flow, warp.warp(src_bhwc, image_flow(new_flow, height, width))


class RPA(nn.Module):
  """Recurrent Pose Alignment.

  __call__(src [B,H,W,3] in [-1,1], tgt_pose [B,H,W,20]) returns
    warped  [B, H, W, 3]          the source warped by the final flow F^N
    flow    [B, H/ds, W/ds, 2]    F^N in feature pixels
    strip   [N+1, B, H, W, 3]     the source warped by F^0 .. F^N (paper Fig. 8)
  `use_scan` runs the N+1 updates in `nn.scan` (one compiled body) instead of a Python loop
  unrolled at trace time; both share the same parameters ('cell').
  """
  dim: int = 64
  ds: int = 8
  heads: int = 4
  windows: Sequence[int | None] = (None, 7, 3)
  depth: int = 1
  radius: int = 3
  iterations: int = 5
  use_scan: bool = False

  @nn.compact
  def __call__(self, src_bhwc: jax.Array, tgt_pose_bhwc: jax.Array):
    f_t = ConvEncoder(self.dim, self.ds, name='pose_encoder')(tgt_pose_bhwc.astype(src_bhwc.dtype))
    flow = jnp.zeros(f_t.shape[:3] + (2,), src_bhwc.dtype)
    cell_args = dict(dim=self.dim, ds=self.ds, heads=self.heads, windows=tuple(self.windows), depth=self.depth,
                     radius=self.radius)
    steps = self.iterations + 1  # Update 0 from the identity flow is the paper's F^0.
    if self.use_scan:
      scan_cell = nn.scan(RPACell, variable_broadcast='params', split_rngs={'params': False},
                          in_axes=(nn.broadcast, nn.broadcast), length=steps)
      flow, strip = scan_cell(**cell_args, name='cell')(flow, src_bhwc, f_t)
    else:
      cell = RPACell(**cell_args, name='cell')
      warped = []
      for _ in range(steps):
        flow, w = cell(flow, src_bhwc, f_t)
        warped.append(w)
      strip = jnp.stack(warped)
    return strip[-1], flow, strip

  @classmethod
  def from_config(cls, rpa_config) -> 'RPA':
    windows = tuple(None if w in (None, 0, -1) else int(w) for w in rpa_config.windows)
    return cls(dim=int(rpa_config.dim), ds=int(rpa_config.ds), heads=int(rpa_config.heads), windows=windows,
               depth=int(rpa_config.depth), radius=int(rpa_config.radius), iterations=int(rpa_config.iterations),
               use_scan=bool(rpa_config.use_scan))
