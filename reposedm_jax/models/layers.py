"""Building blocks of PIDM's network (BeatGANs U-Net) as pure Flax linen modules.

Everything is channels-last ([B, H, W, C]). Submodule names follow PIDM's PyTorch
attribute paths with '.' replaced by '_' (`in_layers.2` -> `in_layers_2`), so a
PIDM state-dict key maps onto the Flax parameter tree by one mechanical rule
(see `reposedm_jax/convert/pidm.py`).

Precision: parameters are float32; convolutions, dense layers and attention run in
`dtype` (float32 or bfloat16); GroupNorm statistics and the attention softmax are
always computed in float32, as PIDM's `GroupNorm32` and legacy QKV attention do.

Memory: `remat(cls, policy)` wraps a block class in `nn.remat` (jax.checkpoint) with one of
REMAT_POLICIES; parameter paths are unchanged, so checkpoints load either way.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# 'none': keep every activation; 'full': keep only block inputs, recompute the rest in the backward
# pass; 'dots_saveable': keep conv/matmul outputs, recompute the cheap elementwise ops (norms, SiLU).
REMAT_POLICIES = {'none': None, 'full': jax.checkpoint_policies.nothing_saveable,
                  'dots_saveable': jax.checkpoint_policies.dots_saveable}
ATTENTION_IMPLS = ('dot_product', 'einsum')


def remat(module_cls, policy: str, static_argnums=()):
  """`module_cls` itself for policy 'none', else its `nn.remat` version with that saving policy.

  static_argnums count `self` as 0 (flax convention), e.g. (3,) for ResBlock's `train`.
  """
  if policy not in REMAT_POLICIES:
    raise ValueError(f'model.remat={policy!r} must be one of {tuple(REMAT_POLICIES)}')
  if policy == 'none':
    return module_cls
  return nn.remat(module_cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)

# PyTorch's default Conv/Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
# written as a variance-scaling rule. Used so that training from scratch starts
# from the same weight distribution as PIDM; biases start at zero (flax default)
# instead of torch's uniform, which does not matter in practice.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
zeros_init = nn.initializers.zeros


def conv3x3(features: int, name: str, dtype: Dtype, zero: bool = False) -> nn.Conv:
  """3x3 convolution, stride 1, padding 1 (PyTorch `padding=1`)."""
  return nn.Conv(
      features, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
      kernel_init=zeros_init if zero else torch_default_init, name=name)


def dense(features: int, name: str, dtype: Dtype, zero: bool = False) -> nn.Dense:
  """Linear layer; also stands in for PIDM's 1x1 `conv1d` on flattened tokens."""
  return nn.Dense(
      features, dtype=dtype, kernel_init=zeros_init if zero else torch_default_init,
      name=name)


