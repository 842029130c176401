"""ResNet-50 in Flax with torchvision's layout and names, and the re-ID head of the "bag of tricks" baseline.

torchvision `resnet50` (v1.5: the stride of a downsampling bottleneck sits on its 3x3 conv): conv1 7x7/2 -> bn1 ->
ReLU -> maxpool 3x3/2 -> layer1..layer4 of (3, 4, 6, 3) bottlenecks (widths 64, 128, 256, 512, expansion 4; the
first block of each layer has `downsample` = 1x1 conv + BN) -> global average pool. Parameter names follow
torchvision's with numbered parts joined by '_' (`layer1.0.downsample.1.weight` -> layer1_0/downsample_1/scale), so
`convert/resnet.py` maps a torchvision file by renaming and re-laying out only. BatchNorm: eps 1e-5, momentum 0.1
(flax momentum 0.9), batch statistics in training mode, running statistics in eval mode.

ReIDNet (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification"): the backbone with
last stride 1, global pooling -> f_t (triplet / centre loss), a BN "neck" without a shift -> f_i (what retrieval
compares), a bias-free linear classifier over the training identities (the ID loss).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # flax's convention: torch momentum 0.1


def _bn(train: bool, name: str, **kw) -> nn.BatchNorm:
  # Two-pass variance (as torch): the one-pass E[x²]-E[x]² loses digits on small late-layer batches.
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, use_fast_variance=False,
                      name=name, **kw)


class Bottleneck(nn.Module):
  width: int
  stride: int = 1
  downsample: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.Conv(self.width, (1, 1), use_bias=False, name='conv1')(x)
    out = nn.relu(_bn(train, 'bn1')(out))
    out = nn.Conv(self.width, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), use_bias=False,
                  name='conv2')(out)
    out = nn.relu(_bn(train, 'bn2')(out))
    out = nn.Conv(4 * self.width, (1, 1), use_bias=False, name='conv3')(out)
    out = _bn(train, 'bn3')(out)
    if self.downsample:
      x = nn.Conv(4 * self.width, (1, 1), (self.stride, self.stride), use_bias=False, name='downsample_0')(x)
      x = _bn(train, 'downsample_1')(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """[B, H, W, 3] (ImageNet-normalised) -> [B, H/32, W/32, 2048] feature map (H/16 with last_stride=1)."""
  blocks: Sequence[int] = (3, 4, 6, 3)
  last_stride: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, name='conv1')(x)
    x = nn.relu(_bn(train, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, (n, width) in enumerate(zip(self.blocks, (64, 128, 256, 512))):
      stride = 1 if i == 0 else (self.last_stride if i == 3 else 2)
      for j in range(n):
        x = Bottleneck(width, stride if j == 0 else 1, downsample=j == 0, name=f'layer{i + 1}_{j}')(x, train)
    return x


# ImageNet statistics torchvision's weights expect; images arrive in [-1, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(images: jax.Array) -> jax.Array:
  x = (images.astype(jnp.float32) + 1.0) / 2.0
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class ReIDNet(nn.Module):
  """Images in [-1, 1] -> {'global': f_t [B, 2048], 'feature': f_i [B, 2048] (BN neck), 'logits' [B, num_ids]}."""
  num_ids: int
  blocks: Sequence[int] = (3, 4, 6, 3)
  last_stride: int = 1

  @nn.compact
  def __call__(self, images, train: bool = False):
    fmap = ResNet(self.blocks, self.last_stride, name='backbone')(imagenet_normalise(images), train)
    f_t = jnp.mean(fmap, axis=(1, 2))
    f_i = _bn(train, 'neck', use_bias=False)(f_t)  # the BN neck: no shift, so f_i stays centred for cosine
    logits = nn.Dense(self.num_ids, use_bias=False, kernel_init=nn.initializers.normal(0.001),
                      name='classifier')(f_i)
    return {'global': f_t, 'feature': f_i, 'logits': logits}


def init_variables(module: nn.Module, hw, rng) -> dict:
  return jax.jit(lambda r: module.init(r, jnp.zeros((1, *hw, 3)), train=False))(rng)
