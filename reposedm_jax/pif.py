"""Pose Interaction Fields (paper §3.3-3.4, eq. 10-16): W_h, G_phi, the guidance gradient, eq. 15 and 16.

The estimator is any function `heat_fn(images [B, H, W, 3] in [-1, 1]) -> {'heatmaps': [B, h, w, 17],
'features': [B, h', w', C]}` (COCO-17 heatmaps, e.g. the frozen Flax HigherHRNet's aggregated stride-2
output) plus its `heads`: the ((stride, sigma), ...) of the Gaussian targets it was trained on, from
which the reference is rendered *through the same aggregation*, so that an ideal estimator at the exact
target pose gives G = 0 and ∇G = 0. This module never sees the estimator's parameters.

Readings (WORKSPACE.md, "PIF"):
- P̃ (eq. 10) is the predicted clean image x̂0 = (y_t - sqrt(1-ᾱ_t) ε_θ) / sqrt(ᾱ_t) (`pif.source='x0'`), the
  quantity a pose estimator can read; `'residual'` is the literal D(ε - ε_θ) (training only: it needs ε).
- G_phi (eq. 11) = Σ_{x,k} W_h(x) (H_k(P̃)(x) - R_k(x))², summed as the paper writes it (`pif.normalize=
  'sum'`; 'area' divides by h·w, which made s = 1 a ~1e-3 correction). R: `pif.reference='heatmaps'`
  (rendered from the target keypoints: all that exists at sampling time), W_h = 1[Σ_k H_k(P̃) > threshold]
  ∪ 1[Σ_k R_k > threshold] (the target's support too, so a missing limb is pulled in), or `'features'`
  (estimator features of the ground-truth target; training only).
- ∇G is taken w.r.t. P̃ with `jax.grad` (estimator frozen); in pixel space D is the identity, in latent mode
  heat_fn decodes first (latent.Space.pixel_heat_fn), so ∇G is w.r.t. the latent through the decoder (eq. 10).
- Eq. 15: ε̃ = ε_θ + s sqrt(1-ᾱ_t) ∇G; eq. 16: `eq16`. Adding ∇G to ε moves x̂0 along -∇G (downhill).
- Training (`pif.train_mode`): 'off' (RePoseDM = B2's training + eq. 16 at sampling), 'literal' (eq. 15
  inside the loss: with ∇G a constant in θ, ‖ε − ε_θ − c‖² is minimised at ε_θ = ε* − c, so the network
  learns to pre-compensate the correction; WORKSPACE.md measures it), 'penalty' (λ·G(x̂0(ε_θ)) added to
  the loss with its gradient into θ: a deviation from the paper's text that can actually teach pose).
"""

import math
from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax.data.keypoints import openpose_to_coco
from reposedm_jax.diffusion import samplers
from reposedm_jax.models import hrnet

HeatFn = Callable[[jax.Array], Dict[str, jax.Array]]


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



# pif.train_mode / pif.normalize / pif.reference / pif.source values (config_lib validates against these).
TRAIN_MODES = ('off', 'literal', 'penalty')
NORMALIZE = ('sum', 'area')
REFERENCES = ('heatmaps', 'features')
SOURCES = ('x0', 'residual')

Heads = Sequence[Tuple[int, float]]


