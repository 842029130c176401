"""Converts PIDM's released PyTorch weights into PIDMUNet Flax parameters.

Naming rule (the inverse is `flax_path_to_pidm_key`): split the PIDM key on '.',
append every numeric part to the name before it with '_', and map the leaf:
`weight` -> `kernel` (conv / linear, ndim >= 2) or `scale` (GroupNorm, ndim 1),
`bias` -> `bias`:
  input_blocks.11.1.to_kv.weight -> input_blocks_11_1 / to_kv / kernel
  time_embed.time_embed.0.weight -> time_embed / time_embed_0 / kernel
  encoder.input_blocks.3.0.in_layers.0.weight -> encoder / input_blocks_3_0 / in_layers_0 / scale

Layout rules: conv2d OIHW -> HWIO (`transpose(2, 3, 1, 0)`); conv1d with kernel
size 1 (O, I, 1) -> dense (I, O); linear (O, I) -> (I, O); 1-D tensors unchanged.

PIDM parameters its forward pass never uses (about 18.0 M of 180.4 M, see
shared/reference/pidm-and-benchmarks.md section 1d) are accepted and dropped:
`cond_emb_layers` (ResBlocks always get cond=None), `qkv` / `proj_out1` (the
self-attention path is commented out), `encoder.time_embed` and the encoder
ResBlocks' `emb_layers` (the encoder runs with emb=None).

Everything else is checked strictly against `jax.eval_shape(model.init, ...)`:
every missing, unexpected or mis-shaped parameter is reported in one ValueError.

CLI:
  python -m reposedm_jax.convert.pidm --src model.pt --dst /abs/or/rel/DIR \
      [--config configs/deepfashion.py]
saves the `params` tree with orbax (`StandardCheckpointer`); restore it with
`ocp.StandardCheckpointer().restore(DIR)`.
"""

import functools
import os
import re
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax import checkpoint
from reposedm_jax.convert import torch_checkpoint
from reposedm_jax.models.unet import PIDMUNet

# PIDM parameters that exist in the checkpoint but never take part in its forward pass.
UNUSED_KEY_PATTERNS = (
    re.compile(r'(^|\.)cond_emb_layers\.'),
    re.compile(r'(^|\.)qkv\.'),
    re.compile(r'(^|\.)proj_out1\.'),
    re.compile(r'^encoder\.time_embed\.'),
    re.compile(r'^encoder\..*\.emb_layers\.'),
)


def is_unused_pidm_key(key: str) -> bool:
  """True for PIDM state-dict keys the converted model does not have."""
  return any(p.search(key) for p in UNUSED_KEY_PATTERNS)


def pidm_key_to_flax_path(key: str, ndim: int) -> tuple[str, ...]:
  """Flax parameter path of a PIDM key (see module docstring); ndim picks kernel/scale."""
  *modules, leaf = key.split('.')
  path = []
  for part in modules:
    if part.isdigit():
      if not path:
        raise ValueError(f'PIDM key {key!r} starts with a number.')
      path[-1] = f'{path[-1]}_{part}'
    else:
      path.append(part)
  if leaf == 'weight':
    leaf = 'kernel' if ndim >= 2 else 'scale'
  elif leaf != 'bias':
    leaf = f'<{leaf}>'  # Not a parameter name we know: reported as unexpected.
  return tuple(path) + (leaf,)


def flax_path_to_pidm_key(path: tuple[str, ...]) -> str:
  """Inverse of `pidm_key_to_flax_path`."""
  *modules, leaf = path
  modules = [re.sub(r'_(\d+)', r'.\1', m) for m in modules]
  return '.'.join(modules + ['weight' if leaf in ('kernel', 'scale') else leaf])


