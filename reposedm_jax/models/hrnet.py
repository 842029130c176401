"""HigherHRNet (Cheng et al. 2020) in Flax: the bottom-up COCO-17 pose estimator that PIF guidance uses.

Structure (shared/reference/higherhrnet-humansd.md, W32 = `pose_higher_hrnet_w32_512`): stem (two
stride-2 conv3x3-BN-ReLU), `layer1` Bottlenecks at stride 4, stages 2-4 with 2/3/4 branches of
width*(1, 2, 4, 8) channels at strides 4/8/16/32 (the last module of the last stage single-scale),
head `final_layers_0` (conv1x1 -> 17 heatmaps + 17 tags at stride 4), then [features | those 34 maps]
-> ConvTranspose x2 -> BasicBlocks -> `final_layers_1` (17 heatmaps at stride 2). Parameter names
follow the PyTorch keys (see hrnet_blocks.py); `convert/hrnet.py` imports the official weights.

Input: images [B, H, W, 3] RGB in the project's [-1, 1]; the module maps them to [0, 1], pads bottom
and right with black up to a multiple of 32 (the fuse layers need every branch size even) and applies
ImageNet mean/std itself, so callers never normalise. Outputs are cropped back to ceil(H/s) x ceil(W/s).

Heatmap pixel convention (used by the trainer's targets and by `decode_keypoints`): heatmap pixel
centre u at stride s sits at image pixel centre x = (u + 0.5) * s - 0.5.
"""

import math
from typing import Any, Dict, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from reposedm_jax.models.hrnet_blocks import BasicBlock, Bottleneck, ConvTranspose2x, HRModule, batch_norm, conv

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_MULTIPLE = 32  # stride of the coarsest branch
NUM_JOINTS = 17

# Architectures by name. w32/w48: the official HigherHRNet configs (w32_512, w48_640).
# small: the same topology, narrow and shallow, for 64x44 synthetic people and CPU tests
# (~0.44 M parameters; see WORKSPACE.md for its training time and accuracy).
PRESETS: Dict[str, Dict[str, Any]] = {
    'w32': dict(width=32),
    'w48': dict(width=48),
    'small': dict(width=16, stem_channels=32, layer1_planes=16, layer1_blocks=1, num_modules=(1, 1, 1),
                  num_blocks=2, deconv_blocks=1),
}