class GroupNorm32(nn.Module):
  """GroupNorm computed in float32 and cast back to the input dtype.

  Matches `torch.nn.GroupNorm(min(num_groups, C), C, eps=1e-5)` run on `x.float()`.
  Written out (instead of wrapping `nn.GroupNorm`) so its parameters sit directly
  at `<name>/{scale, bias}`, mirroring PIDM's `<name>.{weight, bias}`.

  Attributes:
    num_groups: Requested group count; capped at C like PIDM's `min(32, C)`.
    epsilon: Variance epsilon (PIDM / PyTorch: 1e-5; flax's default is 1e-6).
  """
  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    groups = min(self.num_groups, c)
    if c % groups:
      raise ValueError(f'GroupNorm: {groups} groups do not divide {c} channels.')
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)
    grouped = x32.reshape(x.shape[:-1] + (groups, c // groups))
    # Statistics over all spatial positions and the channels of each group.
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = grouped.mean(axis=axes, keepdims=True)
    var = jnp.square(grouped - mean).mean(axis=axes, keepdims=True)
    normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (normed * scale + bias).astype(x.dtype)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal timestep embedding in PIDM's [cos | sin] order.

  Args:
    t: [B] integer or fractional timesteps (PIDM feeds raw integers 0..999).
    dim: Embedding width (PIDM: model_channels = 128).
    max_period: Lowest frequency is 1 / max_period.

  Returns:
    [B, dim] float32 embedding; freqs_k = exp(-ln(max_period) * k / (dim // 2)).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def upsample_nearest2(x_bhwc: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling (`F.interpolate(scale_factor=2, mode='nearest')`)."""
  return jnp.repeat(jnp.repeat(x_bhwc, 2, axis=1), 2, axis=2)


def avgpool2(x_bhwc: jax.Array) -> jax.Array:
  """2x2 average pool, stride 2 (`nn.AvgPool2d(2)`; odd trailing rows are dropped)."""
  return nn.avg_pool(x_bhwc, (2, 2), strides=(2, 2), padding='VALID')


class ResBlock(nn.Module):
  """PIDM's ResBlock (BeatGANs `ResBlock` with `use_zero_module=True`).

  in_layers: GN, SiLU, [avg-pool 2 | nearest-up 2], conv3x3 (the skip path is
  pooled/upsampled the same way). emb_layers: SiLU, Dense(2 * C_out) giving
  (scale, shift), scale first. out_layers: GN, h * (1 + scale) + shift, SiLU,
  Dropout, zero-init conv3x3. Skip: 1x1 conv when the channel count changes.

  With `emb=None` (the source encoder) there is no emb_layers and no modulation,
  exactly like PIDM where `emb_out is None` skips the scale/shift. PIDM's
  `cond_emb_layers` are never used (TimestepEmbedSequential passes cond=None) and
  are not created here.

  Attributes:
    out_channels: C_out.
    dropout: Dropout rate in out_layers (active only when `train`).
    norm_groups: GroupNorm groups.
    up: Nearest x2 upsampling inside the block.
    down: 2x2 average pooling inside the block.
    dtype: Compute dtype of convs and dense layers.
  """
  out_channels: int
  dropout: float = 0.0
  norm_groups: int = 32
  up: bool = False
  down: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array, emb_bd: Optional[jax.Array], train: bool) -> jax.Array:
    """Applies the block.

    Args:
      x_bhwc: [B, H, W, C_in] input (for decoder blocks: [h | skip] concatenated).
      emb_bd: [B, D] time embedding, or None for no scale/shift (source encoder).
      train: Python bool (static); enables dropout (rng stream 'dropout').

    Returns:
      [B, H', W', C_out] with (H', W') = (2H, 2W) if up, (H/2, W/2) if down.
    """
    if self.up and self.down:
      raise ValueError('ResBlock cannot be both up and down.')
    h = nn.silu(GroupNorm32(self.norm_groups, name='in_layers_0')(x_bhwc))
    if self.up:
      h, x_bhwc = upsample_nearest2(h), upsample_nearest2(x_bhwc)
    elif self.down:
      h, x_bhwc = avgpool2(h), avgpool2(x_bhwc)
    h = conv3x3(self.out_channels, 'in_layers_2', self.dtype)(h)

    h = GroupNorm32(self.norm_groups, name='out_layers_0')(h)
    if emb_bd is not None:
      emb_out = dense(2 * self.out_channels, 'emb_layers_1', self.dtype)(nn.silu(emb_bd))
      scale, shift = jnp.split(emb_out.astype(h.dtype)[:, None, None, :], 2, axis=-1)
      h = h * (1 + scale) + shift
    h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
    h = conv3x3(self.out_channels, 'out_layers_3', self.dtype, zero=True)(h)

    if x_bhwc.shape[-1] != self.out_channels:
      x_bhwc = nn.Conv(
          self.out_channels, (1, 1), dtype=self.dtype, kernel_init=torch_default_init,
          name='skip_connection')(x_bhwc)
    return x_bhwc + h


class CrossAttention(nn.Module):
  """PIDM's `AttentionBlock` as it runs: cross-attention only, single head.

  q = to_q(GN(x)); k, v = to_kv(cond) with cond the RAW (un-normalised) encoder
  map of the same shape as x; PIDM's legacy split puts k in the first C output
  channels of to_kv and v in the last C. The logits are scaled by C^(-1/2), the
  softmax over keys is taken in float32, and the result goes through the
  zero-init proj_out2 into a residual. PIDM's self-attention weights (qkv,
  proj_out1) are dead code there and are not created here.

  implementation='dot_product' (default) calls `jax.nn.dot_product_attention` with
  implementation=None, so the backend picks the kernel; in bfloat16 it accumulates the
  logits in float32. 'einsum' is the explicit form PIDM writes, scaling q and k by
  C^(-1/4) each before a product in `dtype`; the two agree to ~1e-6 in float32 (tested).

  Attributes:
    norm_groups: GroupNorm groups.
    dtype: Compute dtype of projections and the two attention matmuls.
    implementation: 'dot_product' | 'einsum' (ATTENTION_IMPLS).
  """
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  implementation: str = 'dot_product'

  @nn.compact
  def __call__(self, x_bhwc: jax.Array, cond_bhwc: jax.Array) -> jax.Array:
    """[B, H, W, C] x and encoder feature -> [B, H, W, C] (x + attention output)."""
    b, hgt, wid, c = x_bhwc.shape
    if cond_bhwc.shape != x_bhwc.shape:
      raise ValueError(
          'CrossAttention needs the encoder feature to match x: '
          f'{cond_bhwc.shape} vs {x_bhwc.shape}.')
    if self.implementation not in ATTENTION_IMPLS:
      raise ValueError(f'model.attention={self.implementation!r} must be one of {ATTENTION_IMPLS}')
    x_btc = x_bhwc.reshape(b, hgt * wid, c)
    q_btc = dense(c, 'to_q', self.dtype)(GroupNorm32(self.norm_groups, name='norm')(x_btc))
    kv_bs2c = dense(2 * c, 'to_kv', self.dtype)(cond_bhwc.reshape(b, hgt * wid, c))
    k_bsc, v_bsc = kv_bs2c[..., :c], kv_bs2c[..., c:]
    if self.implementation == 'dot_product':
      # One head of width C: [B, T, 1, C] layout; scale applied to the float32 logits.
      a_btc = jax.nn.dot_product_attention(
          q_btc[:, :, None], k_bsc[:, :, None], v_bsc[:, :, None], scale=1.0 / math.sqrt(c),
          implementation=None)[:, :, 0]
    else:
      scale = 1.0 / math.sqrt(math.sqrt(c))
      logits_bts = jnp.einsum('btc,bsc->bts', q_btc * scale, k_bsc * scale)
      weights_bts = jax.nn.softmax(logits_bts.astype(jnp.float32), axis=-1).astype(logits_bts.dtype)
      a_btc = jnp.einsum('bts,bsc->btc', weights_bts, v_bsc)
    h_btc = dense(c, 'proj_out2', self.dtype, zero=True)(a_btc)
    return x_bhwc + h_btc.reshape(b, hgt, wid, c).astype(x_bhwc.dtype)