def torch_to_flax_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape a PyTorch tensor of `shape` has after `torch_to_flax_layout`."""
  shape = tuple(int(s) for s in shape)
  if len(shape) == 4:  # conv2d (O, I, kh, kw) -> (kh, kw, I, O)
    return (shape[2], shape[3], shape[1], shape[0])
  if len(shape) == 3:  # conv1d over tokens (O, I, 1) -> dense (I, O)
    if shape[-1] != 1:
      raise ValueError(f'{key}: conv1d with kernel size {shape[-1]} is not supported.')
    return (shape[1], shape[0])
  if len(shape) == 2:  # linear (O, I) -> (I, O)
    return (shape[1], shape[0])
  return shape


def torch_to_flax_layout(key: str, value: np.ndarray) -> np.ndarray:
  """Re-lays a PyTorch tensor out for Flax (conv2d, conv1d-k1, linear, 1-D)."""
  torch_to_flax_shape(key, value.shape)  # Validates conv1d kernel sizes.
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:
    return value[:, :, 0].T
  if value.ndim == 2:
    return value.T
  return value


def expected_param_shapes(model: PIDMUNet) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flat {path: ShapeDtypeStruct} of the model's params, without allocating them."""
  side = model.size_multiple
  img = jax.ShapeDtypeStruct((1, side, side, model.image_channels), jnp.float32)
  pose = jax.ShapeDtypeStruct((1, side, side, model.pose_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  variables = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), img, t, pose, img)
  flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  return {tuple(k.key for k in path): leaf for path, leaf in flat}