def reference_heatmaps(kpts_openpose: jax.Array, image_hw, heads: Heads) -> jax.Array:
  """What an ideal estimator outputs for these keypoints: its training targets, aggregated as its output.

  Each head's target is rendered as the estimator's trainer renders it (mode=train_pose: frame = the
  head's map size times its stride, sigma in that head's pixels); two heads (HigherHRNet: stride 4 and
  2) are combined by `hrnet.aggregate_heatmaps` exactly as the estimator's own output is.

  Args:
    kpts_openpose: [B, 18, 2] target keypoints at `image_hw` (-1 missing).
    image_hw: (H, W) of the images the estimator reads.
    heads: ((stride, sigma), ...), coarsest first for two heads; one head = that head alone.

  Returns:
    [B, h, w, 17] at the finest head's resolution.
  """
  kpts = openpose_to_coco(kpts_openpose)
  maps = []
  for stride, sigma in heads:
    hw = (-(-image_hw[0] // stride), -(-image_hw[1] // stride))
    maps.append(render_heatmaps(kpts, (hw[0] * stride, hw[1] * stride), hw, sigma))
  if len(maps) == 1:
    return maps[0]
  if len(maps) == 2:
    return hrnet.aggregate_heatmaps({'heatmaps_s4': maps[0], 'heatmaps_s2': maps[1]})
  raise ValueError(f'reference_heatmaps: 1 or 2 heads, got {heads}')


def g_phi(pred: Dict[str, jax.Array], ref: jax.Array, *, threshold: float, reference: str = 'heatmaps',
          target_support: bool = True, normalize: str = 'sum') -> jax.Array:
  """Per-example G_phi (eq. 11) -> [B].

  Args:
    pred: the estimator's output on P̃ ('heatmaps' [B, h, w, K], and 'features' for reference='features').
    ref: [B, h, w, K] reference heatmaps (reference='heatmaps') or [B, h', w', C] features of the target.
    threshold: W_h threshold on the summed heatmaps (paper: 0.1).
    reference: 'heatmaps' | 'features'.
    target_support: also weight where the reference heatmaps exceed the threshold ('heatmaps' only).
    normalize: 'sum' (eq. 11 as written) | 'area' (divided by the map's h·w).
  """
  acc = jnp.promote_types(pred['heatmaps'].dtype, jnp.float32)  # at least float32 (float64 in gradient checks)
  heat = pred['heatmaps'].astype(acc)
  mask = interaction_mask(heat, threshold)
  if reference == 'heatmaps':
    if target_support:
      mask = jnp.maximum(mask, interaction_mask(ref.astype(acc), threshold))
    diff = heat - ref.astype(acc)
  elif reference == 'features':
    feats = pred['features'].astype(acc)
    mask = _resize_mask(mask, feats.shape[1:3])
    diff = feats - ref.astype(acc)
  else:
    raise ValueError(f'pif.reference must be one of {REFERENCES}, got {reference!r}')
  g = jnp.sum(mask * jnp.square(diff), axis=(1, 2, 3))
  if normalize == 'area':
    return g / (diff.shape[1] * diff.shape[2])
  if normalize != 'sum':
    raise ValueError(f'pif.normalize must be one of {NORMALIZE}, got {normalize!r}')
  return g


def guidance_gradient(heat_fn: HeatFn, p_tilde: jax.Array, ref: jax.Array, **g_kwargs):
  """(G_phi [B], ∇_{P̃} G [B, H, W, 3]); examples are independent, so the gradient of Σ_b G_b is per example."""
  def total(p):
    g = g_phi(heat_fn(p), ref, **g_kwargs)
    return jnp.sum(g), g
  (_, g), grad = jax.value_and_grad(total, has_aux=True)(p_tilde)
  return g, grad


def _g_kwargs(pcfg, reference: str) -> dict:
  return dict(threshold=pcfg.threshold, reference=reference, target_support=pcfg.target_support,
              normalize=pcfg.normalize)


def reference_for(pcfg, heat_fn: HeatFn, heads: Heads, tgt_kpts_openpose: jax.Array, image_hw,
                  tgt_img=None) -> jax.Array:
  """The reference of G_phi for a batch: the ideal estimator output for the target keypoints, or the
  estimator's features of the ground-truth target (training only)."""
  if pcfg.reference == 'heatmaps':
    return reference_heatmaps(tgt_kpts_openpose, image_hw, heads)
  if tgt_img is None:
    raise ValueError("pif.reference='features' needs the ground-truth target image (training only); "
                     "sampling guides with reference='heatmaps'")
  return jax.lax.stop_gradient(heat_fn(tgt_img)['features'])


def low_pass(x: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of [B, H, W, C] (std `sigma` pixels, edge-replicated borders); 0 = identity.

  The gradient of a non-robust estimator is mostly high-frequency, adversarial-like texture: it lowers the
  guiding estimator's G without moving limbs a second estimator would read. Low-passing ∇G keeps the
  limb-scale part (`pif.grad_blur`, a std in units of the image height).
  """
  if sigma <= 0:
    return x
  r = max(1, int(math.ceil(3.0 * sigma)))
  k = jnp.exp(-jnp.square(jnp.arange(-r, r + 1, dtype=jnp.float32)) / (2.0 * sigma**2))
  k = (k / jnp.sum(k)).astype(x.dtype)
  c = x.shape[-1]
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode='edge')
  dn = ('NHWC', 'HWIO', 'NHWC')
  y = jax.lax.conv_general_dilated(xp, jnp.tile(k[:, None, None, None], (1, 1, 1, c)), (1, 1), 'VALID',
                                   dimension_numbers=dn, feature_group_count=c)
  return jax.lax.conv_general_dilated(y, jnp.tile(k[None, :, None, None], (1, 1, 1, c)), (1, 1), 'VALID',
                                      dimension_numbers=dn, feature_group_count=c)


def guidance_term(grad: jax.Array, acp_t: jax.Array, scale) -> jax.Array:
  """scale · sqrt(1 - ᾱ_t) · ∇G, the correction of eq. 15 (scale = s) and eq. 16 (scale = w_c · s)."""
  return scale * jnp.sqrt(1.0 - acp_t) * grad


def correct_eps(eps: jax.Array, grad: jax.Array, acp_t: jax.Array, scale) -> jax.Array:
  """Eq. 15: ε̃ = ε + scale · sqrt(1 - ᾱ_t) · ∇G; acp_t broadcasts against [B, H, W, C]."""
  return eps + guidance_term(grad, acp_t, scale).astype(eps.dtype)


def eq16(eps_u: jax.Array, eps_c: jax.Array, grad: jax.Array, acp_t: jax.Array, *, w_c: float,
         s: float) -> jax.Array:
  """Eq. 16, the sampling-time prediction: three terms.

    ε̂ = ε_u                           the null-condition prediction ε_θ(y_t, t, ∅, ∅)
        + w_c · (ε_c − ε_u)           classifier-free guidance towards the (pose, source) condition
        + w_c · s · sqrt(1−ᾱ_t) · ∇G  PIF's gradient guidance (eq. 15's term, scaled with the condition)

  The first two are computed as ε_c + (w_c − 1)(ε_c − ε_u), the samplers' `cfg_combine`, so that w_c = 1
  returns ε_c bit for bit; the samplers add the third term through their eps-correction hook
  (`sampling_correction`), which is this function split at the CFG wrapper.
  """
  return samplers.cfg_combine(eps_c, eps_u, w_c) + guidance_term(grad, acp_t, w_c * s).astype(eps_c.dtype)


def heat_hw(heat_fn: HeatFn, images: jax.Array):
  """Spatial size of the estimator's heatmaps for `images` (static; no compute)."""
  return jax.eval_shape(heat_fn, images)['heatmaps'].shape[1:3]


def _guided_rows(pcfg, b: int) -> int:
  return max(1, min(b, math.ceil(pcfg.train_fraction * b - 1e-9)))


def train_terms(pcfg, heat_fn: HeatFn, heads: Heads, out: jax.Array, *, sched, x_t, t, noise, batch,
                image_hw=None, clip: bool = True):
  """PIF in a training step, by `pif.train_mode` ('literal' | 'penalty'; 'off' never calls this).

  Guidance runs on the first ceil(train_fraction * B) rows only (static, so the cost is bounded) and is
  zeroed where t > train_t_max (x̂0 at high noise is not an image an estimator can read).

  Args:
    pcfg: config.pif.
    heat_fn, heads: the frozen estimator (module docstring).
    out: [B, H, W, 2C] model output (ε_θ, v).
    sched: the training Schedule; x_t, t, noise: the step's noisy input, indices and true noise.
    batch: the global batch (tgt_kpts at `image_hw`, and tgt_img in the model's space for reference='features').
    image_hw: (H, W) of the images heat_fn reads (default x_t's: pixel mode). Latent mode passes the pixel size
      and a heat_fn that decodes first (latent.Space.pixel_heat_fn), with `clip=False`: x̂0 is clipped to
      [-1, 1] only where it is an image.

  Returns:
    (out, extra_loss, metrics): 'literal' replaces ε_θ by eq. 15's ε̃ in the guided rows and adds no
    loss; 'penalty' leaves out unchanged and returns λ · mean_rows(active · G(x̂0(ε_θ))) with its
    gradient reaching θ. metrics: 'pif_g' (mean G over guided rows), 'pif_grad_rms' ('literal').
  """
  eps, v = jnp.split(out, 2, axis=-1)
  b = eps.shape[0]
  n = _guided_rows(pcfg, b)
  acp = jnp.asarray(sched.alphas_cumprod, jnp.float32)[t[:n]][:, None, None, None]
  active = (t[:n] <= pcfg.train_t_max).astype(jnp.float32)
  if pcfg.source == 'x0':
    p_tilde = (x_t[:n] - jnp.sqrt(1.0 - acp) * eps[:n]) / jnp.sqrt(acp)
    p_tilde = jnp.clip(p_tilde, -1.0, 1.0) if clip else p_tilde
  elif pcfg.source == 'residual':
    p_tilde = noise[:n] - eps[:n]
  else:
    raise ValueError(f'pif.source must be one of {SOURCES}, got {pcfg.source!r}')
  image_hw = x_t.shape[1:3] if image_hw is None else tuple(image_hw)
  ref = reference_for(pcfg, heat_fn, heads, batch['tgt_kpts'][:n], image_hw, tgt_img=batch['tgt_img'][:n])
  if pcfg.train_mode == 'penalty':
    g = g_phi(heat_fn(p_tilde), ref, **_g_kwargs(pcfg, pcfg.reference))
    extra = pcfg.penalty_weight * jnp.sum(active * g) / b
    return out, extra, {'pif_g': jnp.mean(jax.lax.stop_gradient(g))}
  if pcfg.train_mode != 'literal':
    raise ValueError(f'pif.train_mode must be one of {TRAIN_MODES}, got {pcfg.train_mode!r}')
  if pcfg.stop_gradient:
    p_tilde = jax.lax.stop_gradient(p_tilde)
  g, grad = guidance_gradient(heat_fn, p_tilde, ref, **_g_kwargs(pcfg, pcfg.reference))
  if pcfg.stop_gradient:
    grad = jax.lax.stop_gradient(grad)
  grad = low_pass(grad, pcfg.grad_blur * grad.shape[1])
  eps_n = correct_eps(eps[:n], grad * active[:, None, None, None], acp, pcfg.train_scale)
  eps = jnp.concatenate([eps_n, eps[n:]], axis=0) if n < b else eps_n
  metrics = {'pif_g': jnp.mean(jax.lax.stop_gradient(g)),
             'pif_grad_rms': jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(grad))))}
  return jnp.concatenate([eps, v], axis=-1), jnp.float32(0.0), metrics


