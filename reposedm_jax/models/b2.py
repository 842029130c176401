"""B2 = B1 (PIDM U-Net) + Recurrent Pose Alignment, without gradient guidance (paper Table 2).

The U-Net and its source encoder are B1's, unchanged (so PIDM weights still load under 'unet');
RPA warps the source towards the target pose first, and the encoder reads the warped source:
its feature pyramid is the F_S^N that the U-Net's cross-attention consumes.
"""

from typing import Sequence

import flax.linen as nn
import jax

from reposedm_jax.models.rpa import RPA
from reposedm_jax.models.unet import PIDMUNet


class B2Model(nn.Module):
  """Same call surface as PIDMUNet: __call__, encode_condition, denoise.

  The warped source of the last call is sown into the 'intermediates' collection as 'warped'
  (the training step reads it for the auxiliary alignment loss).
  """
  unet: PIDMUNet
  rpa: RPA

  def encode_condition(self, src_img_bhwc: jax.Array, pose_bhwc: jax.Array, train: bool) -> list[jax.Array]:
    warped, _, _ = self.rpa(src_img_bhwc, pose_bhwc)
    self.sow('intermediates', 'warped', warped)
    return self.unet.encode(warped, train)

  def denoise(self, x_t_bhwc, t_b, pose_bhwc, src_feats: Sequence[jax.Array], train: bool) -> jax.Array:
    return self.unet.denoise(x_t_bhwc, t_b, pose_bhwc, src_feats, train)

  def alignment_strip(self, src_img_bhwc: jax.Array, pose_bhwc: jax.Array) -> jax.Array:
    """[N+1, B, H, W, 3]: the source warped by F^0 .. F^N."""
    return self.rpa(src_img_bhwc, pose_bhwc)[2]

  def __call__(self, x_t_bhwc, t_b, pose_bhwc, src_img_bhwc, train: bool) -> jax.Array:
    return self.denoise(x_t_bhwc, t_b, pose_bhwc, self.encode_condition(src_img_bhwc, pose_bhwc, train), train)
