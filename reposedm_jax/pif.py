"""Pose Interaction Fields (paper §3.3-3.4, eq. 10-16): W_h, G_phi and the guidance gradient.

The estimator is any function `heat_fn(images [B, H, W, 3] in [-1, 1]) -> {'heatmaps': [B, h, w, 17],
'features': [B, h', w', C]}` (COCO-17 heatmaps, e.g. the frozen Flax HigherHRNet's stride-2 output);
this module never sees its parameters, so the same code guides with the official weights, the
estimator trained by `mode=train_pose`, or a tiny network in tests.

Readings (WORKSPACE.md, "PIF"):
- P̃ (eq. 10) is the predicted clean image x̂0 = (y_t - sqrt(1-ᾱ_t) ε_θ) / sqrt(ᾱ_t) (`pif.source='x0'`), the
  quantity a pose estimator can read; `'residual'` is the literal D(ε - ε_θ) (training only: it needs ε).
- G_phi (eq. 11) = Σ_{x,k} W_h(x) (H_k(P̃)(x) - R_k(x))² / (h w): with `pif.reference='heatmaps'` R are
  Gaussian heatmaps rendered from the target keypoints (all that exists at sampling time), and W_h =
  1[Σ_k H_k(P̃) > threshold] ∪ 1[Σ_k R_k > threshold] (the target's support too, so a missing limb is pulled
  in rather than ignored). `'features'` compares estimator features of P̃ and of the ground-truth target
  under W_h (training only). Dividing by the map area makes the scale s transfer across resolutions.
- The gradient ∇G is taken w.r.t. P̃ with `jax.grad` (estimator frozen); in pixel space the decoder D is
  the identity, so it is already in the sample space.
- Eq. 15 (training): ε̃ = ε_θ + s sqrt(1-ᾱ_t) ∇G. Eq. 16 (sampling): ε̂ = ε_cfg + w_c s sqrt(1-ᾱ_t) ∇G.
  Adding ∇G to ε moves x̂0 along -∇G, i.e. towards lower G.
"""

import math
from typing import Callable, Dict

import jax
import jax.numpy as jnp

from reposedm_jax.data.keypoints import OPENPOSE_TO_COCO

HeatFn = Callable[[jax.Array], Dict[str, jax.Array]]


def openpose_to_coco(kpts_bk2: jax.Array) -> jax.Array:
  """[B, 18, 2] OpenPose keypoints -> [B, 17, 2] COCO keypoints (jnp; -1 stays -1)."""
  return kpts_bk2[:, jnp.asarray(OPENPOSE_TO_COCO)]


def render_heatmaps(kpts_xy: jax.Array, image_hw, out_hw, sigma: float) -> jax.Array:
  """Gaussian heatmaps of keypoints, in JAX (jit-able, per-example).

  Args:
    kpts_xy: [B, K, 2] (x, y) pixels at `image_hw`; -1 marks a missing joint (its map is all zero).
    image_hw: (H, W) of the frame the keypoints live in.
    out_hw: (h, w) of the heatmaps; pixel centres map as x_out = (x + 0.5) * w / W - 0.5.
    sigma: standard deviation in heatmap pixels.

  Returns:
    [B, h, w, K] float32 in [0, 1] (peak 1 at the keypoint).
  """
  (hh, ww), (h_img, w_img) = out_hw, image_hw
  kx = (kpts_xy[..., 0] + 0.5) * ww / w_img - 0.5  # [B, K]
  ky = (kpts_xy[..., 1] + 0.5) * hh / h_img - 0.5
  present = (kpts_xy[..., 0] != -1) & (kpts_xy[..., 1] != -1)
  xs = jnp.arange(ww, dtype=jnp.float32)
  ys = jnp.arange(hh, dtype=jnp.float32)
  gx = jnp.exp(-jnp.square(xs[None, :, None] - kx[:, None, :]) / (2 * sigma**2))  # [B, w, K]
  gy = jnp.exp(-jnp.square(ys[None, :, None] - ky[:, None, :]) / (2 * sigma**2))  # [B, h, K]
  heat = gy[:, :, None, :] * gx[:, None, :, :]
  return heat * present[:, None, None, :].astype(heat.dtype)


