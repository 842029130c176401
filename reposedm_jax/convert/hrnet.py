"""Converts HigherHRNet weights (official `pose_higher_hrnet_w{32,48}_*.pth`, or timm `hrnet_w32`/`hrnet_w48`
ImageNet backbones) into the Flax HigherHRNet's {'params', 'batch_stats'}.

Naming: the Flax modules carry the PyTorch names (models/hrnet_blocks.py), so a key maps by the rule of
convert/pidm.py (numeric parts joined to the name before them; `weight` -> `kernel` for 4-D tensors,
`scale` for BatchNorm), plus the BatchNorm buffers `running_mean` / `running_var` -> batch_stats
`mean` / `var`; `num_batches_tracked` is accepted and dropped:
  stage3.3.fuse_layers.2.0.1.0.weight -> params/stage3_3/fuse_layers_2_0_1_0/kernel
  layer1.0.downsample.1.running_var   -> batch_stats/layer1_0/downsample_1/var
Layout: every 4-D tensor is transposed (2, 3, 1, 0): conv OIHW -> HWIO, and the head's ConvTranspose
(in, out, kh, kw) -> (kh, kw, out, in), the kernel of flax ConvTranspose(transpose_kernel=True).

Official naming is strict: every missing, unexpected or mis-shaped key is listed in one ValueError.
timm naming fills the backbone only: timm's extra fuse rows of the last stage-4 module
(`stage4.2.fuse_layers.{1,2,3}`) and its classification head (incre/downsamp modules, final_layer,
classifier) are dropped, and the HigherHRNet head (final_layers, deconv_layers) is reported as not filled.

Output directory: `variables/` (orbax StandardCheckpointer of the nested dict) and `hrnet.json`
({'arch', 'naming', 'source', 'not_filled': [...]}); `load_hrnet(dir)` reads both back.
Files are read with the restricted unpicklers (zip: torch_checkpoint; pre-1.6: torch_legacy).

CLI:
  python -m reposedm_jax.convert hrnet --src pose_higher_hrnet_w32_512.pth --dst weights/hrnet_w32 \
      [--arch w32|w48] [--naming official|timm|mmpose]
"""

import json
import os
import re
import zipfile
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from reposedm_jax import checkpoint
from reposedm_jax.convert import torch_checkpoint, torch_legacy
from reposedm_jax.convert.pidm import flax_path_to_pidm_key, pidm_key_to_flax_path, torch_to_flax_layout
from reposedm_jax.convert.pidm import torch_to_flax_shape, unflatten_params
from reposedm_jax.models import hrnet

VARIABLES_DIR = 'variables'
META_FILE = 'hrnet.json'
NAMINGS = ('official', 'timm', 'mmpose')
# mmpose (HumanSD's HigherHRNet-W48 UDP checkpoints) prefixes the same module tree with these.
MMPOSE_PREFIXES = re.compile(r'^(backbone|keypoint_head)\.')
_BUFFERS = {'running_mean': 'mean', 'running_var': 'var'}
_HEAD = re.compile(r'^(final_layers|deconv_layers)\.')
_TIMM_HEAD = re.compile(r'^(incre_modules|downsamp_modules|final_layer|classifier)\.')

Path = tuple[str, ...]  # (collection, module..., leaf)


def torch_key_to_variable(key: str, ndim: int) -> Path | None:
  """('params' | 'batch_stats', *flax path) of a PyTorch key; None for `num_batches_tracked`."""
  *modules, leaf = key.split('.')
  if leaf == 'num_batches_tracked':
    return None
  if leaf in _BUFFERS:
    return ('batch_stats',) + pidm_key_to_flax_path('.'.join(modules + ['bias']), 1)[:-1] + (_BUFFERS[leaf],)
  return ('params',) + pidm_key_to_flax_path(key, ndim)


def variable_to_torch_key(path: Path) -> str:
  """Inverse of torch_key_to_variable."""
  collection, *rest = path
  if collection == 'batch_stats':
    buffer = {v: k for k, v in _BUFFERS.items()}[rest[-1]]
    return flax_path_to_pidm_key(tuple(rest[:-1]) + ('bias',))[:-len('bias')] + buffer
  return flax_path_to_pidm_key(tuple(rest))


def flat_variables(tree: Mapping[str, Any]) -> dict[Path, Any]:
  """{'params': {...}, 'batch_stats': {...}} -> {(collection, ..., leaf): leaf value}."""
  flat = jax.tree_util.tree_flatten_with_path(dict(tree))[0]
  return {tuple(k.key for k in path): leaf for path, leaf in flat}


def _torch_shape(flax_shape: tuple) -> tuple:
  """PyTorch layout of a Flax variable shape (inverse of the (2, 3, 1, 0) transpose)."""
  return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1]) if len(flax_shape) == 4 else tuple(flax_shape)