def plan_pidm_conversion(
    key_shapes: Mapping[str, tuple[int, ...]], model: PIDMUNet,
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
  """Checks PIDM key names and shapes against the model, touching no tensor data.

  Args:
    key_shapes: PIDM key -> PyTorch shape (e.g. from the checkpoint or a key list).
    model: The PIDMUNet the parameters are for.

  Returns:
    (mapping PIDM key -> Flax path for every used key, list of unused PIDM keys).

  Raises:
    ValueError: Listing every missing, unexpected and mis-shaped parameter.
  """
  expected = expected_param_shapes(model)
  mapping, seen, unused, unexpected, misshaped = {}, set(), [], [], []
  for key, shape in key_shapes.items():
    if is_unused_pidm_key(key):
      unused.append(key)
      continue
    shape = tuple(shape)
    path = pidm_key_to_flax_path(key, len(shape))
    if path not in expected:
      unexpected.append(f'{key} {shape} (-> Flax {"/".join(path)})')
      continue
    seen.add(path)  # Present, even if mis-shaped: not reported again as missing.
    try:
      flax_shape = torch_to_flax_shape(key, shape)
    except ValueError as e:
      misshaped.append(str(e))
      continue
    if flax_shape != expected[path].shape:
      misshaped.append(
          f'{key}: PyTorch {shape} -> Flax {flax_shape}, '
          f'model expects {expected[path].shape} at {"/".join(path)}')
      continue
    mapping[key] = path
  missing = [f'{flax_path_to_pidm_key(p)} {expected[p].shape} (Flax {"/".join(p)})'
             for p in expected if p not in seen]
  if missing or unexpected or misshaped:
    lines = [f'PIDM state dict does not match the model ({len(missing)} missing, '
             f'{len(unexpected)} unexpected, {len(misshaped)} mis-shaped):']
    for title, items in (('missing', missing), ('unexpected', unexpected),
                         ('mis-shaped', misshaped)):
      lines += [f'  {title}: {item}' for item in items]
    raise ValueError('\n'.join(lines))
  return mapping, unused


def unflatten_params(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  """{('a', 'b', 'kernel'): x} -> {'a': {'b': {'kernel': x}}}."""
  tree = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def convert_pidm_state_dict(sd: Mapping[str, np.ndarray], model_config: Any) -> dict[str, Any]:
  """Maps a PIDM state dict onto the PIDMUNet parameter tree.

  All names and shapes are checked first (`plan_pidm_conversion`), so a bad
  checkpoint fails before any of its ~720 MB is copied.

  Args:
    sd: PIDM state dict, key -> array in PyTorch layout (e.g. `ckpt['ema']`).
    model_config: `config.model` (ConfigDict) or a `PIDMUNet` instance.

  Returns:
    The `params` collection as nested dicts of float32 numpy arrays; use it as
    `model.apply({'params': params}, ...)`.

  Raises:
    ValueError: Listing every missing, unexpected and mis-shaped parameter.
  """
  model = model_config if isinstance(model_config, PIDMUNet) else PIDMUNet.from_config(model_config)
  mapping, unused = plan_pidm_conversion({k: np.shape(v) for k, v in sd.items()}, model)
  params = {
      path: np.ascontiguousarray(torch_to_flax_layout(key, np.asarray(sd[key])), dtype=np.float32)
      for key, path in mapping.items()}
  logging.info('Dropped %d PIDM parameters unused by its forward pass (%d values): %s',
               len(unused), sum(int(np.prod(np.shape(sd[k]))) for k in unused), ', '.join(unused))
  return unflatten_params(params)


def load_pidm_checkpoint(path: str, entry: str = 'ema') -> dict[str, np.ndarray]:
  """Reads PIDM's `.pt` file safely and returns one state dict as numpy arrays.

  PIDM's checkpoints hold {'model', 'ema', 'scheduler', 'optimizer', 'conf'};
  inference uses 'ema'. 'conf' is a pickled pydantic object: it and any other
  non-tensor global are loaded as inert `OpaqueObject`s (never imported or run).

  Args:
    path: The checkpoint file.
    entry: Which state dict to take ('ema' or 'model'). A file that is itself a
      bare state dict (no such entry, all values arrays) is accepted as is.

  Returns:
    {key: array} with any DistributedDataParallel 'module.' prefix removed.
  """
  ckpt, opaque = torch_checkpoint.load_torch_checkpoint(
      path, opaque_unknown=True, return_opaque_names=True)
  if opaque:
    logging.info('Non-tensor globals in %s kept as inert placeholders: %s', path, ', '.join(opaque))
  if not isinstance(ckpt, Mapping):
    raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}.')
  if entry in ckpt:
    sd = ckpt[entry]
  elif ckpt and all(isinstance(v, np.ndarray) for v in ckpt.values()):
    sd = ckpt
  else:
    raise ValueError(f'{path}: no {entry!r} entry; top-level keys are {sorted(map(str, ckpt))}.')
  if not isinstance(sd, Mapping):
    raise ValueError(f'{path}: entry {entry!r} is a {type(sd).__name__}, not a state dict.')
  return torch_checkpoint.tensor_dict(sd, f'{path}: {entry}')


def _define_flags():
  """CLI flags; defined only when run as a script so importing this module adds none."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  flags.DEFINE_string('src', None, 'PIDM checkpoint (.pt) to convert.', required=True)
  flags.DEFINE_string(
      'dst', None, 'Orbax checkpoint directory to write (must not exist).', required=True)
  flags.DEFINE_string('entry', 'ema', "Checkpoint entry to convert: 'ema' or 'model'.")
  config_flags.DEFINE_config_file(
      'config', os.path.join(repo, 'configs', 'base.py'),
      'Experiment config; only its `model` section is read.')


def _main(argv):
  del argv
  sd = load_pidm_checkpoint(flags.FLAGS.src, flags.FLAGS.entry)
  params = convert_pidm_state_dict(sd, flags.FLAGS.config.model)
  leaves = jax.tree.leaves(params)
  if os.path.exists(flags.FLAGS.dst):
    raise FileExistsError(f'--dst {flags.FLAGS.dst} exists; pick a new directory')
  dst = checkpoint.save_params(flags.FLAGS.dst, params)
  logging.info('Saved %d converted parameters (%d tensors) to %s',
               sum(int(np.prod(v.shape)) for v in leaves), len(leaves), dst)


if __name__ == '__main__':
  _define_flags()
  app.run(_main)