def interaction_mask(heatmaps: jax.Array, threshold: float) -> jax.Array:
  """W_h = 1[Σ_k H_k > threshold]: [B, h, w, K] -> [B, h, w, 1] float (constant w.r.t. the image)."""
  summed = jnp.sum(jax.lax.stop_gradient(heatmaps), axis=-1, keepdims=True)
  return (summed > threshold).astype(heatmaps.dtype)


def _resize_mask(mask: jax.Array, hw) -> jax.Array:
  if mask.shape[1:3] == tuple(hw):
    return mask
  return (jax.image.resize(mask, mask.shape[:1] + tuple(hw) + mask.shape[3:], 'nearest') > 0.5).astype(mask.dtype)


def g_phi(pred: Dict[str, jax.Array], ref: jax.Array, *, threshold: float, reference: str = 'heatmaps',
          target_support: bool = True) -> jax.Array:
  """Per-example G_phi (eq. 11) -> [B].

  Args:
    pred: the estimator's output on P̃ ('heatmaps' [B, h, w, K], and 'features' for reference='features').
    ref: [B, h, w, K] reference heatmaps (reference='heatmaps') or [B, h', w', C] features of the target.
    threshold: W_h threshold on the summed heatmaps (paper: 0.1).
    reference: 'heatmaps' | 'features'.
    target_support: also weight where the reference heatmaps exceed the threshold ('heatmaps' only).
  """
  heat = pred['heatmaps'].astype(jnp.float32)
  mask = interaction_mask(heat, threshold)
  if reference == 'heatmaps':
    if target_support:
      mask = jnp.maximum(mask, interaction_mask(ref, threshold))
    diff = heat - ref.astype(jnp.float32)
  elif reference == 'features':
    feats = pred['features'].astype(jnp.float32)
    mask = _resize_mask(mask, feats.shape[1:3])
    diff = feats - ref.astype(jnp.float32)
  else:
    raise ValueError(f"pif.reference must be 'heatmaps' or 'features', got {reference!r}")
  area = diff.shape[1] * diff.shape[2]
  return jnp.sum(mask * jnp.square(diff), axis=(1, 2, 3)) / area


def guidance_gradient(heat_fn: HeatFn, p_tilde: jax.Array, ref: jax.Array, **g_kwargs):
  """(G_phi [B], ∇_{P̃} G [B, H, W, 3]); examples are independent, so the gradient of Σ_b G_b is per example."""
  def total(p):
    g = g_phi(heat_fn(p), ref, **g_kwargs)
    return jnp.sum(g), g
  (_, g), grad = jax.value_and_grad(total, has_aux=True)(p_tilde)
  return g, grad


def reference_for(pcfg, heat_fn: HeatFn, tgt_kpts_openpose: jax.Array, image_hw, heat_hw,
                  tgt_img=None) -> jax.Array:
  """The reference of G_phi for a batch: heatmaps rendered from the target keypoints, or target features."""
  if pcfg.reference == 'heatmaps':
    return render_heatmaps(openpose_to_coco(tgt_kpts_openpose), image_hw, heat_hw, pcfg.ref_sigma)
  if tgt_img is None:
    raise ValueError("pif.reference='features' needs the ground-truth target image (training only); "
                     "sampling guides with reference='heatmaps'")
  return jax.lax.stop_gradient(heat_fn(tgt_img)['features'])


def correct_eps(eps: jax.Array, grad: jax.Array, acp_t: jax.Array, scale) -> jax.Array:
  """ε + scale · sqrt(1 - ᾱ_t) · ∇G (eq. 15/16); acp_t broadcasts against [B, H, W, C]."""
  return eps + scale * jnp.sqrt(1.0 - acp_t) * grad.astype(eps.dtype)


def heat_hw(heat_fn: HeatFn, images: jax.Array):
  """Spatial size of the estimator's heatmaps for `images` (static; no compute)."""
  return jax.eval_shape(heat_fn, images)['heatmaps'].shape[1:3]