def _as_module(arch_or_module) -> hrnet.HigherHRNet:
  return arch_or_module if isinstance(arch_or_module, hrnet.HigherHRNet) else hrnet.build_hrnet(arch_or_module)


def _arch_hint(key_shapes: Mapping[str, tuple], module: hrnet.HigherHRNet) -> str:
  shape = key_shapes.get('transition1.0.0.weight')
  if shape and shape[0] != module.width:
    named = [a for a, kw in hrnet.PRESETS.items() if kw['width'] == shape[0]]
    return (f'\n  hint: transition1.0.0.weight has {shape[0]} output channels, the model {module.width}'
            + (f': pass --arch {named[0]}' if named else ''))
  return ''


def plan_hrnet_conversion(key_shapes: Mapping[str, tuple], arch_or_module, naming: str = 'official'):
  """Checks names and shapes against the model without touching tensor data.

  Args:
    key_shapes: PyTorch key -> shape.
    arch_or_module: preset name ('w32' | 'w48' | 'small') or a HigherHRNet.
    naming: 'official' (strict, whole network) or 'timm' (backbone only).

  Returns:
    (mapping key -> variable path, dropped keys, not-filled variable paths (timm: the head)).

  Raises:
    ValueError: listing every missing, unexpected and mis-shaped key.
  """
  if naming not in NAMINGS:
    raise ValueError(f'naming={naming!r} must be one of {NAMINGS}')
  module = _as_module(arch_or_module)
  expected = {p: s.shape for p, s in flat_variables(hrnet.variable_shapes(module)).items()}
  last_stage = len(module.num_modules) + 1
  timm_extra_fuse = re.compile(rf'^stage{last_stage}\.{module.num_modules[-1] - 1}\.fuse_layers\.[1-9]')
  mapping, seen, dropped, unexpected, misshaped = {}, set(), [], [], []
  for key, shape in key_shapes.items():
    shape = tuple(int(s) for s in shape)
    if naming == 'timm' and (_TIMM_HEAD.search(key) or timm_extra_fuse.search(key)):
      dropped.append(key)
      continue
    path = torch_key_to_variable(key, len(shape))
    if path is None:
      dropped.append(key)
      continue
    if path not in expected:
      unexpected.append(f'{key} {shape} (-> Flax {"/".join(path)})')
      continue
    seen.add(path)
    try:
      flax_shape = torch_to_flax_shape(key, shape)
    except ValueError as e:
      misshaped.append(str(e))
      continue
    if flax_shape != expected[path]:
      misshaped.append(f'{key}: PyTorch {shape} -> Flax {flax_shape}, model expects {expected[path]} at '
                       f'{"/".join(path)}')
      continue
    mapping[key] = path
  absent = [p for p in expected if p not in seen]
  not_filled = [p for p in absent if naming == 'timm' and _HEAD.search(variable_to_torch_key(p))]
  missing = [f'{variable_to_torch_key(p)} {_torch_shape(expected[p])} (Flax {"/".join(p)})'
             for p in absent if p not in not_filled]
  if missing or unexpected or misshaped:
    lines = [f'HigherHRNet-{naming} state dict does not match the model ({len(missing)} missing, '
             f'{len(unexpected)} unexpected, {len(misshaped)} mis-shaped):']
    for title, items in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped)):
      lines += [f'  {title}: {item}' for item in items]
    raise ValueError('\n'.join(lines) + _arch_hint(key_shapes, module))
  return mapping, dropped, not_filled


def convert_hrnet_state_dict(sd: Mapping[str, np.ndarray], arch_or_module, naming: str = 'official'):
  """PyTorch state dict -> ({'params', 'batch_stats'} nested dicts of float32 numpy arrays, not-filled paths).

  With naming='timm' the returned tree holds the backbone only; `fill_variables` merges it into an
  initialised model. naming='mmpose' strips mmpose's `backbone.` / `keypoint_head.` prefixes, then reads the
  keys as official ones (strictly: any other difference of mmpose's tree is listed, not guessed).
  """
  if naming == 'mmpose':
    sd, naming = {MMPOSE_PREFIXES.sub('', k): v for k, v in sd.items()}, 'official'
  mapping, dropped, not_filled = plan_hrnet_conversion({k: np.shape(v) for k, v in sd.items()}, arch_or_module,
                                                       naming)
  flat = {path: np.ascontiguousarray(torch_to_flax_layout(key, np.asarray(sd[key])), dtype=np.float32)
          for key, path in mapping.items()}
  logging.info('HigherHRNet conversion: %d tensors filled, %d keys dropped, %d Flax tensors not filled',
               len(flat), len(dropped), len(not_filled))
  return unflatten_params(flat), not_filled


