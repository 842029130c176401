"""Converts Stable Diffusion 2.x's U-Net (diffusers' `unet/diffusion_pytorch_model.safetensors`, or a torch file of
the same state dict) into `sd/unet.py`'s parameters, optionally widening conv_in for HumanSD's pose latent.

Names map as the VAE's do (numbered parts joined by '_', convs OIHW -> HWIO, linears transposed, a norm's weight ->
scale); every missing, unexpected and mis-shaped tensor is listed in one ValueError. `--extra_in_channels 4` appends
zero input weights to conv_in, so the converted model computes SD's function exactly until fine-tuning moves them
(HumanSD's and the paper's noisy latent + pose latent input). The original ldm layout (Stability's
`v2-1_512-ema-pruned.ckpt` / `.safetensors`: `model.diffusion_model.input_blocks.N...`, the VAE and text tower
beside it are skipped) is renamed to diffusers' first (`ldm_prefix_pairs`, checked against diffusers' own
`convert_ldm_unet_checkpoint` in the tests).

  python -m reposedm_jax.convert sd --src unet/diffusion_pytorch_model.safetensors --dst weights/sd21_unet \
      [--preset sd21|tiny] [--extra_in_channels 4]
  python -m reposedm_jax.convert sd --src v2-1_512-ema-pruned.ckpt --dst weights/sd21_unet --extra_in_channels 4
"""

import dataclasses
import json
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from reposedm_jax import checkpoint
from reposedm_jax.convert import mapping
from reposedm_jax.convert.vae import torch_layout, flax_path, load_state_dict
from reposedm_jax.sd.unet import TINY, UNet2DConditionModel, UNetConfig

PRESETS = {'sd21': UNetConfig(), 'tiny': TINY}
META_FILE = 'unet.json'


