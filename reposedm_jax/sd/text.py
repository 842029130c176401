"""SD 2.x's text encoder in Flax: OpenCLIP ViT-H/14's text tower, read the way Stable Diffusion 2.x reads it.

Pre-LayerNorm transformer over 77 token embeddings + learned positions, causal self-attention, a GELU (exact) MLP
of 4x width; SD 2.x takes the output of the penultimate block (`skip_last` = 1: the last of the 24 blocks is not
run) through the final LayerNorm as the U-Net's cross-attention context [B, 77, 1024]. diffusers ships this tower as
a transformers `CLIPTextModel` with 23 layers; OpenCLIP stores all 24 with attention as one `in_proj`.
`convert/sd_text.py` reads both into this module's parameters:
  token_embedding/embedding, position_embedding, layers_{i}/{ln_1, q, k, v, out, ln_2, fc1, fc2}, final_layer_norm.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 49408
  width: int = 1024
  layers: int = 24  # OpenCLIP ViT-H/14's text tower
  heads: int = 16
  context_length: int = 77
  skip_last: int = 1  # SD 2.x: the penultimate block's output


TINY = TextConfig(vocab_size=300, width=32, layers=3, heads=4, context_length=16)


class Block(nn.Module):
  width: int
  heads: int

  @nn.compact
  def __call__(self, x, mask):
    b, n, _ = x.shape
    d = self.width // self.heads
    h = nn.LayerNorm(1e-5, name='ln_1')(x)
    split = lambda a: a.reshape(b, n, self.heads, d)  # noqa: E731
    q, k, v = (split(nn.Dense(self.width, name=name)(h)) for name in ('q', 'k', 'v'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
    logits = jnp.where(mask, logits, -jnp.inf)
    att = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1).astype(v.dtype), v).reshape(b, n, self.width)
    x = x + nn.Dense(self.width, name='out')(att)
    h = nn.LayerNorm(1e-5, name='ln_2')(x)
    h = nn.Dense(self.width, name='fc2')(jax.nn.gelu(nn.Dense(4 * self.width, name='fc1')(h), approximate=False))
    return x + h


class TextEncoder(nn.Module):
  """int tokens [B, L] (L <= context_length) -> context [B, L, width] (penultimate block, final LayerNorm)."""
  cfg: TextConfig = TextConfig()

  @nn.compact
  def __call__(self, tokens):
    cfg = self.cfg
    n = tokens.shape[1]
    x = nn.Embed(cfg.vocab_size, cfg.width, name='token_embedding')(tokens)
    pos = self.param('position_embedding', nn.initializers.normal(0.01), (cfg.context_length, cfg.width))
    x = x + pos[:n][None]
    mask = jnp.tril(jnp.ones((n, n), bool))[None, None]
    for i in range(cfg.layers - cfg.skip_last):
      x = Block(cfg.width, cfg.heads, name=f'layers_{i}')(x, mask)
    return nn.LayerNorm(1e-5, name='final_layer_norm')(x)
