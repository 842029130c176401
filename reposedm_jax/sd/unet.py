"""Stable Diffusion 2.x's U-Net (diffusers' `UNet2DConditionModel`) in Flax, for RePoseSD (paper §4.4).

The SD block pattern: CrossAttnDownBlock2D for every level but the last (DownBlock2D), a UNetMidBlock2DCrossAttn,
UpBlock2D first then CrossAttnUpBlock2D. Parameter names are diffusers' with numbered parts joined by '_'
(`down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight` ->
down_blocks_0/attentions_1/transformer_blocks_0/attn2/to_k/kernel), so a converter renames and re-lays out only.
Channel-last (NHWC). Details that matter for parity:
  - timestep embedding: sinusoids with flip_sin_to_cos=True, freq_shift 0, then linear_1 -> SiLU -> linear_2;
  - ResnetBlock2D: GroupNorm(eps 1e-5) -> SiLU -> conv -> + time_emb_proj(SiLU(temb)) -> GroupNorm -> SiLU -> conv;
  - Transformer2DModel with use_linear_projection (SD 2.x): GroupNorm(eps 1e-6) -> proj_in (Linear) -> blocks ->
    proj_out (Linear) + residual; BasicTransformerBlock: LayerNorm -> self-attn, LayerNorm -> cross-attn on the
    text context, LayerNorm -> GEGLU feed-forward (exact GELU), each residual;
  - `attention_head_dim` is, as in diffusers' SD 2.x configs, the number of heads per level (5, 10, 20, 20).
Softmax and norms in float32 (SD-2.1-768 sets upcast_attention); `dtype` is the compute dtype of convs/matmuls;
`remat` wraps every ResNet and transformer block in nn.remat (parameter paths unchanged).
"""

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  block_out_channels: Sequence[int] = (320, 640, 1280, 1280)  # SD 2.1
  layers_per_block: int = 2
  attention_head_dim: Sequence[int] = (5, 10, 20, 20)  # heads per level (diffusers' SD 2.x naming)
  cross_attention_dim: int = 1024
  in_channels: int = 4
  out_channels: int = 4
  norm_groups: int = 32
  dtype: str = 'float32'
  remat: str = 'none'  # models.layers.REMAT_POLICIES: recompute each ResNet / transformer block in the backward


TINY = UNetConfig(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4), cross_attention_dim=32,
                  norm_groups=8)


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """diffusers' get_timestep_embedding with flip_sin_to_cos=True, downscale_freq_shift=0: [cos, sin]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResnetBlock2D(nn.Module):
  out: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb):
    h = nn.silu(nn.GroupNorm(self.groups, epsilon=1e-5, name='norm1')(x))
    h = nn.Conv(self.out, (3, 3), padding=1, dtype=self.dtype, name='conv1')(h)
    h = h + nn.Dense(self.out, dtype=self.dtype, name='time_emb_proj')(nn.silu(temb))[:, None, None, :]
    h = nn.silu(nn.GroupNorm(self.groups, epsilon=1e-5, name='norm2')(h))
    h = nn.Conv(self.out, (3, 3), padding=1, dtype=self.dtype, name='conv2')(h)
    if x.shape[-1] != self.out:
      x = nn.Conv(self.out, (1, 1), dtype=self.dtype, name='conv_shortcut')(x)
    return x + h


class Attention(nn.Module):
  """diffusers' Attention: to_q / to_k / to_v without bias, to_out.0 with; `context` None = self-attention."""
  heads: int
  dim_head: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    context = x if context is None else context
    inner = self.heads * self.dim_head
    q = nn.Dense(inner, use_bias=False, dtype=self.dtype, name='to_q')(x)
    k = nn.Dense(inner, use_bias=False, dtype=self.dtype, name='to_k')(context)
    v = nn.Dense(inner, use_bias=False, dtype=self.dtype, name='to_v')(context)
    b, n, _ = q.shape
    split = lambda a: a.reshape(a.shape[0], a.shape[1], self.heads, self.dim_head)  # noqa: E731
    logits = jnp.einsum('bqhd,bkhd->bhqk', split(q), split(k)).astype(jnp.float32) / math.sqrt(self.dim_head)
    out = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1).astype(v.dtype), split(v))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name='to_out_0')(out.reshape(b, n, inner))


class FeedForward(nn.Module):
  dim: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.net_0 = GEGLU(4 * self.dim, self.dtype)
    self.net_2 = nn.Dense(self.dim, dtype=self.dtype)

  def __call__(self, x):
    return self.net_2(self.net_0(x))


class GEGLU(nn.Module):
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h, gate = jnp.split(nn.Dense(2 * self.hidden, dtype=self.dtype, name='proj')(x), 2, axis=-1)
    return h * jax.nn.gelu(gate, approximate=False)


