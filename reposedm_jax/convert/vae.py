"""Converts a Stable Diffusion VAE (AutoencoderKL, kl-f8) into the Flax `models/autoencoder.py` parameters.

Reads `.safetensors` without torch (safetensors.numpy) or a torch file through the restricted reader
(`torch_checkpoint`: no pickled code runs; an SD `.ckpt` holds the VAE under `state_dict`), in the three layouts
users hold, normalised to current diffusers names first:
  diffusers (current)  encoder.down_blocks.0.resnets.0.conv1.weight, mid_block.attentions.0.to_q / to_out.0
  diffusers (old)      mid_block.attentions.0.query / key / value / proj_attn
  ldm (original)       [first_stage_model.]encoder.down.N.block.M..., nin_shortcut, mid.block_1 / attn_1 (q, k,
                       v, proj_out as 1x1 convs), norm_out; decoder.up.N is diffusers' up_blocks.(L-1-N)
Then `encoder.down_blocks.0.resnets.0.conv1.weight` -> encoder/down_blocks_0/resnets_0/conv1/kernel (numbered parts
joined with '_'), conv OIHW -> HWIO, linear (O, I) -> (I, O), a norm's weight -> scale. Every missing, unexpected
and mis-shaped parameter is listed in one ValueError, before any tensor is copied.

  python -m reposedm_jax.convert vae --src vae-ft-mse-840000-ema-pruned.safetensors --dst weights/sd_vae
"""

import dataclasses
import json
import os
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from reposedm_jax import checkpoint
from reposedm_jax.convert import mapping, torch_checkpoint
from reposedm_jax.models.autoencoder import META_FILE, PRESETS, AutoencoderKL, VAEConfig
_VAE_ROOTS = ('encoder.', 'decoder.', 'quant_conv.', 'post_quant_conv.')
_OLD_ATTN = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}
_LDM_ATTN = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """{key: array} of a .safetensors file or a torch file (restricted reader)."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types for a damaged header
      raise ValueError(f'{path}: unreadable safetensors file ({type(e).__name__}: {str(e)[:160]})') from None
  obj = torch_checkpoint.load_torch_checkpoint(path, opaque_unknown=True)
  if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
    obj = obj['state_dict']
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: expected a state dict, got {type(obj).__name__}')
  return torch_checkpoint.tensor_dict(obj, path)


def _ldm_to_diffusers(key: str, levels: int) -> str:
  m = re.match(r'^(encoder|decoder)\.(.*)$', key)
  if not m:
    return key
  part, rest = m.groups()
  rest = rest.replace('nin_shortcut', 'conv_shortcut').replace('norm_out', 'conv_norm_out')
  rest = re.sub(r'^mid\.block_(\d)', lambda g: f'mid_block.resnets.{int(g.group(1)) - 1}', rest)
  rest = re.sub(r'^mid\.attn_1\.(norm|q|k|v|proj_out)\.', lambda g: f'mid_block.attentions.0.{_LDM_ATTN[g.group(1)]}.',
                rest)
  if part == 'encoder':
    rest = re.sub(r'^down\.(\d+)\.block\.(\d+)', r'down_blocks.\1.resnets.\2', rest)
    rest = re.sub(r'^down\.(\d+)\.downsample\.conv', r'down_blocks.\1.downsamplers.0.conv', rest)
  else:
    flip = lambda n: str(levels - 1 - int(n))
    rest = re.sub(r'^up\.(\d+)\.block\.(\d+)', lambda g: f'up_blocks.{flip(g.group(1))}.resnets.{g.group(2)}', rest)
    rest = re.sub(r'^up\.(\d+)\.upsample\.conv', lambda g: f'up_blocks.{flip(g.group(1))}.upsamplers.0.conv', rest)
  return f'{part}.{rest}'


def normalise_keys(sd: Mapping[str, np.ndarray], levels: int) -> dict[str, np.ndarray]:
  """Any of the three layouts (and an SD checkpoint holding other models too) -> current diffusers names."""
  out = {}
  for key, value in sd.items():
    key = key[len('first_stage_model.'):] if key.startswith('first_stage_model.') else key
    if not key.startswith(_VAE_ROOTS):
      continue  # an SD .ckpt also holds the U-Net and the text encoder
    if re.match(r'^(encoder\.down|decoder\.up|encoder\.mid|decoder\.mid|encoder\.norm_out|decoder\.norm_out)\.', key):
      key = _ldm_to_diffusers(key, levels)
      if '.attentions.0.' in key and np.ndim(value) == 4:
        value = np.asarray(value)[:, :, 0, 0]  # ldm's attention projections are 1x1 convs
    key = re.sub(r'\.attentions\.0\.(query|key|value|proj_attn)\.', lambda g: f'.attentions.0.{_OLD_ATTN[g.group(1)]}.',
                 key)
    out[key] = value
  return out


def flax_path(key: str, ndim: int) -> tuple[str, ...]:
  *modules, leaf = key.split('.')
  path = []
  for part in modules:
    if part.isdigit() and path:
      path[-1] = f'{path[-1]}_{part}'
    else:
      path.append(part)
  leaf = {'weight': 'kernel' if ndim >= 2 else 'scale', 'bias': 'bias'}.get(leaf, f'<{leaf}>')
  return tuple(path) + (leaf,)


def torch_layout(value: np.ndarray) -> np.ndarray:
  """A torch tensor in Flax layout: conv OIHW -> HWIO, linear (out, in) -> (in, out), vectors as they are."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return value.T
  return value


