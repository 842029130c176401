"""Converts torchvision's ImageNet ResNet-50 (`resnet50-*.pth`, the user's file) into `reid/resnet.py`'s backbone.

Reads the file through the restricted reader (no pickled code runs) or a `.safetensors` file. Names map by joining
numbered parts with '_' (`layer1.0.downsample.1.running_var` -> batch_stats layer1_0/downsample_1/var); convs OIHW
-> HWIO; a BatchNorm's weight/bias -> scale/bias (params), running_mean/var -> mean/var (batch_stats);
`num_batches_tracked` and the ImageNet classifier `fc.*` are dropped (re-ID trains its own). Every missing,
unexpected and mis-shaped tensor is listed in one ValueError before anything is copied.

  python -m reposedm_jax.convert resnet --src resnet50-11ad3fa6.pth --dst weights/resnet50
"""

import json
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from reposedm_jax import checkpoint
from reposedm_jax.convert import mapping
from reposedm_jax.convert.vae import flax_path, load_state_dict
from reposedm_jax.reid.resnet import ResNet

DROPPED_SUFFIXES = ('num_batches_tracked',)
DROPPED_PREFIXES = ('fc.',)
META_FILE = 'resnet.json'
_STATS = {'running_mean': 'mean', 'running_var': 'var'}


def expected_shapes(module: ResNet = ResNet()) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{('params' | 'batch_stats', *path): shape} of the backbone."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _target(key: str, ndim: int) -> tuple[str, ...]:
  *modules, leaf = key.split('.')
  if leaf in _STATS:
    return ('batch_stats',) + flax_path('.'.join(modules + ['bias']), 1)[:-1] + (_STATS[leaf],)
  return ('params',) + flax_path(key, ndim)


def convert_state_dict(sd: Mapping[str, np.ndarray], module: ResNet = ResNet()) -> dict:
  """torchvision ResNet state dict -> {'params', 'batch_stats'} of `module` (numpy float32)."""
  kept = [(k, v) for k, v in sd.items() if not (k.endswith(DROPPED_SUFFIXES) or k.startswith(DROPPED_PREFIXES))]
  plan = mapping.match_keys(kept, expected_shapes(module), _target,
                            lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else s,
                            'ResNet state dict does not match torchvision resnet50')

  def value(v):
    v = np.asarray(v, np.float32)
    return np.ascontiguousarray(v.transpose(2, 3, 1, 0) if v.ndim == 4 else v)

  return mapping.nest(plan, sd, value)


def save_resnet(variables, dst: str, source: str) -> str:
  dst = os.path.abspath(dst)
  checkpoint.save_params(os.path.join(dst, 'variables'), variables)
  with open(os.path.join(dst, META_FILE), 'w') as f:
    json.dump({'arch': 'resnet50', 'source': os.path.abspath(source)}, f, indent=1)
  return dst


def load_resnet(path: str) -> dict:
  """The {'params', 'batch_stats'} a `convert resnet` dir holds (shapes checked against the backbone)."""
  abstract = jax.eval_shape(lambda: ResNet().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  return checkpoint.load_params(os.path.join(path, 'variables'), abstract)


def _define_flags():
  flags.DEFINE_string('src', None, "torchvision's resnet50-*.pth (or a .safetensors of the same state dict)")
  flags.DEFINE_string('dst', None, 'output directory (variables/ and resnet.json)')
  flags.mark_flags_as_required(['src', 'dst'])


def _main(argv):
  del argv
  f = flags.FLAGS
  variables = convert_state_dict(load_state_dict(f.src))
  dst = save_resnet(variables, f.dst, f.src)
  print(f'Converted {sum(np.size(v) for v in jax.tree.leaves(variables)):,} ResNet-50 values to {dst}')