def check_variables(variables: Mapping[str, Any], expected: Mapping[str, Any], source: str = 'variables') -> None:
  """Raises ValueError listing every missing / unexpected / mis-shaped leaf of `variables` vs `expected`."""
  got = {p: tuple(np.shape(v)) for p, v in flat_variables(variables).items()}
  want = {p: tuple(s.shape) for p, s in flat_variables(expected).items()}
  problems = [f'  missing: {"/".join(p)} {s}' for p, s in want.items() if p not in got]
  problems += [f'  unexpected: {"/".join(p)} {s}' for p, s in got.items() if p not in want]
  problems += [f'  mis-shaped: {"/".join(p)} {got[p]}, model expects {s}' for p, s in want.items()
               if p in got and got[p] != s]
  if problems:
    raise ValueError(f'{source}: HigherHRNet weights do not match the model ({len(problems)} problems):\n'
                     + '\n'.join(problems))


def fill_variables(base: Mapping[str, Any], partial: Mapping[str, Any], source: str = 'weights'):
  """Overwrites the leaves of `base` present in `partial` (shapes checked). Returns (tree, not-filled paths)."""
  want = flat_variables(base)
  got = flat_variables(partial)
  bad = [f'{"/".join(p)} {np.shape(v)}' for p, v in got.items()
         if p not in want or tuple(np.shape(v)) != tuple(want[p].shape)]
  if bad:
    raise ValueError(f'{source}: {len(bad)} tensors have no place in the model or the wrong shape:\n  '
                     + '\n  '.join(bad))
  merged = {p: (got[p] if p in got else v) for p, v in want.items()}
  return unflatten_params(merged), [p for p in want if p not in got]


def load_state_dict_file(path: str) -> dict[str, np.ndarray]:
  """A `.pth` state dict through the restricted unpicklers (zip or legacy format).

  Accepts a bare state dict or one under 'state_dict' / 'model'; strips DataParallel's 'module.'.
  """
  obj = (torch_checkpoint.load_torch_checkpoint(path) if zipfile.is_zipfile(path)
         else torch_legacy.load_legacy_torch_checkpoint(path))
  if isinstance(obj, Mapping):
    for entry in ('state_dict', 'model'):
      if isinstance(obj.get(entry), Mapping):
        obj = obj[entry]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{path}: expected a state dict (key -> tensor), got {type(obj).__name__}')
  return torch_checkpoint.tensor_dict(obj, f'{path}: ')


def save_hrnet(variables: Mapping[str, Any], dst: str, meta: Mapping[str, Any]) -> str:
  """Writes dst/variables (orbax, all processes) and dst/hrnet.json (process 0); returns abs dst."""
  dst = os.path.abspath(dst)
  os.makedirs(dst, exist_ok=True)
  checkpoint.save_params(os.path.join(dst, VARIABLES_DIR), jax.tree.map(np.asarray, dict(variables)))
  if jax.process_index() == 0:
    with open(os.path.join(dst, META_FILE), 'w') as f:
      json.dump(dict(meta), f, indent=1)
  return dst


def load_hrnet(path: str):
  """(variables as nested dicts of arrays, meta dict) from a `save_hrnet` directory."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  var_dir = os.path.join(os.path.abspath(path), VARIABLES_DIR)
  if not os.path.isdir(var_dir):
    raise FileNotFoundError(f'{path}: no {VARIABLES_DIR}/ (write one with `python -m reposedm_jax.convert hrnet`)')
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(var_dir)
  meta_path = os.path.join(path, META_FILE)
  meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
  return variables, meta


def _define_flags():
  flags.DEFINE_string('src', None, 'HigherHRNet / HRNet checkpoint (.pth) to convert.', required=True)
  flags.DEFINE_string('dst', None, 'Output directory (variables/ + hrnet.json).', required=True)
  flags.DEFINE_enum('arch', 'w32', sorted(hrnet.PRESETS), 'HigherHRNet architecture of the weights.')
  flags.DEFINE_enum('naming', 'official', list(NAMINGS),
                    "'official' (pose_higher_hrnet_*.pth), 'timm' (hrnet_w32/w48 ImageNet backbone only) or "
                    "'mmpose' (HumanSD's higherhrnet_w48_*_udp.pth: backbone./keypoint_head. prefixes)")


def _main(argv):
  del argv
  f = flags.FLAGS
  sd = load_state_dict_file(f.src)
  variables, not_filled = convert_hrnet_state_dict(sd, f.arch, f.naming)
  meta = {'arch': f.arch, 'naming': f.naming, 'source': os.path.abspath(f.src),
          'not_filled': [variable_to_torch_key(p) for p in not_filled]}
  dst = save_hrnet(variables, f.dst, meta)
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))
  logging.info('Saved %d values (%d tensors) to %s', n, len(jax.tree.leaves(variables)), dst)
  if not_filled:
    logging.warning('%d head tensors not filled (timm backbone): use %s as --config.pose.init_from and train '
                    'with --config.mode=train_pose', len(not_filled), dst)


if __name__ == '__main__':
  _define_flags()
  app.run(_main)