def expected_shapes(cfg: VAEConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  side = 2 * cfg.downsample
  variables = jax.eval_shape(AutoencoderKL(cfg).init, jax.random.key(0), jnp.zeros((1, side, side, cfg.in_channels)))
  flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def convert_state_dict(sd: Mapping[str, np.ndarray], cfg: VAEConfig) -> dict:
  """A VAE state dict in any of the three layouts -> the Flax `params` tree (numpy float32)."""
  norm = normalise_keys(sd, len(cfg.block_out_channels))
  if not norm:
    raise ValueError('no VAE parameter in this state dict (expected encoder.* / decoder.* / quant_conv.* keys)')
  plan = mapping.match_keys(norm.items(), expected_shapes(cfg), flax_path,
                            lambda shape: torch_layout(np.empty(shape, np.uint8)).shape,
                            f'VAE state dict does not match block_out_channels={tuple(cfg.block_out_channels)}')
  return mapping.nest(plan, norm, lambda v: np.ascontiguousarray(torch_layout(np.asarray(v)), dtype=np.float32))


def save_vae(params, dst: str, cfg: VAEConfig, source: str) -> str:
  dst = checkpoint.save_params(os.path.join(os.path.abspath(dst), 'params'), params)
  with open(os.path.join(os.path.dirname(dst), META_FILE), 'w') as f:
    json.dump({'block_out_channels': list(cfg.block_out_channels), 'layers_per_block': cfg.layers_per_block,
               'latent_channels': cfg.latent_channels, 'norm_groups': cfg.norm_groups,
               'scaling_factor': cfg.scaling_factor, 'source': os.path.abspath(source)}, f, indent=1)
  return os.path.dirname(dst)


def _define_flags():
  flags.DEFINE_string('src', None, 'VAE weights: .safetensors, or a torch .pt/.ckpt/.bin file')
  flags.DEFINE_string('dst', None, 'output directory (params/ and vae.json)')
  flags.DEFINE_enum('preset', 'sd', list(PRESETS), 'architecture: sd (kl-f8) or tiny (tests)')
  flags.DEFINE_float('scaling_factor', 0.18215, 'latent scale (SD 1.x/2.x: 0.18215; SDXL: 0.13025)')
  flags.mark_flags_as_required(['src', 'dst'])


def _main(argv):
  del argv
  f = flags.FLAGS
  cfg = dataclasses.replace(PRESETS[f.preset], scaling_factor=f.scaling_factor)
  params = convert_state_dict(load_state_dict(f.src), cfg)
  dst = save_vae(params, f.dst, cfg, f.src)
  print(f'Converted {sum(np.size(v) for v in jax.tree.leaves(params)):,} VAE parameters to {dst}')
