"""A backward flow from the two poses' keypoints: each target pixel follows its nearest limb to the source.

`rpa.init_flow='keypoints'` pre-warps the source with this flow before Recurrent Pose Alignment, so RPA
refines a coarse alignment instead of inventing one from the identity (a deviation from the paper, which
starts RPA at F = 0; WORKSPACE.md, "Readings of the paper implemented (RPA)").

Reading: every limb (a, b) visible in both poses maps a target point p to the source by the transform that
carries the target segment onto the source segment: the position along the limb is kept as a fraction
(the limb stretches with its length), the signed distance across it is kept in pixels (a foreshortened
limb keeps its width). Pixels blend the limbs' maps with weights softmax(-d^2 / 2 sigma^2) of their
distance d to each target segment, plus a background component at a fixed distance whose map is the
identity: pixels far from the target person stay where they are. A pose with fewer than one common limb
gives the identity everywhere. Keypoints are OpenPose-18 (x, y) pixels of the image, -1 missing.
"""

import jax
import jax.numpy as jnp

# The bones followed (OpenPose-18 indices): the 17 PIDM draws, plus hip-hip and the two shoulder-hip
# diagonals, which carry the torso's interior when the neck-hip lines alone would fold it.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (8, 11), (2, 8), (5, 11))


def _present(kpts: jax.Array) -> jax.Array:
  return jnp.all(kpts >= 0, axis=-1)  # [B, K]


def limb_flow(src_kpts: jax.Array, tgt_kpts: jax.Array, hw, sigma: float, background: float):
  """(flow [B, H, W, 2], person [B, H, W, 1]): warp.warp(src, flow) poses the source as the target.

  `flow` is backward, (dx, dy) in image pixels; `person` in [0, 1] is the limbs' share of each pixel's
  blend (1 - the background weight): where the target person is, so where the warped source means something.

  Args:
    src_kpts, tgt_kpts: [B, 18, 2] keypoints in pixels of the H x W images, (-1, -1) missing.
    hw: (H, W).
    sigma: the limbs' blending width in pixels.
    background: distance (pixels) at which the identity map weighs as much as a limb.
  """
  h, w = hw
  a_idx = jnp.array([a for a, _ in LIMBS])
  b_idx = jnp.array([b for _, b in LIMBS])
  src_kpts = src_kpts.astype(jnp.float32)
  tgt_kpts = tgt_kpts.astype(jnp.float32)
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  p = jnp.stack([xs, ys], -1)[None, :, :, None]  # [1, H, W, 1, 2]
  ta, tb = tgt_kpts[:, a_idx][:, None, None], tgt_kpts[:, b_idx][:, None, None]  # [B, 1, 1, L, 2]
  sa, sb = src_kpts[:, a_idx][:, None, None], src_kpts[:, b_idx][:, None, None]
  td, sd = tb - ta, sb - sa
  t_len2 = jnp.maximum(jnp.sum(td * td, -1), 1e-6)
  s_len = jnp.maximum(jnp.linalg.norm(sd, axis=-1), 1e-3)
  rel = p - ta
  u = jnp.sum(rel * td, -1) / t_len2  # position along the target limb, 0 at a, 1 at b
  v = (td[..., 0] * rel[..., 1] - td[..., 1] * rel[..., 0]) / jnp.sqrt(t_len2)  # signed pixels across it
  s_normal = jnp.stack([-sd[..., 1], sd[..., 0]], -1) / s_len[..., None]
  mapped = sa + u[..., None] * sd + v[..., None] * s_normal  # [B, H, W, L, 2]
  closest = ta + jnp.clip(u, 0.0, 1.0)[..., None] * td
  dist2 = jnp.sum((p - closest) ** 2, -1)  # [B, H, W, L]
  both = _present(src_kpts) & _present(tgt_kpts)
  ok = (both[:, a_idx] & both[:, b_idx])[:, None, None]  # [B, 1, 1, L]
  logits = jnp.where(ok, -dist2 / (2.0 * sigma**2), -jnp.inf)
  bg_logit = jnp.full(logits.shape[:3] + (1,), -background**2 / (2.0 * sigma**2))
  weights = jax.nn.softmax(jnp.concatenate([logits, bg_logit], -1), axis=-1)  # [B, H, W, L + 1]
  # Masked limbs have weight 0 but their (finite) maps are still multiplied: keep them finite.
  mapped = jnp.where(ok[..., None], mapped, 0.0)
  coords = jnp.sum(weights[..., :-1, None] * mapped, -2) + weights[..., -1:] * p[..., 0, :]
  return coords - p[..., 0, :], 1.0 - weights[..., -1:]
