"""HigherHRNet building blocks (BasicBlock, Bottleneck, multi-resolution module), torch-compatible.

Every submodule is named after the PyTorch state-dict key it corresponds to, with the numeric parts
joined to the name before them (the rule of `convert/pidm.py`): `stage3.3.fuse_layers.2.0.1.0.weight`
is the kernel of the conv named `fuse_layers_2_0_1_0` inside the module `stage3_3`. The converter is
therefore a renaming plus the conv layout change, with no per-layer table.

Torch semantics kept: convolutions without bias, explicit symmetric padding k // 2 (so stride-2
convs round up like torch), BatchNorm with torch momentum 0.1 (flax momentum 0.9) and eps 1e-5,
nearest-neighbour upsampling, and the fuse sums in the same order. One difference: torch updates
`running_var` with the unbiased batch variance, flax with the biased one (a factor n/(n-1) on the
running statistics while training; inference with imported statistics is identical).
All tensors are NHWC.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MOMENTUM = 0.9  # flax's decay of the running average == torch momentum 0.1
BN_EPS = 1e-5


def conv(features: int, kernel: int, stride: int = 1, *, name: str, bias: bool = False) -> nn.Conv:
  """torch `nn.Conv2d(k, stride, padding=k // 2)`; must be called inside a compact method."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=bias, name=name)


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
  """BatchNorm2d: batch statistics (and running-average updates) when `train`, running stats otherwise."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """[B, H, W, C] -> [B, H*f, W*f, C], torch `nn.Upsample(scale_factor=f, mode='nearest')`."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN with an identity shortcut (HRNet branches and the deconv head). [B,H,W,C] -> same."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.shape[-1] != self.features:
      # HRNet's configurations never need a projection shortcut in a BasicBlock.
      raise ValueError(f'BasicBlock {self.name}: input has {x.shape[-1]} channels, expected {self.features}')
    y = nn.relu(batch_norm(train, 'bn1')(conv(self.features, 3, name='conv1')(x)))
    y = batch_norm(train, 'bn2')(conv(self.features, 3, name='conv2')(y))
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 expansion) with a 1x1 conv-BN projection when the width changes (layer1)."""
  planes: int
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = self.planes * self.expansion
    y = nn.relu(batch_norm(train, 'bn1')(conv(self.planes, 1, name='conv1')(x)))
    y = nn.relu(batch_norm(train, 'bn2')(conv(self.planes, 3, name='conv2')(y)))
    y = batch_norm(train, 'bn3')(conv(out, 1, name='conv3')(y))
    if x.shape[-1] != out:
      x = batch_norm(train, 'downsample_1')(conv(out, 1, name='downsample_0')(x))
    return nn.relu(y + x)


class HRModule(nn.Module):
  """One multi-resolution module: per-branch BasicBlocks, then the exchange ("fuse") between branches.

  Branch i runs at stride 4 * 2^i with `channels[i]` channels. Output i sums every branch j brought to
  branch i's resolution and width: j > i by conv1x1-BN and nearest upsampling x2^(j-i); j < i by a chain
  of (i-j) stride-2 conv3x3-BN (ReLU between them, not after the last); then ReLU. With
  `multi_scale_output=False` only output 0 is built (HigherHRNet's last module).
  """
  channels: Sequence[int]
  num_blocks: int
  multi_scale_output: bool = True

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], train: bool) -> list[jax.Array]:
    if len(xs) != len(self.channels):
      raise ValueError(f'{self.name}: got {len(xs)} branches, expected {len(self.channels)}')
    xs = list(xs)
    for i, c in enumerate(self.channels):
      for b in range(self.num_blocks):
        xs[i] = BasicBlock(c, name=f'branches_{i}_{b}')(xs[i], train)
    if len(xs) == 1:
      return xs
    outs = []
    for i in range(len(xs) if self.multi_scale_output else 1):
      total = None
      for j, x in enumerate(xs):
        if j > i:
          x = conv(self.channels[i], 1, name=f'fuse_layers_{i}_{j}_0')(x)
          x = upsample_nearest(batch_norm(train, f'fuse_layers_{i}_{j}_1')(x), 2 ** (j - i))
        elif j < i:
          for k in range(i - j):
            last = k == i - j - 1
            x = conv(self.channels[i] if last else self.channels[j], 3, 2, name=f'fuse_layers_{i}_{j}_{k}_0')(x)
            x = batch_norm(train, f'fuse_layers_{i}_{j}_{k}_1')(x)
            if not last:
              x = nn.relu(x)
        total = x if total is None else total + x
      outs.append(nn.relu(total))
    return outs
