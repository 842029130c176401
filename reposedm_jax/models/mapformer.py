"""MapFormer: windowed self-/cross-attention between target-pose and source features.

Paper §3.2, eq. 5: one layer of self-attention over the source features F_S and
one layer of cross-attention whose queries come from the target-pose features F_T
and whose keys/values come from F_S, each restricted to a region N(x) around the
query, with residual connections, layer normalisation and feed-forward layers.
Several window (kernel) sizes take the matching from global to non-local to
local; each window size gets the same number `depth` of layers.

Choices not fixed by the paper:
  * Pre-LN residual blocks (x + f(LN(x))), with a final LayerNorm on both outputs.
    MapFormer runs inside the recurrent pose alignment loop (N = 5 applications),
    and pre-LN keeps the residual path an identity there, which trains stably
    without warm-up; the final norms hand the aggregator features on one scale.
  * Cross-attention reads the source features after this layer's self-attention
    and feed-forward update.
  * Head width d = dim / heads; logits scaled by 1/sqrt(d) (the paper's sqrt(D)).
  * Attention goes through `local_attention.window_attention`, which runs the
    gathered local form or the (exactly equal) dense masked form, whichever
    needs less memory for the static map size; a window covering the whole map
    runs as global attention.
  * No positional encoding: relative position enters through the windows and
    through the correlation/aggregator that consumes MapFormer's outputs.

Everything is channels-last ([B, H, W, C]); F_T and F_S share B, H, W.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models import local_attention

Dtype = Any


class FeedForward(nn.Module):
  """Dense(mlp_ratio * dim) -> GELU -> Dense(dim), applied per position.

  Attributes:
    dim: Input and output channels.
    mlp_ratio: Hidden width multiplier.
    dtype: Compute dtype (parameters stay float32).
  """
  dim: int
  mlp_ratio: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    h_bhwf = nn.Dense(self.mlp_ratio * self.dim, dtype=self.dtype, name='fc1')(x_bhwc)
    return nn.Dense(self.dim, dtype=self.dtype, name='fc2')(nn.gelu(h_bhwf))


class WindowAttention(nn.Module):
  """Multi-head attention of queries from one map to a window of another (or the same) map.

  Attributes:
    dim: Channels of both inputs and of the output; split into `heads` heads.
    heads: Number of heads n; d = dim // n.
    window: Window size, or None for global attention (`local_attention` conventions).
    dtype: Compute dtype of projections and attention matmuls.
  """
  dim: int
  heads: int
  window: Optional[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xq_bhwc: jax.Array, xkv_bhwc: jax.Array) -> jax.Array:
    """[B, H, W, dim] queries' map, [B, H, W, dim] keys/values' map -> [B, H, W, dim]."""
    b, h, w, _ = xq_bhwc.shape
    head_dim = self.dim // self.heads
    split = lambda x: x.reshape(x.shape[:3] + (self.heads, head_dim))
    q_bhwnd = split(nn.Dense(self.dim, dtype=self.dtype, name='to_q')(xq_bhwc))
    kv_bhw2c = nn.Dense(2 * self.dim, dtype=self.dtype, name='to_kv')(xkv_bhwc)
    k_bhwc, v_bhwc = jnp.split(kv_bhw2c, 2, axis=-1)
    out_bhwnd = local_attention.window_attention(
        q_bhwnd, split(k_bhwc), split(v_bhwc), self.window)
    return nn.Dense(self.dim, dtype=self.dtype, name='to_out')(
        out_bhwnd.reshape(b, h, w, self.dim))


class MapFormerLayer(nn.Module):
  """Windowed self-attention on F_S, then cross-attention F_T -> F_S (pre-LN blocks).

    f_s <- f_s + SelfAttn(LN(f_s));            f_s <- f_s + FFN(LN(f_s))
    f_t <- f_t + CrossAttn(LN(f_t), LN(f_s));  f_t <- f_t + FFN(LN(f_t))

  Attributes:
    dim: Channels C of both feature maps.
    heads: Attention heads; must divide dim.
    window: Window size w of both attentions, or None for global attention.
    mlp_ratio: Feed-forward hidden width multiplier.
    dtype: Compute dtype (LayerNorm statistics and the softmax stay float32).
  """
  dim: int
  heads: int
  window: Optional[int]
  mlp_ratio: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f_t_bhwc: jax.Array, f_s_bhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Updates both maps.

    Args:
      f_t_bhwc: [B, H, W, dim] target-pose features (cross-attention queries).
      f_s_bhwc: [B, H, W, dim] source features (self-attention; cross keys/values).

    Returns:
      (f_t_out_bhwc, f_s_out_bhwc), both [B, H, W, dim].
    """
    _check_inputs(f_t_bhwc, f_s_bhwc, self.dim, self.heads)
    norm = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)
    attn = lambda name: WindowAttention(self.dim, self.heads, self.window, self.dtype, name=name)
    ffn = lambda name: FeedForward(self.dim, self.mlp_ratio, self.dtype, name=name)

    s_bhwc = norm('norm_self')(f_s_bhwc)
    f_s_bhwc = f_s_bhwc + attn('self_attn')(s_bhwc, s_bhwc)
    f_s_bhwc = f_s_bhwc + ffn('ffn_s')(norm('norm_ffn_s')(f_s_bhwc))

    q_bhwc = norm('norm_cross_q')(f_t_bhwc)
    kv_bhwc = norm('norm_cross_kv')(f_s_bhwc)
    f_t_bhwc = f_t_bhwc + attn('cross_attn')(q_bhwc, kv_bhwc)
    f_t_bhwc = f_t_bhwc + ffn('ffn_t')(norm('norm_ffn_t')(f_t_bhwc))
    return f_t_bhwc, f_s_bhwc


