"""How RPA is trained (variant b2 / full): its auxiliary loss, and the pre-train-then-freeze schedule.

- Auxiliary loss (paper Fig. 8 shows the decoded F_S^N looking like the target): L1 between the
  RPA-warped source and the target image, over rows whose condition was kept, optionally restricted to
  the target person (`rpa.aux_region='person'`: capsules around the target skeleton's limbs, where
  the source's appearance should land). With `rpa.aux_in_frame` a pixel the backward warp sampled
  outside the source frame (where it can only output zeros) costs a fixed OUT_OF_FRAME_L1 rather than
  its error against the target, and still counts in the mean: leaving the frame is never free.
- Phases (`rpa.pretrain_steps` K > 0): for steps < K only RPA trains, on the auxiliary loss alone (a
  cheap step without the U-Net: `pretrain_step`); the U-Net's optimizer does not see those steps at
  all (its Adam moments, step count and warm-up start at step K), so the U-Net starts leaning on the
  aligned source once it means something. From step K the RPA learning rate is multiplied by
  `rpa.lr_mult_after_pretrain` (0 = frozen). With K = 0 the optimizer is the plain one.
"""

import jax
import jax.numpy as jnp
import optax

from reposedm_jax.data.pose import MARKET_MASK_LIMBS

AUX_REGIONS = ('all', 'person')
# L1 (per channel, images in [-1, 1]) charged for a target pixel the warp sampled outside the source frame:
# about the error of a grey guess, so sampling out of the frame is never cheaper than a reasonable match.
OUT_OF_FRAME_L1 = 1.0