def sampling_correction(pcfg, heat_fn: HeatFn, heads: Heads, sched, tgt_kpts_openpose: jax.Array | None,
                        cfg_scale: float, image_hw=None, clip: bool = True, ref: jax.Array | None = None):
  """Eq. 16's third term as the samplers' eps_correction_fn(x_t, t_index, eps, pred_x0) -> ε̂.

  `sched` is the schedule the sampler indexes (respaced for DDPM); guidance acts only where the
  schedule's original timestep is <= pif.sample_t_max; ∇G is low-passed by `pif.grad_blur` x H. Only the
  target keypoints are used: no ground truth exists at test time. The term is multiplied by w_c (pif.sample_times_cfg), as eq. 16 writes it.
  `image_hw` / `clip`: as in `train_terms` (latent mode: the pixel size, and no clip of the latent x̂0).
  `ref`: a precomputed reference instead of `tgt_kpts_openpose`'s (RePoseSD's multi-person heatmaps).
  """
  scale = pcfg.sample_scale * (cfg_scale if pcfg.sample_times_cfg else 1.0)
  acp_table = jnp.asarray(sched.alphas_cumprod, jnp.float32)
  t_model = jnp.asarray(sched.timestep_map, jnp.int32)

  def guided(t_index, eps, pred_x0):
    p_tilde = jnp.clip(pred_x0, -1.0, 1.0) if clip else pred_x0
    r = ref if ref is not None else reference_heatmaps(
        tgt_kpts_openpose, p_tilde.shape[1:3] if image_hw is None else tuple(image_hw), heads)
    _, grad = guidance_gradient(heat_fn, p_tilde, r, **_g_kwargs(pcfg, 'heatmaps'))
    grad = low_pass(grad, pcfg.grad_blur * grad.shape[1])
    return eps + guidance_term(grad, acp_table[t_index], scale).astype(eps.dtype)

  def correction(x_t, t_index, eps, pred_x0):
    del x_t
    if pcfg.sample_t_max >= int(np.max(sched.timestep_map)):  # every step guided: no branch to compile
      return guided(t_index, eps, pred_x0)
    # Outside the window the estimator's forward and backward are skipped (lax.cond), not multiplied by 0.
    return jax.lax.cond(t_model[t_index] <= pcfg.sample_t_max, guided, lambda _, e, __: e, t_index, eps, pred_x0)

  return correction