class HigherHRNet(nn.Module):
  """HigherHRNet; the defaults are W32.

  Attributes:
    width: channels of branch 0 (branch i has width * 2^i) and of the deconv head.
    stem_channels: width of the two stem convs (official 64).
    layer1_planes / layer1_blocks: Bottleneck planes (output 4x) and count in layer1 (official 64 / 4).
    num_modules: modules in stages 2, 3, 4 (official (1, 4, 3)).
    num_blocks: BasicBlocks per branch in every module (official 4).
    deconv_blocks: BasicBlocks after the ConvTranspose (official 4).
    num_joints: heatmap channels (COCO-17).
  """
  width: int = 32
  stem_channels: int = 64
  layer1_planes: int = 64
  layer1_blocks: int = 4
  num_modules: tuple[int, ...] = (1, 4, 3)
  num_blocks: int = 4
  deconv_blocks: int = 4
  num_joints: int = NUM_JOINTS

  def _transition(self, index: int, xs, prev_channels, channels, train: bool):
    """`transition{index}`: adapt the widths of existing branches, open new ones from the last branch."""
    out = []
    for i, c in enumerate(channels):
      if i < len(prev_channels):
        x = xs[i]
        if prev_channels[i] != c:
          x = nn.relu(batch_norm(train, f'transition{index}_{i}_1')(conv(c, 3, name=f'transition{index}_{i}_0')(x)))
      else:
        x = xs[-1]
        steps = i + 1 - len(prev_channels)
        for k in range(steps):
          width = c if k == steps - 1 else prev_channels[-1]
          x = conv(width, 3, 2, name=f'transition{index}_{i}_{k}_0')(x)
          x = nn.relu(batch_norm(train, f'transition{index}_{i}_{k}_1')(x))
      out.append(x)
    return out

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> Dict[str, jax.Array]:
    """images [B, H, W, 3] in [-1, 1] -> dict of
      'heatmaps_s4' [B, ceil(H/4), ceil(W/4), 17], 'tags_s4' (same shape, associative-embedding tags),
      'heatmaps_s2' [B, ceil(H/2), ceil(W/2), 17], 'features' [B, ceil(H/4), ceil(W/4), width]
      (branch 0 after the last stage, what the heads read).
    `train`: BatchNorm uses batch statistics and updates `batch_stats` (apply with mutable=['batch_stats']).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'HigherHRNet expects images [B, H, W, 3], got {images.shape}')
    _, h, w, _ = images.shape
    x = (images + 1.0) * 0.5
    # Black padding, as the reference's test-time affine warp pads (before normalisation).
    x = jnp.pad(x, ((0, 0), (0, -h % SIZE_MULTIPLE), (0, -w % SIZE_MULTIPLE), (0, 0)))
    x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)

    x = nn.relu(batch_norm(train, 'bn1')(conv(self.stem_channels, 3, 2, name='conv1')(x)))
    x = nn.relu(batch_norm(train, 'bn2')(conv(self.stem_channels, 3, 2, name='conv2')(x)))
    for i in range(self.layer1_blocks):
      x = Bottleneck(self.layer1_planes, name=f'layer1_{i}')(x, train)

    xs, prev = [x], (self.layer1_planes * Bottleneck.expansion,)
    for s, modules in enumerate(self.num_modules):
      channels = tuple(self.width * 2 ** i for i in range(s + 2))
      xs = self._transition(s + 1, xs, prev, channels, train)
      for m in range(modules):
        last = s == len(self.num_modules) - 1 and m == modules - 1
        xs = HRModule(channels, self.num_blocks, multi_scale_output=not last, name=f'stage{s + 2}_{m}')(xs, train)
      prev = channels

    feats = xs[0]  # [B, Hp/4, Wp/4, width]
    j = self.num_joints
    head_init = nn.initializers.normal(1e-3)  # the reference's init: heatmaps start near 0
    out4 = nn.Conv(2 * j, (1, 1), padding=0, kernel_init=head_init, name='final_layers_0')(feats)
    y = jnp.concatenate([feats, out4], axis=-1)
    y = ConvTranspose2x(self.width, name='deconv_layers_0_0_0')(y)  # kernel (4, 4, out, in)
    y = nn.relu(batch_norm(train, 'deconv_layers_0_0_1')(y))
    for k in range(self.deconv_blocks):  # the reference wraps each block in its own Sequential: '.0'
      y = BasicBlock(self.width, name=f'deconv_layers_0_{k + 1}_0')(y, train)
    out2 = nn.Conv(j, (1, 1), padding=0, kernel_init=head_init, name='final_layers_1')(y)

    h4, w4, h2, w2 = -(-h // 4), -(-w // 4), -(-h // 2), -(-w // 2)
    return {'heatmaps_s4': out4[:, :h4, :w4, :j], 'tags_s4': out4[:, :h4, :w4, j:],
            'heatmaps_s2': out2[:, :h2, :w2], 'features': feats[:, :h4, :w4]}


def build_hrnet(pose_config: Any) -> HigherHRNet:
  """HigherHRNet for `config.pose` (reads `.arch`) or an arch name ('w32' | 'w48' | 'small')."""
  arch = pose_config if isinstance(pose_config, str) else pose_config.arch
  if arch not in PRESETS:
    raise ValueError(f'pose.arch={arch!r} must be one of {sorted(PRESETS)}')
  return HigherHRNet(**PRESETS[arch])


def init_variables(module: HigherHRNet, rng: jax.Array, hw=(SIZE_MULTIPLE, SIZE_MULTIPLE)) -> Dict[str, Any]:
  """{'params', 'batch_stats'} of `module` (weights do not depend on the image size)."""
  # Jitted: eager init dispatches hundreds of small ops one by one (tens of seconds on CPU).
  return jax.jit(lambda r: module.init(r, jnp.zeros((1, *hw, 3), jnp.float32), train=False))(rng)


def variable_shapes(module: HigherHRNet) -> Dict[str, Any]:
  """ShapeDtypeStructs of init_variables, without allocating anything (jax.eval_shape)."""
  return jax.eval_shape(lambda r: init_variables(module, r), jax.random.key(0))


def aggregate_heatmaps(outputs: Mapping[str, jax.Array]) -> jax.Array:
  """The reference's test-time aggregation: stride-4 heatmaps upsampled to stride 2, averaged with them.

  Bilinear with align_corners=False (half-pixel centres, edge-clamped: jax.image.resize's
  triangle kernel is normalised over in-range taps, which equals torch's clamping at 2x).
  The 2x resize runs on the whole stride-4 map and is then cropped, so odd sizes stay aligned.

  Args:
    outputs: the module's output dict ('heatmaps_s4' [B, h4, w4, K], 'heatmaps_s2' [B, h2, w2, K]).

  Returns:
    [B, h2, w2, K].
  """
  h4, h2 = outputs['heatmaps_s4'], outputs['heatmaps_s2']
  b, hh, ww, k = h4.shape
  if not (2 * hh - 1 <= h2.shape[1] <= 2 * hh and 2 * ww - 1 <= h2.shape[2] <= 2 * ww):
    raise ValueError(f'stride-4 heatmaps {h4.shape} and stride-2 heatmaps {h2.shape} do not belong together')
  up = jax.image.resize(h4, (b, 2 * hh, 2 * ww, k), 'bilinear')[:, :h2.shape[1], :h2.shape[2]]
  return 0.5 * (up + h2)


def heatmap_stride(heatmap_hw, image_hw) -> int:
  """The power-of-two stride s with ceil(H/s), ceil(W/s) == heatmap size; ValueError if none."""
  (h, w), (hi, wi) = heatmap_hw, image_hw
  for s in (1, 2, 4, 8, 16, 32, 64):
    if -(-hi // s) == h and -(-wi // s) == w:
      return s
  raise ValueError(f'heatmaps of {h}x{w} do not match images of {hi}x{wi} at any power-of-two stride')


def decode_keypoints(heatmaps: jax.Array, image_hw, eps: float = 1e-6):
  """One keypoint per joint: arg-max plus per-axis sub-pixel refinement, in image pixels.

  Refinement: a parabola through the log-heatmap at the peak and its two neighbours on each axis,
  dx = (l[x-1] - l[x+1]) / (2 (l[x-1] - 2 l[x] + l[x+1])), clipped to [-0.5, 0.5]; exact for an
  axis-aligned Gaussian peak (the shape of the training targets), and 0 at the map border or where
  the log-values are not concave. Values are floored at `eps` before the log. Not meant to be
  differentiated (the heatmaps are stop-gradient'ed); jit-able (shapes are static).

  Args:
    heatmaps: [B, h, w, K] at stride s of the images (s inferred from the sizes, see heatmap_stride).
    image_hw: (H, W) of the images the heatmaps came from.

  Returns:
    xy [B, K, 2] float32 (x, y) pixels with centre convention x = (u + 0.5) s - 0.5,
    score [B, K] the peak heatmap value.
  """
  b, h, w, k = heatmaps.shape
  s = heatmap_stride((h, w), image_hw)
  hm = jnp.moveaxis(jax.lax.stop_gradient(heatmaps), -1, 1).astype(jnp.float32)  # [B, K, h, w]
  flat = hm.reshape(b, k, h * w)
  idx = jnp.argmax(flat, axis=-1)
  score = jnp.max(flat, axis=-1)
  py, px = idx // w, idx % w
  logs = jnp.log(jnp.maximum(flat, eps))

  def at(yy, xx):
    return jnp.take_along_axis(logs, (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1))[..., None], -1)[..., 0]

  def offset(lo, mid, hi, inside):
    curv = lo - 2 * mid + hi
    d = jnp.where(curv < 0, 0.5 * (lo - hi) / jnp.where(curv < 0, curv, -1.0), 0.0)
    return jnp.where(inside, jnp.clip(d, -0.5, 0.5), 0.0)

  mid = at(py, px)
  dx = offset(at(py, px - 1), mid, at(py, px + 1), (px > 0) & (px < w - 1))
  dy = offset(at(py - 1, px), mid, at(py + 1, px), (py > 0) & (py < h - 1))
  xy = jnp.stack([px + dx, py + dy], axis=-1).astype(jnp.float32)
  return (xy + 0.5) * s - 0.5, score


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