def expected_shapes(cfg: UNetConfig) -> dict:
  x, t, c = jnp.zeros((1, 8, 8, cfg.in_channels)), jnp.zeros((1,)), jnp.zeros((1, 2, cfg.cross_attention_dim))
  params = jax.eval_shape(lambda: UNet2DConditionModel(cfg).init(jax.random.key(0), x, t, c))['params']
  return {tuple(k.key for k in p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


LDM_PREFIX = 'model.diffusion_model.'
_RESNET = (('in_layers.0.', 'norm1.'), ('in_layers.2.', 'conv1.'), ('emb_layers.1.', 'time_emb_proj.'),
           ('out_layers.0.', 'norm2.'), ('out_layers.3.', 'conv2.'), ('skip_connection.', 'conv_shortcut.'))


def ldm_prefix_pairs(cfg: UNetConfig) -> list[tuple[str, str]]:
  """(ldm prefix, diffusers prefix) pairs of openaimodel's UNetModel in the SD 2.x pattern (attention at every
  level but the last; inner transformer names are the same in both layouts)."""
  levels, per = len(cfg.block_out_channels), cfg.layers_per_block
  pairs = [('time_embed.0.', 'time_embedding.linear_1.'), ('time_embed.2.', 'time_embedding.linear_2.'),
           ('input_blocks.0.0.', 'conv_in.'), ('out.0.', 'conv_norm_out.'), ('out.2.', 'conv_out.')]

  def resnet(ldm, dif):
    pairs.extend((ldm + a, dif + b) for a, b in _RESNET)

  for i in range(levels):
    for j in range(per):
      n = 1 + i * (per + 1) + j
      resnet(f'input_blocks.{n}.0.', f'down_blocks.{i}.resnets.{j}.')
      if i < levels - 1:
        pairs.append((f'input_blocks.{n}.1.', f'down_blocks.{i}.attentions.{j}.'))
    if i < levels - 1:
      pairs.append((f'input_blocks.{(i + 1) * (per + 1)}.0.op.', f'down_blocks.{i}.downsamplers.0.conv.'))
  resnet('middle_block.0.', 'mid_block.resnets.0.')
  pairs.append(('middle_block.1.', 'mid_block.attentions.0.'))
  resnet('middle_block.2.', 'mid_block.resnets.1.')
  for i in range(levels):
    attn = i > 0
    for j in range(per + 1):
      n = i * (per + 1) + j
      resnet(f'output_blocks.{n}.0.', f'up_blocks.{i}.resnets.{j}.')
      if attn:
        pairs.append((f'output_blocks.{n}.1.', f'up_blocks.{i}.attentions.{j}.'))
    if i < levels - 1:
      pairs.append((f'output_blocks.{i * (per + 1) + per}.{2 if attn else 1}.conv.', f'up_blocks.{i}.upsamplers.0.conv.'))
  return pairs


def rename_prefixes(sd: Mapping[str, np.ndarray], pairs) -> dict:
  """Keys renamed by the longest matching prefix; keys no pair matches are kept as they are (listed later)."""
  ordered = sorted(pairs, key=lambda p: -len(p[0]))
  out = {}
  for key, value in sd.items():
    new = next((dst + key[len(src):] for src, dst in ordered if key.startswith(src)), key)
    out[new] = value
  return out


def from_ldm(sd: Mapping[str, np.ndarray], cfg: UNetConfig) -> dict:
  """An ldm checkpoint (the whole model, or the U-Net alone) -> the U-Net in diffusers' names."""
  if any(k.startswith(LDM_PREFIX) for k in sd):
    sd = {k[len(LDM_PREFIX):]: v for k, v in sd.items() if k.startswith(LDM_PREFIX)}
  return rename_prefixes(sd, ldm_prefix_pairs(cfg))


def plan(sd: Mapping[str, np.ndarray], cfg: UNetConfig) -> tuple[dict, dict]:
  """(the state dict in diffusers' names, {Flax path: key}) after the strict name and shape check; reads shapes only,
  so it runs on the key list of a full-size checkpoint without its data."""
  if any(k.startswith((LDM_PREFIX, 'input_blocks.')) for k in sd):
    sd = from_ldm(sd, cfg)
  return sd, mapping.match_keys(sd.items(), expected_shapes(cfg), flax_path,
                                lambda shape: torch_layout(np.empty(shape, np.uint8)).shape,
                                f'SD U-Net state dict does not match block_out_channels={tuple(cfg.block_out_channels)}')


def convert_state_dict(sd: Mapping[str, np.ndarray], cfg: UNetConfig, extra_in_channels: int = 0) -> dict:
  """A diffusers or ldm SD U-Net state dict -> the Flax params tree of `cfg` with conv_in widened."""
  sd, plan_ = plan(sd, cfg)
  params = mapping.nest(plan_, sd, lambda v: np.ascontiguousarray(torch_layout(np.asarray(v, np.float32))))
  if extra_in_channels:
    k = params['conv_in']['kernel']  # [3, 3, in, out]
    params['conv_in']['kernel'] = np.concatenate([k, np.zeros(k.shape[:2] + (extra_in_channels,) + k.shape[3:],
                                                              k.dtype)], axis=2)
  return params


def _define_flags():
  flags.DEFINE_string('src', None, "diffusers' unet/diffusion_pytorch_model.safetensors (or a torch .bin)")
  flags.DEFINE_string('dst', None, 'output directory (params/ and unet.json)')
  flags.DEFINE_enum('preset', 'sd21', list(PRESETS), 'architecture')
  flags.DEFINE_integer('extra_in_channels', 0, 'zero-initialised extra input channels (4: the pose latent)')
  flags.mark_flags_as_required(['src', 'dst'])


def _main(argv):
  del argv
  f = flags.FLAGS
  cfg = PRESETS[f.preset]
  params = convert_state_dict(load_state_dict(f.src), cfg, f.extra_in_channels)
  dst = os.path.abspath(f.dst)
  checkpoint.save_params(os.path.join(dst, 'params'), params)
  meta = {**dataclasses.asdict(cfg), 'in_channels': cfg.in_channels + f.extra_in_channels,
          'source': os.path.abspath(f.src)}
  with open(os.path.join(dst, META_FILE), 'w') as fh:
    json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in meta.items()}, fh, indent=1)
  print(f'Converted {sum(np.size(v) for v in jax.tree.leaves(params)):,} U-Net parameters to {dst}')
