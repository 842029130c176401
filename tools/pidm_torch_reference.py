"""PIDM's U-Net + source encoder in PyTorch, with PIDM's module names (state-dict keys = PIDM's checkpoint).

Written independently of the JAX code from the description of PIDM's network (shared/reference/
pidm-and-benchmarks.md section 1d). Two users: the parity tests (tests/test_unet.py: key list of the released
checkpoint at the full config, numerics at tiny configs) and the side-by-side speed benchmark
(tools/bench_vs_torch.py). torch is imported inside `build`, so importing this module costs nothing.
"""

import math


def build():
  """Builds PyTorch reference modules with PIDM's names (independent of the JAX code)."""
  import torch  # pylint: disable=import-outside-toplevel
  tnn, functional = torch.nn, torch.nn.functional

  def norm(c, groups):
    return tnn.GroupNorm(min(groups, c), c, eps=1e-5)

  class ResBlock(tnn.Module):

    def __init__(self, cin, cout, emb_ch, groups, dropout, up=False, down=False):
      super().__init__()
      self.up, self.down = up, down
      self.in_layers = tnn.Sequential(norm(cin, groups), tnn.SiLU(), tnn.Conv2d(cin, cout, 3, padding=1))
      self.emb_layers = tnn.Sequential(tnn.SiLU(), tnn.Linear(emb_ch, 2 * cout))
      self.cond_emb_layers = tnn.Sequential(tnn.SiLU(), tnn.Linear(cout, cout))  # Unused, as in PIDM.
      self.out_layers = tnn.Sequential(
          norm(cout, groups), tnn.SiLU(), tnn.Dropout(dropout), tnn.Conv2d(cout, cout, 3, padding=1))
      self.skip_connection = tnn.Identity() if cin == cout else tnn.Conv2d(cin, cout, 1)

    def forward(self, x, emb=None):
      h = self.in_layers[1](self.in_layers[0](x))
      if self.up:
        h, x = (functional.interpolate(a, scale_factor=2, mode='nearest') for a in (h, x))
      if self.down:
        h, x = functional.avg_pool2d(h, 2), functional.avg_pool2d(x, 2)
      h = self.out_layers[0](self.in_layers[2](h))
      if emb is not None:
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + scale) + shift
      h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
      return self.skip_connection(x) + h

  class Attention(tnn.Module):

    def __init__(self, c, groups):
      super().__init__()
      self.norm = norm(c, groups)
      self.qkv = tnn.Conv1d(c, 3 * c, 1)  # Unused (PIDM's self-attention is commented out).
      self.to_kv = tnn.Conv1d(c, 2 * c, 1)
      self.to_q = tnn.Conv1d(c, c, 1)
      self.proj_out1 = tnn.Conv1d(c, c, 1)  # Unused.
      self.proj_out2 = tnn.Conv1d(c, c, 1)

    def forward(self, x, cond):
      b, c, hgt, wid = x.shape
      x, cond = x.reshape(b, c, -1), cond.reshape(b, c, -1)
      q = self.to_q(self.norm(x))
      k, v = self.to_kv(cond).split(c, dim=1)
      s = c**-0.25
      w = torch.softmax(torch.einsum('bct,bcs->bts', q * s, k * s).float(), dim=-1)
      h = self.proj_out2(torch.einsum('bts,bcs->bct', w, v))
      return (x + h).reshape(b, c, hgt, wid)

  class Seq(tnn.Sequential):

    def forward(self, x, emb=None, cond=None):
      for layer in self:
        if isinstance(layer, ResBlock):
          x = layer(x, emb)
        elif isinstance(layer, Attention):
          x = layer(x, cond)
        else:
          x = layer(x)
      return x

  def input_blocks(in_ch, c0, mult, nrb, emb_ch, groups, dropout, attn_ds):
    ch, ds = mult[0] * c0, 1
    blocks, chans = tnn.ModuleList([Seq(tnn.Conv2d(in_ch, ch, 3, padding=1))]), [ch]
    for level, m in enumerate(mult):
      for i in range(nrb):
        mods = [ResBlock(ch, m * c0, emb_ch, groups, dropout)]
        ch = m * c0
        if attn_ds is not None and ds in attn_ds and i == nrb - 1:
          mods.append(Attention(ch, groups))
        blocks.append(Seq(*mods))
        chans.append(ch)
      if level != len(mult) - 1:
        blocks.append(Seq(ResBlock(ch, ch, emb_ch, groups, dropout, down=True)))
        chans.append(ch)
        ds *= 2
    return blocks, chans, ch, ds

  def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

  class Encoder(tnn.Module):

    def __init__(self, c0, mult, nrb, groups, dropout, image_ch):
      super().__init__()
      self.time_embed = tnn.Sequential(  # Unused, as in PIDM.
          tnn.Linear(c0, 4 * c0), tnn.SiLU(), tnn.Linear(4 * c0, 4 * c0))
      self.input_blocks = input_blocks(image_ch, c0, mult, nrb, 4 * c0, groups, dropout, None)[0]

    def forward(self, x):
      feats = []
      for block in self.input_blocks:
        x = block(x)
        feats.append(x)
      return feats

  class UNet(tnn.Module):

    def __init__(self, model_channels, channel_mult, num_res_blocks, attention_ds, norm_groups, dropout,
                 image_channels=3, pose_channels=20):
      super().__init__()
      c0, emb_ch, self.c0 = model_channels, 4 * model_channels, model_channels
      args = (norm_groups, dropout)
      self.time_embed = tnn.Module()
      self.time_embed.time_embed = tnn.Sequential(
          tnn.Linear(c0, emb_ch), tnn.SiLU(), tnn.Linear(emb_ch, emb_ch))
      self.input_blocks, chans, ch, ds = input_blocks(
          image_channels + pose_channels, c0, channel_mult, num_res_blocks, emb_ch, *args, attention_ds)
      self.middle_block = Seq(ResBlock(ch, ch, emb_ch, *args), Attention(ch, norm_groups),
                              ResBlock(ch, ch, emb_ch, *args))
      self.output_blocks = tnn.ModuleList()
      for level, m in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
          mods = [ResBlock(ch + chans.pop(), m * c0, emb_ch, *args)]
          ch = m * c0
          if ds in attention_ds and i == num_res_blocks - 1:
            mods.append(Attention(ch, norm_groups))
          if level and i == num_res_blocks:
            mods.append(ResBlock(ch, ch, emb_ch, *args, up=True))
            ds //= 2
          self.output_blocks.append(Seq(*mods))
      self.out = tnn.Sequential(
          norm(ch, norm_groups), tnn.SiLU(), tnn.Conv2d(ch, 2 * image_channels, 3, padding=1))
      self.encoder = Encoder(c0, channel_mult, num_res_blocks, norm_groups, dropout, image_channels)

    def forward(self, x_t, t, pose, src=None, feats=None):
      """The noise prediction; `feats` = encoder(src) precomputed (a sampler computes it once per image)."""
      feats = self.encoder(src) if feats is None else feats
      emb = self.time_embed.time_embed(timestep_embedding(t, self.c0))
      h, skips = torch.cat([x_t, pose], dim=1), []
      for k, block in enumerate(self.input_blocks):
        h = block(h, emb, feats[k])
        skips.append(h)
      h = self.middle_block(h, emb, feats[-1])
      for k, block in enumerate(self.output_blocks):
        h = block(torch.cat([h, skips.pop()], dim=1), emb, feats[len(feats) - 1 - k])
      return self.out(h)

  return torch, ResBlock, Attention, UNet


def randomise(module, seed):
  """Random weights everywhere (also where PIDM zero-initialises), scaled to keep O(1) activations."""
  import torch  # pylint: disable=import-outside-toplevel
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim > 1:
        p.copy_(noise / math.sqrt(p[0].numel()))
      elif name.endswith('weight'):
        p.copy_(1 + 0.1 * noise)
      else:
        p.copy_(0.1 * noise)
  return module.eval()
