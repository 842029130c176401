"""Converts Stable Diffusion 2.x's U-Net (diffusers' `unet/diffusion_pytorch_model.safetensors`, or a torch file of
the same state dict) into `sd/unet.py`'s parameters, optionally widening conv_in for HumanSD's pose latent.

Names map as the VAE's do (numbered parts joined by '_', convs OIHW -> HWIO, linears transposed, a norm's weight ->
scale); every missing, unexpected and mis-shaped tensor is listed in one ValueError. `--extra_in_channels 4` appends
zero input weights to conv_in, so the converted model computes SD's function exactly until fine-tuning moves them
(HumanSD's and the paper's noisy latent + pose latent input). The original ldm layout (`model.diffusion_model.
input_blocks.N...`) is refused with a clear message: convert it with diffusers' own script first.

  python -m reposedm_jax.convert sd --src unet/diffusion_pytorch_model.safetensors --dst weights/sd21_unet \
      [--preset sd21|tiny] [--extra_in_channels 4]
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


def convert_state_dict(sd: Mapping[str, np.ndarray], cfg: UNetConfig, extra_in_channels: int = 0) -> dict:
  """A diffusers SD U-Net state dict -> the Flax params tree of `cfg` with conv_in widened by extra_in_channels."""
  if any(k.startswith(('model.diffusion_model.', 'input_blocks.')) for k in sd):
    raise ValueError('this is the original ldm U-Net layout (model.diffusion_model.input_blocks...): convert it '
                     "to diffusers' layout first (diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py)")
  plan = mapping.match_keys(sd.items(), expected_shapes(cfg), flax_path,
                            lambda shape: torch_layout(np.empty(shape, np.uint8)).shape,
                            f'SD U-Net state dict does not match block_out_channels={tuple(cfg.block_out_channels)}')
  params = mapping.nest(plan, sd, lambda v: np.ascontiguousarray(torch_layout(np.asarray(v, np.float32))))
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
