"""Converts SD 2.x's text encoder into `sd/text.py`'s parameters, from either layout users hold:

  transformers / diffusers `text_encoder` (CLIPTextModel, 23 layers for SD 2.x):
      text_model.embeddings.token_embedding.weight, text_model.encoder.layers.N.self_attn.q_proj.weight, ...
  OpenCLIP (`open_clip_pytorch_model.bin` of ViT-H-14, 24 text blocks, attention as one in_proj):
      token_embedding.weight, positional_embedding, transformer.resblocks.N.attn.in_proj_weight, mlp.c_fc, ...
Both are normalised to one naming first (OpenCLIP's in_proj split into q, k, v), then mapped strictly: every
missing, unexpected and mis-shaped tensor in one ValueError. Dropped on purpose: the blocks SD 2.x does not run
(`skip_last`), OpenCLIP's image tower (`visual.*`), `text_projection`, `logit_scale`, `attn_mask` and
transformers' `position_ids` buffers.

  python -m reposedm_jax.convert sd_text --src text_encoder/model.safetensors --dst weights/sd21_text
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
from reposedm_jax.convert import mapping
from reposedm_jax.convert.vae import flax_path, load_state_dict
from reposedm_jax.sd.text import TINY, TextConfig, TextEncoder

PRESETS = {'vit_h14': TextConfig(), 'tiny': TINY}
_DROPPED = re.compile(r'^(visual\.|text_projection|logit_scale|attn_mask|text_model\.embeddings\.position_ids)')
_HF = {'self_attn.q_proj': 'q', 'self_attn.k_proj': 'k', 'self_attn.v_proj': 'v', 'self_attn.out_proj': 'out',
       'layer_norm1': 'ln_1', 'layer_norm2': 'ln_2', 'mlp.fc1': 'fc1', 'mlp.fc2': 'fc2'}
_OC = {'attn.out_proj': 'out', 'ln_1': 'ln_1', 'ln_2': 'ln_2', 'mlp.c_fc': 'fc1', 'mlp.c_proj': 'fc2'}


META_FILE = 'text.json'


def normalise(sd: Mapping[str, np.ndarray], cfg: TextConfig) -> dict[str, np.ndarray]:
  """Either layout -> {'token_embedding.weight', 'position_embedding', 'layers.N.<q|k|v|out|...>.<weight|bias>',
  'final_layer_norm.<weight|bias>'}; blocks at or past layers - skip_last are dropped."""
  run = cfg.layers - cfg.skip_last
  out = {}
  for key, value in sd.items():
    key = key[len('model.'):] if key.startswith('model.') else key
    if _DROPPED.match(key):
      continue
    if key.startswith('text_model.'):
      k = key[len('text_model.'):]
      k = {'embeddings.token_embedding.weight': 'token_embedding.weight',
           'embeddings.position_embedding.weight': 'position_embedding'}.get(k, k)
      m = re.match(r'^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$', k)
      if m:
        i, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        if i >= run:
          continue
        k = f'layers.{i}.{_HF.get(part, "<" + part + ">")}.{leaf}'
      out[k] = value
      continue
    if key == 'positional_embedding':
      out['position_embedding'] = value
      continue
    m = re.match(r'^transformer\.resblocks\.(\d+)\.(.+)$', key)
    if m:
      i, rest = int(m.group(1)), m.group(2)
      if i >= run:
        continue
      if rest in ('attn.in_proj_weight', 'attn.in_proj_bias'):
        leaf = 'weight' if rest.endswith('weight') else 'bias'
        for name, part in zip(('q', 'k', 'v'), np.split(np.asarray(value), 3, axis=0)):
          out[f'layers.{i}.{name}.{leaf}'] = part
        continue
      part, _, leaf = rest.rpartition('.')
      out[f'layers.{i}.{_OC.get(part, "<" + part + ">")}.{leaf}'] = value
      continue
    out[{'ln_final.weight': 'final_layer_norm.weight', 'ln_final.bias': 'final_layer_norm.bias'}.get(key, key)] = value
  return out


def _target(key: str, ndim: int) -> tuple:
  if key == 'position_embedding':
    return ('position_embedding',)
  if key == 'token_embedding.weight':
    return ('token_embedding', 'embedding')
  return flax_path(key, ndim)


def expected_shapes(cfg: TextConfig) -> dict:
  params = jax.eval_shape(lambda: TextEncoder(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))['params']
  return {tuple(k.key for k in p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def convert_state_dict(sd: Mapping[str, np.ndarray], cfg: TextConfig) -> dict:
  """Either layout -> the Flax params of TextEncoder(cfg) (numpy float32); linear weights (out, in) -> (in, out)."""
  linear = lambda k: k.startswith('layers.') and k.endswith('.weight') and '.ln_' not in k  # noqa: E731
  norm = {k: (np.asarray(v).T if linear(k) else np.asarray(v)) for k, v in normalise(sd, cfg).items()}
  plan = mapping.match_keys(norm.items(), expected_shapes(cfg), _target, lambda shape: shape,
                            f'text encoder state dict does not match width={cfg.width}, layers={cfg.layers} '
                            f'(skip_last={cfg.skip_last})')
  return mapping.nest(plan, norm, lambda v: np.ascontiguousarray(v, dtype=np.float32))


def _define_flags():
  flags.DEFINE_string('src', None, "diffusers' text_encoder/model.safetensors or OpenCLIP's open_clip_pytorch_model.bin")
  flags.DEFINE_string('dst', None, 'output directory (params/)')
  flags.DEFINE_enum('preset', 'vit_h14', list(PRESETS), 'architecture')
  flags.mark_flags_as_required(['src', 'dst'])


def _main(argv):
  del argv
  f = flags.FLAGS
  cfg = PRESETS[f.preset]
  params = convert_state_dict(load_state_dict(f.src), cfg)
  dst = checkpoint.save_params(os.path.join(os.path.abspath(f.dst), 'params'), params)
  with open(os.path.join(os.path.abspath(f.dst), META_FILE), 'w') as fh:  # the architecture, for RePoseSD
    json.dump({**dataclasses.asdict(cfg), 'source': os.path.abspath(f.src)}, fh, indent=1)
  print(f'Converted {sum(np.size(v) for v in jax.tree.leaves(params)):,} text-encoder parameters to {dst}')