class BasicTransformerBlock(nn.Module):
  heads: int
  dim_head: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    dim = x.shape[-1]
    x = x + Attention(self.heads, self.dim_head, self.dtype, name='attn1')(nn.LayerNorm(1e-5, name='norm1')(x))
    x = x + Attention(self.heads, self.dim_head, self.dtype, name='attn2')(nn.LayerNorm(1e-5, name='norm2')(x),
                                                                           context)
    return x + FeedForward(dim, self.dtype, name='ff')(nn.LayerNorm(1e-5, name='norm3')(x))


class Transformer2DModel(nn.Module):
  heads: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    b, h, w, c = x.shape
    t = nn.GroupNorm(self.groups, epsilon=1e-6, name='norm')(x).reshape(b, h * w, c)
    t = nn.Dense(c, dtype=self.dtype, name='proj_in')(t)
    t = BasicTransformerBlock(self.heads, c // self.heads, self.dtype, name='transformer_blocks_0')(t, context)
    t = nn.Dense(c, dtype=self.dtype, name='proj_out')(t)
    return x + t.reshape(b, h, w, c)


class TimestepEmbedding(nn.Module):
  dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.dim, dtype=self.dtype, name='linear_2')(nn.silu(nn.Dense(self.dim, dtype=self.dtype,
                                                                                  name='linear_1')(x)))


class Resample(nn.Module):
  """downsamplers.0 (3x3 conv, stride 2) or upsamplers.0 (nearest x2, then 3x3 conv): a module named 'conv' inside."""
  out: int
  up: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.up:
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), 'nearest')
    return nn.Conv(self.out, (3, 3), strides=(1, 1) if self.up else (2, 2), padding=1, dtype=self.dtype,
                   name='conv')(x)


class Block(nn.Module):
  """A down / up block: `n` (ResNet[, Transformer]) pairs, then an optional resampler. Up blocks pop skips."""
  out: int
  n: int
  heads: int  # 0 = no attention (DownBlock2D / UpBlock2D)
  groups: int
  resample: str  # '' | 'down' | 'up'
  dtype: jnp.dtype = jnp.float32
  remat: str = 'none'

  @nn.compact
  def __call__(self, h, temb, context, skips=None):
    outs = []
    res_cls, attn_cls = layers.remat(ResnetBlock2D, self.remat), layers.remat(Transformer2DModel, self.remat)
    for j in range(self.n):
      if skips is not None:
        h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = res_cls(self.out, self.groups, self.dtype, name=f'resnets_{j}')(h, temb)
      if self.heads:
        h = attn_cls(self.heads, self.groups, self.dtype, name=f'attentions_{j}')(h, context)
      outs.append(h)
    if self.resample:
      h = Resample(self.out, self.resample == 'up', self.dtype,
                   name='upsamplers_0' if self.resample == 'up' else 'downsamplers_0')(h)
      outs.append(h)
    return h, outs


class MidBlock(nn.Module):
  out: int
  heads: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, temb, context):
    h = ResnetBlock2D(self.out, self.groups, self.dtype, name='resnets_0')(h, temb)
    h = Transformer2DModel(self.heads, self.groups, self.dtype, name='attentions_0')(h, context)
    return ResnetBlock2D(self.out, self.groups, self.dtype, name='resnets_1')(h, temb)


class UNet2DConditionModel(nn.Module):
  """(noisy latents [B, h, w, in], timesteps [B], text context [B, L, cross_dim]) -> [B, h, w, out] float32."""
  cfg: UNetConfig = UNetConfig()

  @nn.compact
  def __call__(self, x, t, context):
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    chans, levels, groups = tuple(cfg.block_out_channels), len(cfg.block_out_channels), cfg.norm_groups
    heads = tuple(cfg.attention_head_dim)
    temb = TimestepEmbedding(4 * chans[0], dt, name='time_embedding')(timestep_embedding(t, chans[0]))
    context = context.astype(dt)
    h = nn.Conv(chans[0], (3, 3), padding=1, dtype=dt, name='conv_in')(x.astype(dt))
    skips = [h]
    for i, out in enumerate(chans):
      last = i == levels - 1
      h, outs = Block(out, cfg.layers_per_block, 0 if last else heads[i], groups, '' if last else 'down', dt,
                      cfg.remat, name=f'down_blocks_{i}')(h, temb, context)
      skips += outs
    h = MidBlock(chans[-1], heads[-1], groups, dt, name='mid_block')(h, temb, context)
    for i, out in enumerate(reversed(chans)):
      level = levels - 1 - i
      h, _ = Block(out, cfg.layers_per_block + 1, 0 if i == 0 else heads[level], groups,
                   'up' if i < levels - 1 else '', dt, cfg.remat, name=f'up_blocks_{i}')(h, temb, context, skips)
    h = nn.silu(nn.GroupNorm(groups, epsilon=1e-5, name='conv_norm_out')(h))
    return nn.Conv(cfg.out_channels, (3, 3), padding=1, dtype=dt, name='conv_out')(h).astype(jnp.float32)