def person_mask(kpts_bk2: jax.Array, hw, radius: float) -> jax.Array:
  """[B, H, W, 1] {0, 1}: union of capsules of `radius` px around the limbs (and discs at the joints).

  The limbs are PATN's body-mask pairs (data/pose.MARKET_MASK_LIMBS: limbs, head, torso diagonals);
  keypoints at -1 are missing and drop their limbs.
  """
  h, w = hw
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  p = jnp.stack([xs, ys], -1)[None, :, :, None]  # [1, H, W, 1, 2]
  present = jnp.all(kpts_bk2 != -1, axis=-1)  # [B, K]
  a_idx = jnp.asarray([a for a, _ in MARKET_MASK_LIMBS])
  b_idx = jnp.asarray([b for _, b in MARKET_MASK_LIMBS])
  a, b = kpts_bk2[:, a_idx][:, None, None], kpts_bk2[:, b_idx][:, None, None]  # [B, 1, 1, L, 2]
  ab = b - a
  u = jnp.clip(jnp.sum((p - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-6), 0.0, 1.0)
  dist = jnp.linalg.norm(p - (a + u[..., None] * ab), axis=-1)  # [B, H, W, L]
  limb_ok = (present[:, a_idx] & present[:, b_idx])[:, None, None]
  joint_d = jnp.linalg.norm(p - kpts_bk2[:, None, None], axis=-1)  # [B, H, W, K]
  inside = jnp.any((dist <= radius) & limb_ok, -1) | jnp.any((joint_d <= radius) & present[:, None, None], -1)
  return inside[..., None].astype(jnp.float32)


def region_weight(rcfg, tgt_kpts: jax.Array, bhw) -> jax.Array:
  """[B, H, W, 1] where the auxiliary loss counts: every pixel, or the target person (`rpa.aux_region`).

  The loss and `out_of_frame` build it from the same inputs inside one jitted step, where XLA computes it once."""
  b, h, w = bhw
  if rcfg.aux_region == 'all':
    return jnp.ones((b, h, w, 1), jnp.float32)
  if rcfg.aux_region == 'person':
    return person_mask(tgt_kpts, (h, w), rcfg.aux_person_radius * h)
  raise ValueError(f'rpa.aux_region must be one of {AUX_REGIONS}, got {rcfg.aux_region!r}')


def aux_loss(rcfg, warped: jax.Array, valid: jax.Array, target: jax.Array, tgt_kpts: jax.Array,
             keep: jax.Array) -> jax.Array:
  """Scalar masked L1(warped, target) over kept rows (module docstring); images [B, H, W, 3]."""
  weight = region_weight(rcfg, tgt_kpts, target.shape[:3])
  l1 = jnp.abs(warped.astype(jnp.float32) - target).mean(axis=-1, keepdims=True)
  if rcfg.aux_in_frame:
    # Out of frame the warp outputs zeros; those pixels cost a fixed OUT_OF_FRAME_L1 instead of their
    # error against the target, but they stay in the denominator: dropping them from it (the first form)
    # made "warp everything out of the frame" a zero-loss solution, and RPA found it within 100 steps of
    # joint training (WORKSPACE.md, session 8).
    inside = (valid.astype(jnp.float32) > 0.5).astype(jnp.float32)
    l1 = inside * l1 + (1.0 - inside) * OUT_OF_FRAME_L1
  per_row = jnp.sum(weight * l1, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(weight, axis=(1, 2, 3)), 1.0)
  keep_f = keep.astype(jnp.float32)
  return jnp.sum(per_row * keep_f) / jnp.maximum(keep_f.sum(), 1.0)


def out_of_frame(rcfg, valid: jax.Array, tgt_kpts: jax.Array) -> jax.Array:
  """Fraction of the auxiliary loss's region (all pixels or the target person) the warp sampled outside the
  source frame. Near 1 means RPA's flow has collapsed (logged as `rpa_out_of_frame`; train.py warns)."""
  weight = region_weight(rcfg, tgt_kpts, valid.shape[:3])
  outside = (valid.astype(jnp.float32) <= 0.5).astype(jnp.float32)
  return jnp.sum(weight * outside) / jnp.maximum(jnp.sum(weight), 1.0)


def uses_phases(config) -> bool:
  return config.variant in ('b2', 'full') and config.rpa.pretrain_steps > 0


def frozen_after_pretrain(config) -> bool:
  """RPA stops training after its pre-training (`rpa.lr_mult_after_pretrain=0`): the joint step skips its backward."""
  return uses_phases(config) and float(config.rpa.lr_mult_after_pretrain) == 0.0


def _frozen_until(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
  """`inner` that ignores (zero update, state untouched) the first `start` updates."""
  def init(params):
    return {'count': jnp.zeros((), jnp.int32), 'inner': inner.init(params)}

  def update(grads, state, params=None):
    def skip():
      return jax.tree.map(jnp.zeros_like, grads), state['inner']

    def run():
      return inner.update(grads, state['inner'], params)

    updates, inner_state = jax.lax.cond(state['count'] < start, skip, run)
    return updates, {'count': state['count'] + 1, 'inner': inner_state}

  return optax.GradientTransformation(init, update)


def phased_optimizer(tx: optax.GradientTransformation, config) -> optax.GradientTransformation:
  """The optimizer of a b2/full run: `tx` unchanged without pre-training, else RPA / the rest apart."""
  if not uses_phases(config):
    return tx
  k, mult = int(config.rpa.pretrain_steps), float(config.rpa.lr_mult_after_pretrain)
  rpa_tx = optax.chain(tx, optax.scale_by_schedule(lambda count: jnp.where(count < k, 1.0, mult)))
  labels = lambda params: {name: ('rpa' if name == 'rpa' else 'rest') for name in params}  # noqa: E731
  return optax.multi_transform({'rpa': rpa_tx, 'rest': _frozen_until(tx, k)}, labels)


def pretrain_step(state, batch, base_rng, *, model, tx, config):
  """One RPA-only step (steps < rpa.pretrain_steps): the auxiliary loss, no U-Net, EMA as usual.

  Every row is kept (no CFG drop: the null condition means nothing to RPA alone). `batch` is in the model's
  space (train.py converts a latent-mode batch first).
  """
  del base_rng  # RPA has no stochastic layers.
  tcfg = config.train

  def loss_fn(params):
    warped, valid, _ = model.apply({'params': params}, batch['src_img'], batch['tgt_pose'],
                                   (batch['src_kpts'], batch['tgt_kpts']), method=model.align)
    keep = jnp.ones(batch['src_img'].shape[:1], jnp.float32)
    return aux_loss(config.rpa, warped, valid, batch['tgt_img'], batch['tgt_kpts'], keep), valid

  (loss, valid), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  decay = jnp.where(state['step'] < tcfg.ema_start_step, 0.0, tcfg.ema_decay)
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state['ema_params'], params)
  zero = jnp.float32(0.0)
  metrics = {'loss': config.rpa.aux_weight * loss, 'mse': zero, 'vb': zero, 'rpa_l1': loss,
             'rpa_out_of_frame': out_of_frame(config.rpa, jax.lax.stop_gradient(valid), batch['tgt_kpts']),
             'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params),
             'update_norm': optax.tree.norm(updates), 'lr': jnp.float32(tcfg.lr)}
  new_state = {**state, 'params': params, 'opt_state': opt_state, 'ema_params': ema, 'step': state['step'] + 1}
  return new_state, metrics
