"""B2 = B1 (PIDM U-Net) + Recurrent Pose Alignment (paper Table 2); RePoseDM's network is the same.

B2 ⊇ B1: PIDM's cross-attention keeps reading Enc(I_S) of the *unwarped* source exactly as in B1 (the
U-Net lives under 'unet' with PIDM's parameter names), and RPA's warped source W(I_S; F^N) reaches the
U-Net through the position-aware paths of models/aligned.py (`aligned_path`):
  'input'   [W(I_S) | in-frame mask] through zero-initialised input channels,
  'tokens'  Enc(W(I_S)) (eq. 9: the warped source re-encoded by the same encoder) as extra
            cross-attention tokens with a shared 2-D position code and a zero-initialised projection,
  'both'    both,
  'replace' the first reading: the encoder reads only W(I_S) (no B1 inclusion; kept as a switch).
With fresh RPA / aligned parameters on B1 weights, every path but 'replace' computes B1's function
exactly, so `--config.init_from` a B1 or PIDM checkpoint starts B2 at B1.

The CFG null condition is PIDM's all-zero source image; `keep` = "the source is not all zero" switches
the aligned paths off with it (sampling encodes the null branch from zeros, training zeroes the dropped
rows' sources), so the null branch is B1's null branch.

`init_flow='keypoints'` (rpa.init_flow) pre-warps the source along the limbs from the source to the target
keypoints (models/keypoint_flow.py) and masks it to the target person before RPA refines it; every entry
point then takes `kpts=(src_kpts, tgt_kpts)`, [B, 18, 2] each in pixels of the images.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models import aligned as aligned_lib
from reposedm_jax.models import keypoint_flow, warp
from reposedm_jax.models.rpa import RPA, image_flow
from reposedm_jax.models.unet import PIDMUNet

INIT_FLOWS = ('none', 'keypoints')


def has_source(src_img_bhwc: jax.Array) -> jax.Array:
  """[B] float: 1 where the source is a real image, 0 for the null condition (all zeros)."""
  return (jnp.max(jnp.abs(src_img_bhwc), axis=(1, 2, 3)) > 0).astype(jnp.float32)


class B2Model(nn.Module):
  """Same call surface as PIDMUNet: __call__, encode_condition, denoise.

  The condition is a dict {'src': Enc(I_S) pyramid, 'aligned': {...}} (a pytree: sampling concatenates
  the conditional and null halves leaf by leaf). The warped source of the last call is sown into
  'intermediates' as 'warped' and its in-frame mask as 'valid' (the RPA auxiliary loss reads them).
  """
  unet: PIDMUNet
  rpa: RPA
  aligned_path: str = 'both'
  # The diffusion loss's gradient reaches RPA through the aligned paths only if True (rpa.unet_grad).
  unet_grad: bool = False
  init_flow: str = 'none'
  init_flow_sigma: float = 0.016  # the limbs' blending width, a fraction of the image height
  init_flow_background: float = 0.1  # where the identity (background) map takes over, a fraction of the height

  def align(self, src_img_bhwc: jax.Array, pose_bhwc: jax.Array, kpts=None):
    """(warped [B, H, W, 3], valid [B, H, W, 1] in [0, 1], strip [N+1, B, H, W, 3])."""
    h, w = src_img_bhwc.shape[1:3]
    mask = jnp.ones(src_img_bhwc.shape[:3] + (1,), src_img_bhwc.dtype)
    if self.init_flow == 'keypoints':
      if kpts is None:
        raise ValueError('rpa.init_flow=keypoints needs kpts=(src_kpts, tgt_kpts)')
      flow0, person = keypoint_flow.limb_flow(kpts[0], kpts[1], (h, w), self.init_flow_sigma * h,
                                              self.init_flow_background * h)
      # Away from the target's limbs the pre-warp keeps the source's own pixels, which show the source
      # person where the target has background: masked, so RPA and the U-Net see only the limbs' share.
      mask = warp.warp(mask, flow0) * person.astype(mask.dtype)
      src_img_bhwc = warp.warp(src_img_bhwc, flow0) * mask
    elif self.init_flow != 'none':
      raise ValueError(f'rpa.init_flow={self.init_flow!r} must be one of {INIT_FLOWS}')
    warped, flow, strip = self.rpa(src_img_bhwc, pose_bhwc)
    # The backward warp samples outside the frame where the target has no source pixel: zero there.
    valid = warp.warp(mask, image_flow(flow, h, w))
    return warped, valid, strip

  def encode_condition(self, src_img_bhwc: jax.Array, pose_bhwc: jax.Array, train: bool, kpts=None) -> dict:
    if self.aligned_path not in aligned_lib.ALIGNED_PATHS:
      raise ValueError(f'rpa.aligned_path={self.aligned_path!r} must be one of {aligned_lib.ALIGNED_PATHS}')
    warped, valid, _ = self.align(src_img_bhwc, pose_bhwc, kpts)
    self.sow('intermediates', 'warped', warped)  # the auxiliary loss's view: always differentiable
    self.sow('intermediates', 'valid', valid)
    if not self.unet_grad:
      # RPA learns alignment from the auxiliary loss alone. With the diffusion gradient flowing in, the
      # cheapest way to lower an early U-Net's loss is to blank its (still unhelpful) aligned input, and
      # RPA did: it warped every pixel out of the frame within ~50 joint steps, where zero padding has
      # no gradient to bring it back (WORKSPACE.md, session 8).
      warped, valid = jax.lax.stop_gradient(warped), jax.lax.stop_gradient(valid)
    if self.aligned_path == 'replace':
      self.sow('intermediates', 'prior', warped)
      return {'src': self.unet.encode(warped, train), 'prior': warped}
    keep = has_source(src_img_bhwc)
    # diffusion.prediction='v_aligned' centres the network's x0 on this image (gaussian.eps_output); zero for
    # CFG's null rows, so the null branch keeps a zero prior.
    prior = warped * keep[:, None, None, None]
    self.sow('intermediates', 'prior', prior)
    extra: dict[str, Any] = {'keep': keep, 'prior': prior}
    if aligned_lib.uses_input(self.aligned_path):
      extra['image'] = jnp.concatenate([warped, valid], axis=-1) * keep[:, None, None, None]
    if aligned_lib.uses_tokens(self.aligned_path):
      extra['tokens'] = self.unet.encode(warped, train)
    return {'src': self.unet.encode(src_img_bhwc, train), 'aligned': extra}

  def denoise(self, x_t_bhwc, t_b, pose_bhwc, cond: dict, train: bool) -> jax.Array:
    return self.unet.denoise(x_t_bhwc, t_b, pose_bhwc, cond['src'], train, aligned=cond.get('aligned'))

  def alignment_strip(self, src_img_bhwc: jax.Array, pose_bhwc: jax.Array, kpts=None) -> jax.Array:
    """[N+1, B, H, W, 3]: the source warped by F^0 .. F^N (after the keypoint pre-warp, if any)."""
    return self.align(src_img_bhwc, pose_bhwc, kpts)[2]

  def __call__(self, x_t_bhwc, t_b, pose_bhwc, src_img_bhwc, train: bool, kpts=None) -> jax.Array:
    cond = self.encode_condition(src_img_bhwc, pose_bhwc, train, kpts)
    return self.denoise(x_t_bhwc, t_b, pose_bhwc, cond, train)
