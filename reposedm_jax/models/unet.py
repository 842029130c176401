"""PIDMUNet: PIDM's denoiser (BeatGANs U-Net + source encoder), baseline B1.

Structure (PIDM paper config: C0 = 128, mult (1, 1, 2, 2, 4, 4), 2 ResBlocks per
level, cross-attention at downsample factors 8 / 16 / 32):

  input  [x_t (3) | pose (20)] -> conv3x3 -> input blocks (ResBlocks, down-ResBlocks;
         cross-attention after the LAST ResBlock of each attention level, reading the
         encoder feature with the same block index)
  middle ResBlock, cross-attention (last encoder feature), ResBlock
  output per level (deepest first) num_res_blocks + 1 ResBlocks on [h | skip];
         cross-attention after block i = num_res_blocks - 1 of an attention level,
         reading encoder feature n_in - 1 - k for output block k (for PIDM: blocks
         1, 4, 7 read features 16, 13, 10); an up-ResBlock ends every level but 0
  out    GN, SiLU, zero-init conv3x3 -> 2 * image_channels (epsilon | variance interp.)

The two attention rules are PIDM's (`block_id == num_res_blocks - 1` in both
halves of `BeatGANsUNetModel`); the encoder-feature index of output block k is
PIDM's `cond[-k - 1]` and always equals the index of the skip it concatenates.

Parameter naming: PIDM key `a.i.j.b.n.weight` lives at Flax path `a_i_j/b_n/<leaf>`:
numeric key parts are appended to the preceding name with '_', '.' becomes a
tree level, and the leaf is `kernel` (conv / linear weight), `scale` (GroupNorm
weight) or `bias`. E.g. `input_blocks.11.1.to_kv.weight` -> `input_blocks_11_1/
to_kv/kernel`, `time_embed.time_embed.0.bias` -> `time_embed/time_embed_0/bias`,
`encoder.input_blocks.3.0.in_layers.2.weight` -> `encoder/input_blocks_3_0/
in_layers_2/kernel`. PIDM parameters that its forward pass never uses are not
created (see `reposedm_jax/convert/pidm.py`).

Resolution: the U-Net needs H and W divisible by 2**(len(channel_mult) - 1)
(32 for PIDM). 256 x 176 is not (176 = 11 * 16), so `encode` and `denoise` pad
their image inputs with zeros at the bottom / right up to the next multiple and
`denoise` crops its output back. Encoder features are therefore at the PADDED
size; attention runs over the padded maps, including the padding tokens.
"""

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models import aligned as aligned_lib
from reposedm_jax.models import appearance
from reposedm_jax.models import layers

# config.model.dtype: compute dtype of convolutions and attention (params and norms stay float32).
DTYPES = ('float32', 'bfloat16')