class MapFormer(nn.Module):
  """MapFormer layers from global to local windows, `depth` layers per window size.

  Attributes:
    dim: Channels C of both feature maps.
    heads: Attention heads; must divide dim.
    windows: Window size per level, applied in order; None = global. The default
      (None, 15, 7, 3) is global -> non-local -> local.
    depth: Layers per window size (the paper's fixed depth D of every level).
    mlp_ratio: Feed-forward hidden width multiplier.
    dtype: Compute dtype.

  Parameters are named `level{i}_layer{j}` (window windows[i], j-th layer), then
  `norm_out_t` / `norm_out_s`.
  """
  dim: int
  heads: int
  windows: Sequence[Optional[int]] = (None, 15, 7, 3)
  depth: int = 1
  mlp_ratio: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f_t_bhwc: jax.Array, f_s_bhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Matches target-pose features against source features.

    Args:
      f_t_bhwc: [B, H, W, dim] target-pose features.
      f_s_bhwc: [B, H, W, dim] source features.

    Returns:
      (f_t_out_bhwc, f_s_out_bhwc), both [B, H, W, dim], layer-normalised.
    """
    if self.depth < 1 or not self.windows:
      raise ValueError(
          f'MapFormer needs depth >= 1 and at least one window, got depth={self.depth}, '
          f'windows={self.windows}.')
    for level, window in enumerate(self.windows):
      for layer in range(self.depth):
        f_t_bhwc, f_s_bhwc = MapFormerLayer(
            self.dim, self.heads, window, self.mlp_ratio, self.dtype,
            name=f'level{level}_layer{layer}')(f_t_bhwc, f_s_bhwc)
    f_t_bhwc = nn.LayerNorm(dtype=self.dtype, name='norm_out_t')(f_t_bhwc)
    f_s_bhwc = nn.LayerNorm(dtype=self.dtype, name='norm_out_s')(f_s_bhwc)
    return f_t_bhwc, f_s_bhwc


def _check_inputs(f_t_bhwc: jax.Array, f_s_bhwc: jax.Array, dim: int, heads: int):
  """Readable errors for the shape mistakes a caller is likely to make."""
  if dim % heads:
    raise ValueError(f'MapFormer: heads={heads} does not divide dim={dim}.')
  if f_t_bhwc.ndim != 4 or f_t_bhwc.shape != f_s_bhwc.shape or f_t_bhwc.shape[-1] != dim:
    raise ValueError(
        f'MapFormer expects F_T and F_S both [B, H, W, {dim}], got {f_t_bhwc.shape} '
        f'and {f_s_bhwc.shape}.')
