"""How B2 and RePoseDM give the U-Net the RPA-aligned source, on top of B1 (PIDM) unchanged.

PIDM's cross-attention reads Enc(I_S) without positional encoding, so it is invariant to the order
of the source tokens: an "aligned" source fed through it is worth little (and feeding it the warped
source *instead* of I_S deletes whatever the warp leaves outside the target frame). The aligned
source therefore enters through paths that can use position, each starting at zero so that a B2 /
RePoseDM network built on B1 weights computes exactly B1's function until training moves them:

- 'input' (HumanSD's trick): the warped source and its in-frame validity mask, 4 channels, through a
  zero-initialised 3x3 conv added to the U-Net's stem output. This equals widening the stem conv with
  zero input weights, but keeps PIDM's `input_blocks_0_0` parameter untouched (the PIDM converter and
  B1 checkpoints still load into it).
- 'tokens': after each PIDM cross-attention, an extra attention over the encoder features of the
  warped source, with one fixed 2-D sin-cos positional embedding added to both the queries' and the
  tokens' inputs (the two maps share a grid, so attention can prefer the token at its own position)
  and a zero-initialised output projection.

Both contributions are multiplied by `keep` [B] (0 for the CFG null condition), so the null branch
drops the aligned path with the source.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models import layers

# rpa.aligned_path values: which aligned-source paths exist ('replace' = the first reading: the
# source encoder reads only the warped source, no extra parameters).
ALIGNED_PATHS = ('input', 'tokens', 'both', 'replace')


def uses_input(path: str) -> bool:
  return path in ('input', 'both')


def uses_tokens(path: str) -> bool:
  return path in ('tokens', 'both')


def sincos_2d(height: int, width: int, dim: int) -> jax.Array:
  """[H * W, dim] fixed 2-D sin-cos embedding (half the channels for y, half for x; dim % 4 == 0 not needed)."""
  d_axis = max(dim // 2, 1)
  n_freq = max(d_axis // 2, 1)
  freqs = 1.0 / (100.0 ** (jnp.arange(n_freq, dtype=jnp.float32) / n_freq))  # 100: maps are <= ~64 wide.

  def axis(n):
    pos = jnp.arange(n, dtype=jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(pos), jnp.cos(pos)], axis=-1)[:, :d_axis]  # [n, d_axis]

  ey = jnp.broadcast_to(axis(height)[:, None], (height, width, d_axis))
  ex = jnp.broadcast_to(axis(width)[None, :], (height, width, d_axis))
  emb = jnp.concatenate([ey, ex], axis=-1).reshape(height * width, -1)
  return jnp.pad(emb, ((0, 0), (0, dim - emb.shape[-1])))


class AlignedInput(nn.Module):
  """Zero-initialised 3x3 conv of [warped source | validity] added to the stem output."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h_bhwc: jax.Array, aligned_bhwc: jax.Array, keep_b: jax.Array) -> jax.Array:
    add = layers.conv3x3(self.features, 'conv', self.dtype, zero=True)(aligned_bhwc.astype(self.dtype))
    return h_bhwc + add * keep_b[:, None, None, None].astype(add.dtype)


class AlignedAttention(nn.Module):
  """Cross-attention from U-Net features to aligned-source tokens with a shared 2-D position code.

  q = to_q(GN(x) + pos), k = to_k(GN(a) + pos), v = to_v(GN(a)); out = x + keep * proj(attn) with proj
  zero-initialised. Heads of width <= 64.
  """
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array, tokens_bhwc: jax.Array, keep_b: jax.Array) -> jax.Array:
    b, hgt, wid, c = x_bhwc.shape
    if tokens_bhwc.shape != x_bhwc.shape:
      raise ValueError(f'aligned tokens {tokens_bhwc.shape} must match the U-Net map {x_bhwc.shape}')
    heads = max(1, c // 64)
    pos = sincos_2d(hgt, wid, c)[None].astype(self.dtype)
    xn = layers.GroupNorm32(self.norm_groups, name='norm_x')(x_bhwc.reshape(b, hgt * wid, c))
    an = layers.GroupNorm32(self.norm_groups, name='norm_a')(tokens_bhwc.reshape(b, hgt * wid, c))
    q = layers.dense(c, 'to_q', self.dtype)(xn + pos).reshape(b, -1, heads, c // heads)
    k = layers.dense(c, 'to_k', self.dtype)(an + pos).reshape(b, -1, heads, c // heads)
    v = layers.dense(c, 'to_v', self.dtype)(an).reshape(b, -1, heads, c // heads)
    a = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c // heads)).reshape(b, hgt * wid, c)
    out = layers.dense(c, 'proj_out', self.dtype, zero=True)(a).reshape(b, hgt, wid, c)
    return x_bhwc + out.astype(x_bhwc.dtype) * keep_b[:, None, None, None].astype(x_bhwc.dtype)