def guide_train_output(pcfg, heat_fn: HeatFn, out: jax.Array, *, sched, x_t, t, noise, batch):
  """Eq. 15 on a training batch: replaces ε_θ by ε̃ = ε_θ + s sqrt(1-ᾱ_t) ∇G in the model output.

  Guidance runs on the first ceil(train_fraction * B) rows only (static, so the cost is bounded) and is
  zeroed where t > train_t_max (x̂0 at high noise is not an image an estimator can read).

  Args:
    pcfg: config.pif.
    heat_fn: the frozen estimator (module docstring).
    out: [B, H, W, 2C] model output (ε_θ, v).
    sched: the training Schedule; x_t, t, noise: the step's noisy input, indices and true noise.
    batch: the global batch (tgt_kpts, and tgt_img for reference='features').

  Returns:
    (out with ε̃ in the guided rows, {'pif_g': mean G, 'pif_grad_rms': rms of ∇G}).
  """
  eps, v = jnp.split(out, 2, axis=-1)
  b = eps.shape[0]
  n = max(1, min(b, math.ceil(pcfg.train_fraction * b - 1e-9)))
  acp = jnp.asarray(sched.alphas_cumprod, jnp.float32)[t[:n]][:, None, None, None]
  if pcfg.source == 'x0':
    p_tilde = jnp.clip((x_t[:n] - jnp.sqrt(1.0 - acp) * eps[:n]) / jnp.sqrt(acp), -1.0, 1.0)
  elif pcfg.source == 'residual':
    p_tilde = noise[:n] - eps[:n]
  else:
    raise ValueError(f"pif.source must be 'x0' or 'residual', got {pcfg.source!r}")
  if pcfg.stop_gradient:
    p_tilde = jax.lax.stop_gradient(p_tilde)
  ref = reference_for(pcfg, heat_fn, batch['tgt_kpts'][:n], x_t.shape[1:3], heat_hw(heat_fn, p_tilde),
                      tgt_img=batch['tgt_img'][:n])
  g, grad = guidance_gradient(heat_fn, p_tilde, ref, threshold=pcfg.threshold, reference=pcfg.reference,
                              target_support=pcfg.target_support)
  if pcfg.stop_gradient:
    grad = jax.lax.stop_gradient(grad)
  active = (t[:n] <= pcfg.train_t_max).astype(grad.dtype)[:, None, None, None]
  eps_n = correct_eps(eps[:n], grad * active, acp, pcfg.train_scale)
  eps = jnp.concatenate([eps_n, eps[n:]], axis=0) if n < b else eps_n
  metrics = {'pif_g': jnp.mean(jax.lax.stop_gradient(g)),
             'pif_grad_rms': jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(grad))))}
  return jnp.concatenate([eps, v], axis=-1), metrics


def sampling_correction(pcfg, heat_fn: HeatFn, sched, tgt_kpts_openpose: jax.Array, cfg_scale: float):
  """Eq. 16 as the samplers' eps_correction_fn(x_t, t_index, eps, pred_x0) -> ε̂.

  `sched` is the schedule the sampler indexes (respaced for DDPM). Only the target keypoints are used:
  no ground truth exists at test time. With CFG the correction is also multiplied by w_c
  (pif.sample_times_cfg), as eq. 16 writes it.
  """
  scale = pcfg.sample_scale * (cfg_scale if pcfg.sample_times_cfg else 1.0)
  acp_table = jnp.asarray(sched.alphas_cumprod, jnp.float32)

  def correction(x_t, t_index, eps, pred_x0):
    del x_t
    p_tilde = jnp.clip(pred_x0, -1.0, 1.0)
    ref = render_heatmaps(openpose_to_coco(tgt_kpts_openpose), p_tilde.shape[1:3], heat_hw(heat_fn, p_tilde),
                          pcfg.ref_sigma)
    _, grad = guidance_gradient(heat_fn, p_tilde, ref, threshold=pcfg.threshold, reference='heatmaps',
                                target_support=pcfg.target_support)
    return correct_eps(eps, grad, acp_table[t_index], scale)

  return correction