class TimeEmbed(nn.Module):
  """PIDM's `time_embed.time_embed`: Linear(C0, 4 C0), SiLU, Linear(4 C0, 4 C0)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, emb_bd: jax.Array) -> jax.Array:
    h = layers.dense(self.features, 'time_embed_0', self.dtype)(emb_bd)
    return layers.dense(self.features, 'time_embed_2', self.dtype)(nn.silu(h))


def _pad_to_multiple(x_bhwc: jax.Array, multiple: int) -> jax.Array:
  """Zero-pads H and W at the bottom / right up to a multiple of `multiple`."""
  pad_h = -x_bhwc.shape[1] % multiple
  pad_w = -x_bhwc.shape[2] % multiple
  if pad_h == 0 and pad_w == 0:
    return x_bhwc
  return jnp.pad(x_bhwc, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


class PIDMUNet(nn.Module):
  """PIDM's `BeatGANsAutoencModel` forward path, channels-last.

  Usage:
    model = PIDMUNet.from_config(config.model)
    variables = model.init(rngs, x_t, t, pose, src_img, train=False)
    out = model.apply(variables, x_t, t, pose, src_img, train=True,
                      rngs={'dropout': key})
    # Sampling reuses the source features across steps:
    feats = model.apply(variables, src_img, False, method=PIDMUNet.encode)
    out = model.apply(variables, x_t, t, pose, feats, False, method=PIDMUNet.denoise)

  Attributes:
    model_channels: Base width C0 (time-embedding width is 4 * C0).
    channel_mult: Per-level width multipliers; len - 1 downsamplings.
    num_res_blocks: ResBlocks per level in the encoder half (decoder: one more).
    attention_ds: Downsample factors 2**level at which cross-attention runs.
    dropout: ResBlock dropout, U-Net and source encoder (rng stream 'dropout').
    norm_groups: GroupNorm groups (capped at the channel count).
    image_channels: Channels of x_t and of the source image; the output has twice
      as many (epsilon and the learned-variance interpolation v).
    pose_channels: Channels of the pose map concatenated after x_t.
    dtype: Compute dtype ('float32' / 'bfloat16' or a jnp dtype); params are float32.
    attention: Cross-attention kernel, layers.ATTENTION_IMPLS ('dot_product' | 'einsum').
    remat: Rematerialisation of each U-Net ResBlock / attention block in the backward pass,
      a key of layers.REMAT_POLICIES ('none' | 'full' | 'dots_saveable'); the source encoder
      is not rematerialised.
  """
  model_channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4)
  num_res_blocks: int = 2
  attention_ds: Sequence[int] = (8, 16, 32)
  dropout: float = 0.1
  norm_groups: int = 32
  image_channels: int = 3
  pose_channels: int = 20
  dtype: Any = jnp.float32
  attention: str = 'dot_product'
  remat: str = 'none'

  @classmethod
  def from_config(cls, model_config: Any) -> 'PIDMUNet':
    """Builds the module from the `config.model` section of configs/base.py."""
    return cls(
        model_channels=int(model_config.model_channels),
        channel_mult=tuple(int(m) for m in model_config.channel_mult),
        num_res_blocks=int(model_config.num_res_blocks),
        attention_ds=tuple(int(d) for d in model_config.attention_ds),
        dropout=float(model_config.dropout),
        norm_groups=int(model_config.norm_groups),
        image_channels=int(model_config.image_channels),
        pose_channels=int(model_config.pose_channels),
        dtype=jnp.dtype(model_config.dtype),
        attention=str(model_config.attention),
        remat=str(model_config.remat))

  @property
  def size_multiple(self) -> int:
    """H and W are padded internally up to a multiple of this."""
    return 2**(len(self.channel_mult) - 1)

  @property
  def plan(self) -> list[appearance.InputBlockSpec]:
    return appearance.input_block_plan(self.model_channels, self.channel_mult, self.num_res_blocks)

  def setup(self):
    self.encoder = appearance.SourceEncoder(
        model_channels=self.model_channels, channel_mult=tuple(self.channel_mult),
        num_res_blocks=self.num_res_blocks, dropout=self.dropout,
        norm_groups=self.norm_groups, dtype=jnp.dtype(self.dtype))

  def encode(self, src_img_bhwc: jax.Array, train: bool) -> list[jax.Array]:
    """Source-encoder features, one per input block, at the padded resolution.

    Args:
      src_img_bhwc: [B, H, W, image_channels] source image in [-1, 1] (all zeros is
        PIDM's null condition for classifier-free guidance).
      train: Enables dropout.

    Returns:
      List of len(plan) maps [B, Hp / ds_k, Wp / ds_k, C_k], with (Hp, Wp) = (H, W)
      rounded up to a multiple of `size_multiple`.
    """
    return self.encoder(_pad_to_multiple(src_img_bhwc, self.size_multiple), train)

  def encode_condition(self, src_img_bhwc: jax.Array, pose_bhwc: jax.Array, train: bool,
                       kpts=None) -> list[jax.Array]:
    """The common model interface (B2 warps the source by the pose first); B1 ignores the pose and keypoints."""
    del pose_bhwc, kpts
    return self.encode(src_img_bhwc, train)

  @nn.compact
  def denoise(self, x_t_bhwc: jax.Array, t_b: jax.Array, pose_bhwc: jax.Array,
              src_feats: Sequence[jax.Array], train: bool, aligned: Optional[dict] = None) -> jax.Array:
    """One U-Net evaluation given precomputed source features.

    Args:
      x_t_bhwc: [B, H, W, image_channels] noisy image.
      t_b: [B] timesteps (integers 0..T-1, embedded unscaled as in PIDM).
      pose_bhwc: [B, H, W, pose_channels] target pose map.
      src_feats: Output of `encode` for an image of the same (H, W).
      train: Enables dropout.
      aligned: B2 / RePoseDM only (models/aligned.py): {'keep': [B], 'image': [B, H, W, 4] warped source
        and validity (path 'input'), 'tokens': `encode` of the warped source (path 'tokens')}. Each path
        adds zero-initialised parameters, so with None or fresh parameters this is B1's function.

    Returns:
      [B, H, W, 2 * image_channels] float32: predicted epsilon, then v.
    """
    dtype = jnp.dtype(self.dtype)
    height, width = x_t_bhwc.shape[1:3]
    plan = self.plan
    if len(src_feats) != len(plan):
      raise ValueError(f'Expected {len(plan)} source features, got {len(src_feats)}.')
    h = jnp.concatenate([x_t_bhwc, pose_bhwc.astype(x_t_bhwc.dtype)], axis=-1)
    h = _pad_to_multiple(h, self.size_multiple).astype(dtype)
    if src_feats[0].shape[1:3] != h.shape[1:3]:
      raise ValueError(
          f'Source features are {src_feats[0].shape[1:3]}, the padded input is {h.shape[1:3]}; '
          'encode a source image of the same size as x_t.')

    emb = layers.timestep_embedding(t_b, self.model_channels)
    emb = TimeEmbed(4 * self.model_channels, dtype, name='time_embed')(emb)
    # Same parameter paths with or without remat (`name=` is explicit); `train` (arg 3) is static.
    resblock_cls = layers.remat(layers.ResBlock, self.remat, static_argnums=(3,))
    attention_cls = layers.remat(layers.CrossAttention, self.remat)
    resblock = lambda c, name, **kw: resblock_cls(  # noqa: E731
        c, dropout=self.dropout, norm_groups=self.norm_groups, dtype=dtype, name=name, **kw)
    attention = lambda name: attention_cls(self.norm_groups, dtype, self.attention, name=name)  # noqa: E731

    def aligned_attention(name, h, feat_index):
      """After each PIDM cross-attention: attention to the aligned tokens of the same feature index."""
      if aligned is None or 'tokens' not in aligned:
        return h
      return aligned_lib.AlignedAttention(self.norm_groups, dtype, name=name)(
          h, aligned['tokens'][feat_index], aligned['keep'])

    # Encoder half; `skips` are the lateral inputs of the output blocks.
    skips = []
    for spec in plan:
      name = f'input_blocks_{spec.index}'
      if spec.kind == 'conv':
        h = layers.conv3x3(spec.out_channels, f'{name}_0', dtype)(h)
        if aligned is not None and 'image' in aligned:
          img = _pad_to_multiple(aligned['image'], self.size_multiple)
          h = aligned_lib.AlignedInput(spec.out_channels, dtype, name='aligned_input')(h, img, aligned['keep'])
      else:
        h = resblock(spec.out_channels, f'{name}_0', down=spec.kind == 'down')(h, emb, train)
        if spec.kind == 'res' and spec.last_in_level and spec.ds in self.attention_ds:
          h = attention(f'{name}_1')(h, src_feats[spec.index])
          h = aligned_attention(f'{name}_aligned', h, spec.index)
      skips.append(h)

    c_mid = h.shape[-1]
    h = resblock(c_mid, 'middle_block_0')(h, emb, train)
    h = attention('middle_block_1')(h, src_feats[-1])
    h = aligned_attention('middle_block_aligned', h, len(plan) - 1)
    h = resblock(c_mid, 'middle_block_2')(h, emb, train)

    # Decoder half, deepest level first; output block k pairs with input block n_in - 1 - k.
    k = 0
    for level in reversed(range(len(self.channel_mult))):
      c_out = self.channel_mult[level] * self.model_channels
      for i in range(self.num_res_blocks + 1):
        name = f'output_blocks_{k}'
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = resblock(c_out, f'{name}_0')(h, emb, train)
        sub = 1
        if i == self.num_res_blocks - 1 and 2**level in self.attention_ds:
          h = attention(f'{name}_{sub}')(h, src_feats[len(plan) - 1 - k])
          h = aligned_attention(f'{name}_aligned', h, len(plan) - 1 - k)
          sub += 1
        if level and i == self.num_res_blocks:
          h = resblock(c_out, f'{name}_{sub}', up=True)(h, emb, train)
        k += 1

    h = nn.silu(layers.GroupNorm32(self.norm_groups, name='out_0')(h))
    out = layers.conv3x3(2 * self.image_channels, 'out_2', dtype, zero=True)(h)
    return out[:, :height, :width].astype(jnp.float32)

  def __call__(self, x_t_bhwc: jax.Array, t_b: jax.Array, pose_bhwc: jax.Array,
               src_img_bhwc: jax.Array, train: bool, kpts=None) -> jax.Array:
    """denoise(x_t, t, pose, encode(src_img)); see `denoise` for shapes. `kpts` (B2's) is ignored."""
    del kpts
    return self.denoise(x_t_bhwc, t_b, pose_bhwc, self.encode(src_img_bhwc, train), train)
