"""RePoseSD's text encoder (issue 21, part): OpenCLIP's text tower read the SD 2.x way (penultimate block, final
LayerNorm), against a PyTorch reference written with OpenCLIP's module names, and both converter layouts."""

from collections import OrderedDict

import jax
import numpy as np
import pytest

from reposedm_jax.convert import sd_text
from reposedm_jax.sd import text

torch = pytest.importorskip('torch')
nn = torch.nn


class OCBlock(nn.Module):
  def __init__(self, w, h):
    super().__init__()
    self.ln_1 = nn.LayerNorm(w)
    self.attn = nn.MultiheadAttention(w, h, batch_first=True)
    self.ln_2 = nn.LayerNorm(w)
    self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(w, 4 * w), gelu=nn.GELU(), c_proj=nn.Linear(4 * w, w)))

  def forward(self, x, mask):
    h = self.ln_1(x)
    x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class OCText(nn.Module):
  """OpenCLIP's text tower (state-dict names as open_clip's CLIP), read as SD 2.x reads it."""

  def __init__(self, cfg):
    super().__init__()
    self.cfg = cfg
    self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
    self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.width))
    self.transformer = nn.Module()
    self.transformer.resblocks = nn.ModuleList([OCBlock(cfg.width, cfg.heads) for _ in range(cfg.layers)])
    self.ln_final = nn.LayerNorm(cfg.width)
    self.text_projection = nn.Parameter(torch.randn(cfg.width, cfg.width))
    self.logit_scale = nn.Parameter(torch.ones([]))

  def forward(self, tokens):
    n = tokens.shape[1]
    x = self.token_embedding(tokens) + self.positional_embedding[:n]
    mask = torch.full((n, n), float('-inf')).triu(1)
    for blk in self.transformer.resblocks[:self.cfg.layers - self.cfg.skip_last]:
      x = blk(x, mask)
    return self.ln_final(x)


def _reference(cfg, seed=0):
  torch.manual_seed(seed)
  model = OCText(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model


def _to_transformers(sd, cfg):
  """The same weights under transformers' CLIPTextModel names (what diffusers' SD 2.x text_encoder holds)."""
  out = {'text_model.embeddings.token_embedding.weight': sd['token_embedding.weight'],
         'text_model.embeddings.position_embedding.weight': sd['positional_embedding'],
         'text_model.embeddings.position_ids': np.arange(cfg.context_length)[None],
         'text_model.final_layer_norm.weight': sd['ln_final.weight'],
         'text_model.final_layer_norm.bias': sd['ln_final.bias']}
  for i in range(cfg.layers - cfg.skip_last):  # diffusers ships the layers SD 2.x runs
    p, q = f'transformer.resblocks.{i}.', f'text_model.encoder.layers.{i}.'
    for leaf in ('weight', 'bias'):
      for name, part in zip('qkv', np.split(sd[p + f'attn.in_proj_{leaf}'], 3)):
        out[q + f'self_attn.{name}_proj.{leaf}'] = part
      out[q + f'self_attn.out_proj.{leaf}'] = sd[p + f'attn.out_proj.{leaf}']
      out[q + f'layer_norm1.{leaf}'] = sd[p + f'ln_1.{leaf}']
      out[q + f'layer_norm2.{leaf}'] = sd[p + f'ln_2.{leaf}']
      out[q + f'mlp.fc1.{leaf}'] = sd[p + f'mlp.c_fc.{leaf}']
      out[q + f'mlp.fc2.{leaf}'] = sd[p + f'mlp.c_proj.{leaf}']
  return out


def test_text_encoder_matches_openclip_reference_from_both_layouts():
  cfg = text.TINY
  ref = _reference(cfg)
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  assert 'transformer.resblocks.0.attn.in_proj_weight' in sd
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, cfg.context_length))
  with torch.no_grad():
    want = ref(torch.from_numpy(tokens)).numpy()
  model = text.TextEncoder(cfg)
  from_oc = sd_text.convert_state_dict(sd, cfg)
  from_hf = sd_text.convert_state_dict(_to_transformers(sd, cfg), cfg)
  jax.tree.map(np.testing.assert_array_equal, from_oc, from_hf)
  got = np.asarray(jax.jit(lambda p, t: model.apply({'params': p}, t))(from_oc, tokens))
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The causal mask: a later token does not change an earlier position's output.
  other = tokens.copy()
  other[:, -1] = (other[:, -1] + 1) % cfg.vocab_size
  got2 = np.asarray(model.apply({'params': from_oc}, other))
  np.testing.assert_allclose(got2[:, :-1], got[:, :-1], atol=1e-6)
  assert np.abs(got2[:, -1] - got[:, -1]).max() > 1e-4


def test_text_converter_lists_mismatches_and_the_real_size():
  cfg = text.TINY
  sd = {k: v.detach().numpy() for k, v in _reference(cfg).state_dict().items()}
  del sd['ln_final.bias']
  sd['transformer.resblocks.0.mlp.c_fc.weight'] = np.zeros((5, 5), np.float32)
  with pytest.raises(ValueError, match='1 missing.*final_layer_norm/bias.*1 mis-shaped.*layers.0.fc1.weight'):
    sd_text.convert_state_dict(sd, cfg)
  shapes = sd_text.expected_shapes(text.TextConfig())
  n = sum(int(np.prod(s)) for s in shapes.values())
  assert n == 49408 * 1024 + 77 * 1024 + 23 * 12_596_224 + 2 * 1024  # ViT-H/14's text tower without its last block
  assert shapes[('layers_22', 'fc1', 'kernel')] == (1024, 4096)
