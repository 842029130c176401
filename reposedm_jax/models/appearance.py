"""PIDM's source-image ("texture") encoder and the input-block plan it shares with the U-Net.

PIDM's `BeatGANsEncoder` is the encoder half of the U-Net without attention and
without a middle block: conv3x3 3 -> C0, then per level `num_res_blocks`
ResBlocks and a down-ResBlock after every level but the last. Its ResBlocks get
no time embedding (emb=None: no scale/shift) but keep dropout. It returns every
block's output, one feature map per input block; the U-Net's cross-attention
layers read them by block index.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class InputBlockSpec:
  """One entry of the encoder-half plan (shared by the U-Net and the source encoder).

  Attributes:
    index: Input-block index k (0 is the stem conv), as in PIDM's `input_blocks.k`.
    level: Resolution level; the map is downsampled by ds = 2**level.
    out_channels: Channels of the block's output.
    kind: 'conv' (stem), 'res' (ResBlock) or 'down' (down-ResBlock ending a level).
    last_in_level: True for the last 'res' block of its level (PIDM attaches
      cross-attention there at attention levels).
  """
  index: int
  level: int
  out_channels: int
  kind: str
  last_in_level: bool = False

  @property
  def ds(self) -> int:
    return 2**self.level


def input_block_plan(
    model_channels: int, channel_mult: Sequence[int], num_res_blocks: int) -> list[InputBlockSpec]:
  """The 1 + L * num_res_blocks + (L - 1) input blocks of PIDM's encoder half.

  For PIDM (128, (1, 1, 2, 2, 4, 4), 2) this gives 18 blocks: the stem at 256 px,
  then (res, res, down) per level with the down block belonging to the next
  (half-resolution) level, as in PIDM's `input_block_chans` bookkeeping.
  """
  if num_res_blocks < 1:
    raise ValueError(f'num_res_blocks must be >= 1, got {num_res_blocks}.')
  plan = [InputBlockSpec(0, 0, channel_mult[0] * model_channels, 'conv')]
  for level, mult in enumerate(channel_mult):
    for i in range(num_res_blocks):
      plan.append(InputBlockSpec(
          len(plan), level, mult * model_channels, 'res', last_in_level=i == num_res_blocks - 1))
    if level != len(channel_mult) - 1:
      plan.append(InputBlockSpec(len(plan), level + 1, mult * model_channels, 'down'))
  return plan


class SourceEncoder(nn.Module):
  """PIDM's `BeatGANsEncoder`: the appearance encoder of the source image.

  Parameter names mirror PIDM's `encoder.input_blocks.{k}.0.*` as
  `input_blocks_{k}_0/*`. PIDM's `encoder.time_embed` and the encoder ResBlocks'
  `emb_layers` / `cond_emb_layers` are never used there and do not exist here.

  Attributes:
    model_channels: Base width C0.
    channel_mult: Per-level width multipliers.
    num_res_blocks: ResBlocks per level.
    dropout: ResBlock dropout (PIDM keeps it active in the encoder when training).
    norm_groups: GroupNorm groups.
    dtype: Compute dtype.
  """
  model_channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4)
  num_res_blocks: int = 2
  dropout: float = 0.1
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, img_bhwc: jax.Array, train: bool) -> list[jax.Array]:
    """Encodes the source image.

    Args:
      img_bhwc: [B, H, W, 3] source image in [-1, 1]; H and W must be divisible
        by 2**(len(channel_mult) - 1) (PIDMUNet.encode pads to guarantee it).
      train: Enables dropout (rng stream 'dropout').

    Returns:
      One feature map per input block k: [B, H / 2**level_k, W / 2**level_k, C_k].
    """
    plan = input_block_plan(self.model_channels, self.channel_mult, self.num_res_blocks)
    h = img_bhwc.astype(self.dtype)
    feats = []
    for spec in plan:
      name = f'input_blocks_{spec.index}_0'
      if spec.kind == 'conv':
        h = layers.conv3x3(spec.out_channels, name, self.dtype)(h)
      else:
        h = layers.ResBlock(
            spec.out_channels, dropout=self.dropout, norm_groups=self.norm_groups,
            down=spec.kind == 'down', dtype=self.dtype, name=name)(h, None, train)
      feats.append(h)
    return feats
