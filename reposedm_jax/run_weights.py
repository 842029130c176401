"""A trained model's weights and config, read from a training workdir or an export, and written as an export.

An export directory (`python -m reposedm_jax.export`) holds:
  config.json          the run's config (what `predict` rebuilds the model from)
  export.json          what was exported: run, step, EMA or raw, format, variant, parameter count
  params/              orbax params tree (format orbax): what `--config.init_from`, `predict` and `sample` read
  params.safetensors   (format safetensors) no pickle, mmap-able. The U-Net's PIDM parameters keep PIDM's
                       state-dict names and PyTorch layouts (conv OIHW, linear (O, I), attention conv1d
                       (O, I, 1)), so `python -m reposedm_jax.convert.pidm` and PIDM's own code read them; every
                       parameter PIDM does not have (B2's RPA and aligned-source paths, under their Flax path
                       joined by '/') is stored as `reposedm/<path>` in Flax layout.
  pose/                (variant full) the frozen guide estimator's variables, as `convert hrnet` writes them
"""

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from reposedm_jax import checkpoint, pose_estimator
from reposedm_jax.convert import hrnet as hrnet_convert
from reposedm_jax.convert import pidm as pidm_convert
from reposedm_jax.models.unet import PIDMUNet

FORMATS = ('orbax', 'safetensors')
EXTRA_PREFIX = 'reposedm/'
# PIDM's attention projections are nn.Conv1d(kernel 1): (O, I, 1) in its state dict, (I, O) here.
_CONV1D = ('to_kv', 'to_q', 'qkv', 'proj_out1', 'proj_out2')


def _tuples(value):
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def read_config(path: str) -> ml_collections.ConfigDict:
  """The config a run (or an export) was made with: `path/config.json`, lists back to tuples."""
  cfg_path = os.path.join(path, 'config.json')
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'{path} has no config.json: not a training workdir or an export')
  with open(cfg_path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'export.json'))


def restore_run_params(workdir: str, step: int | None = None, ema: bool = True):
  """(params as numpy, step) of a training workdir's checkpoint `step` (None: the latest)."""
  ckpts = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckpts):
    raise FileNotFoundError(f'{workdir} has no checkpoints/')
  manager = checkpoint.make_manager(workdir, 1_000_000)  # keep=huge: reading must never clean anything up
  try:
    steps = list(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f'{ckpts} holds no finished checkpoint')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise ValueError(f'{ckpts} has no step {step}; it has {sorted(steps)}')
    state = checkpoint.restore_here(manager, step)
  finally:
    manager.close()
  return jax.tree.map(np.asarray, state['ema_params' if ema else 'params']), int(step)


def _unet_tree(config, params):
  """(the PIDM U-Net's sub-tree, prefix): b2 / full nest it under 'unet'."""
  return (params['unet'], ('unet',)) if config.variant in ('b2', 'full') else (params, ())


def to_safetensors_dict(config, params) -> dict[str, np.ndarray]:
  """params -> {name: array}: PIDM names and layouts where PIDM has the parameter, `reposedm/<path>` elsewhere."""
  expected = pidm_convert.expected_param_shapes(PIDMUNet.from_config(config.model))
  _, prefix = _unet_tree(config, params)
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value)
    inner = path[len(prefix):] if path[:len(prefix)] == prefix else None
    if inner is not None and inner in expected:
      key = pidm_convert.flax_path_to_pidm_key(inner)
      if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
      elif value.ndim == 2:
        value = value.T[..., None] if inner[-2] in _CONV1D else value.T
      out[key] = np.ascontiguousarray(value)
    else:
      out[EXTRA_PREFIX + '/'.join(path)] = np.ascontiguousarray(value)
  return out


def from_safetensors_dict(config, tensors: dict[str, np.ndarray]):
  """Inverse of `to_safetensors_dict` (the PIDM part through the PIDM converter's own checks)."""
  pidm_sd = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
  unet = traverse_util.flatten_dict(pidm_convert.convert_pidm_state_dict(pidm_sd, config.model))
  prefix = ('unet',) if config.variant in ('b2', 'full') else ()
  flat = {prefix + p: v for p, v in unet.items()}
  for k, v in tensors.items():
    if k.startswith(EXTRA_PREFIX):
      flat[tuple(k[len(EXTRA_PREFIX):].split('/'))] = np.asarray(v)
  return traverse_util.unflatten_dict(flat)


def export(workdir: str, dst: str, *, step: int | None = None, ema: bool = True, fmt: str = 'orbax') -> dict:
  """Writes `dst` (module docstring) from a training workdir; returns export.json's record."""
  if fmt not in FORMATS:
    raise ValueError(f'--format must be one of {FORMATS}, got {fmt!r}')
  config = read_config(workdir)
  real_dst, real_run = os.path.realpath(dst), os.path.realpath(workdir)
  if real_run == real_dst or real_run.startswith(real_dst + os.sep) or real_dst.startswith(real_run + os.sep):
    raise ValueError(f'--dst {dst} overlaps the run {workdir}: export next to it, not into or above it')
  if os.path.exists(dst) and not (os.path.isdir(dst) and (not os.listdir(dst) or is_export(dst))):
    raise ValueError(f'--dst {dst} exists and is not an earlier export: refusing to replace it')
  params, step = restore_run_params(workdir, step, ema)
  tmp = dst.rstrip(os.sep) + '.tmp'  # written whole, then moved into place: no half export under dst
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  final, dst = dst, tmp
  shutil.copy(os.path.join(workdir, 'config.json'), os.path.join(dst, 'config.json'))
  if fmt == 'orbax':
    checkpoint.save_params(os.path.join(dst, 'params'), params)
  else:
    from safetensors.numpy import save_file
    save_file(to_safetensors_dict(config, params), os.path.join(dst, 'params.safetensors'),
              metadata={'variant': str(config.variant), 'step': str(step), 'weights': 'ema' if ema else 'raw'})
  if config.variant == 'full' and config.pif.estimator == 'hrnet':
    guide = config.pose.checkpoint or os.path.join(workdir, 'pose')
    variables, _ = pose_estimator.load_pose_estimator(config, guide)
    hrnet_convert.save_hrnet(jax.tree.map(np.asarray, variables), os.path.join(dst, 'pose'),
                             {'arch': config.pose.arch, 'exported_from': os.path.abspath(guide)})
  record = {'run': os.path.abspath(workdir), 'step': step, 'weights': 'ema' if ema else 'raw', 'format': fmt,
            'variant': config.variant, 'parameters': int(sum(np.size(v) for v in jax.tree.leaves(params)))}
  with open(os.path.join(dst, 'export.json'), 'w') as f:
    json.dump(record, f, indent=1)
  if os.path.exists(final):
    shutil.rmtree(final)  # an earlier export or an empty directory (checked above)
  os.replace(dst, final)
  return record


def load_export_params(path: str, config) -> Any:
  """The params of an export directory, in either format."""
  if os.path.isdir(os.path.join(path, 'params')):
    with ocp.StandardCheckpointer() as ckptr:
      return jax.tree.map(np.asarray, ckptr.restore(os.path.abspath(os.path.join(path, 'params'))))
  st = os.path.join(path, 'params.safetensors')
  if os.path.isfile(st):
    from safetensors.numpy import load_file
    return from_safetensors_dict(config, load_file(st))
  raise FileNotFoundError(f'{path} is an export without params/ or params.safetensors')
