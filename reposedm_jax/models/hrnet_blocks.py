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
import numpy as np

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


# Sub-pixel form of torch ConvTranspose2d(k=4, s=2, p=1) along one axis: output row 2m + r sums two input
# rows with two kernel rows: r = 0 reads rows (m-1, m) with kernel rows (3, 1); r = 1 reads (m, m+1)
# with (2, 0). Each output phase (ry, rx) is a 2x2 stride-1 conv on the input padded on that side.
_PHASE_TAPS = np.array([[3, 1], [2, 0]])


class ConvTranspose2x(nn.Module):
  """torch `ConvTranspose2d(cin, features, 4, stride=2, padding=1, bias=False)`: [B,H,W,cin] -> [B,2H,2W,features].

  The parameter is flax ConvTranspose(transpose_kernel=True)'s `kernel` (4, 4, features, cin), i.e. the
  torch weight (cin, features, 4, 4) transposed (2, 3, 1, 0). Computed as four 2x2 stride-1 convs (one
  per output phase) interleaved depth-to-space: the same sums, but XLA:CPU differentiates a transposed
  conv ~10x slower (measured at batch 32, 16x16x50 -> 32x32x16: 151 ms forward + backward for
  flax ConvTranspose, 15 ms here), which dominated both training and input-gradient steps.
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, cin = x.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(in_axis=-1, out_axis=-2), (4, 4, self.features, cin))
    rows = []
    for ry in range(2):
      cols = []
      for rx in range(2):
        k = kernel[_PHASE_TAPS[ry][:, None], _PHASE_TAPS[rx][None, :]].transpose(0, 1, 3, 2)  # (2, 2, in, out)
        pad = ((1, 0) if ry == 0 else (0, 1), (1, 0) if rx == 0 else (0, 1))
        cols.append(jax.lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), pad,
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      rows.append(jnp.stack(cols, axis=3))  # [B, H, W, rx, C]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, self.features)  # [B, H, ry, W, rx, C]


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
