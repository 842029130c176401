"""RePoseSD's U-Net (issue 21, part): parity with diffusers' UNet2DConditionModel on random weights, through the
names a converter maps (diffusers' keys with numbered parts joined by '_', convs OIHW -> HWIO, linears transposed)."""

import jax
import numpy as np
import pytest

import dataclasses

from reposedm_jax.convert import mapping
from reposedm_jax.convert import sd as sd_convert
from reposedm_jax.convert.vae import torch_layout, flax_path
from reposedm_jax.sd import unet

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')


def _torch_unet(cfg, seed=0):
  torch.manual_seed(seed)
  n = len(cfg.block_out_channels)
  model = diffusers.UNet2DConditionModel(
      sample_size=8, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
      down_block_types=('CrossAttnDownBlock2D',) * (n - 1) + ('DownBlock2D',),
      up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * (n - 1), block_out_channels=cfg.block_out_channels,
      layers_per_block=cfg.layers_per_block, attention_head_dim=cfg.attention_head_dim,
      cross_attention_dim=cfg.cross_attention_dim, norm_num_groups=cfg.norm_groups, use_linear_projection=True)
  with torch.no_grad():  # non-trivial norms and biases
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _expected(cfg):
  x, t, c = np.zeros((1, 8, 8, cfg.in_channels)), np.zeros((1,)), np.zeros((1, 5, cfg.cross_attention_dim))
  params = jax.eval_shape(lambda: unet.UNet2DConditionModel(cfg).init(jax.random.key(0), x, t, c))['params']
  return {tuple(k.key for k in p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_tiny_unet_matches_diffusers():
  cfg = unet.TINY
  tm = _torch_unet(cfg)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  plan = mapping.match_keys(sd.items(), _expected(cfg), flax_path, lambda s: torch_layout(np.empty(s, np.uint8)).shape,
                            'SD U-Net')
  params = mapping.nest(plan, sd, lambda v: np.ascontiguousarray(torch_layout(np.asarray(v, np.float32))))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
  t = np.asarray([3, 700])
  ctx = rng.normal(size=(2, 5, cfg.cross_attention_dim)).astype(np.float32)
  with torch.no_grad():
    want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
              encoder_hidden_states=torch.from_numpy(ctx)).sample.numpy().transpose(0, 2, 3, 1)
  model = unet.UNet2DConditionModel(cfg)
  got = np.asarray(jax.jit(lambda p, x, t, c: model.apply({'params': p}, x, t, c))(params, x, t, ctx))
  np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_sd21_parameter_count_and_names():
  shapes = _expected(unet.UNetConfig())
  assert sum(int(np.prod(s)) for s in shapes.values()) == 865_910_724  # diffusers' SD-2.1 U-Net
  assert shapes[('down_blocks_0', 'attentions_0', 'transformer_blocks_0', 'attn2', 'to_k', 'kernel')] == (1024, 320)
  assert shapes[('up_blocks_3', 'resnets_2', 'conv1', 'kernel')] == (3, 3, 640, 320)


def test_converter_widens_conv_in_with_zeros_so_the_pose_latent_changes_nothing_yet():
  cfg = unet.TINY
  tm = _torch_unet(cfg, seed=1)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  params = sd_convert.convert_state_dict(sd, cfg, extra_in_channels=4)
  assert params['conv_in']['kernel'].shape == (3, 3, 8, 32)
  rng = np.random.default_rng(1)
  x, pose = rng.normal(size=(1, 8, 8, 4)).astype(np.float32), rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
  t, ctx = np.asarray([10]), rng.normal(size=(1, 3, cfg.cross_attention_dim)).astype(np.float32)
  with torch.no_grad():
    want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
              encoder_hidden_states=torch.from_numpy(ctx)).sample.numpy().transpose(0, 2, 3, 1)
  wide = unet.UNet2DConditionModel(dataclasses.replace(cfg, in_channels=8))
  got = wide.apply({'params': params}, np.concatenate([x, pose], -1), t, ctx)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4 * max(1.0, np.abs(want).max()))
  bad = dict(sd)
  bad['mid_block.attentions.0.proj_in.weight'] = np.zeros((3, 3), np.float32)
  del bad['conv_out.bias']
  with pytest.raises(ValueError, match='1 missing.*conv_out/bias.*1 mis-shaped.*proj_in'):
    sd_convert.convert_state_dict(bad, cfg)
  with pytest.raises(ValueError, match=r"1 unexpected \['conv_in.weight"):  # an ldm name is read as diffusers' one
    sd_convert.convert_state_dict({'model.diffusion_model.input_blocks.0.0.weight': np.zeros(1)}, cfg)


@pytest.mark.parametrize('cfg', [unet.TINY, dataclasses.replace(unet.TINY, block_out_channels=(32, 64, 64),
                                                                 layers_per_block=2, attention_head_dim=(2, 4, 4))])
def test_ldm_layout_names_are_those_diffusers_own_converter_reads(cfg):
  """The ldm checkpoint is made from a diffusers one by inverting our prefix pairs; diffusers'
  `convert_ldm_unet_checkpoint` (an independent mapping) must give the diffusers state dict back exactly, and our
  converter the same parameters from both layouts (a whole-model ckpt: VAE / text keys beside are skipped)."""
  from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
  tm = _torch_unet(cfg, seed=2)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  inverse = [(dif, ldm) for ldm, dif in sd_convert.ldm_prefix_pairs(cfg)]
  ldm = {sd_convert.LDM_PREFIX + k: v for k, v in sd_convert.rename_prefixes(sd, inverse).items()}
  assert not any(k.startswith(tuple(sd_convert.LDM_PREFIX + p for p in ('down_blocks', 'up_blocks', 'mid_block')))
                 for k in ldm)
  back = convert_ldm_unet_checkpoint({k: torch.from_numpy(v) for k, v in ldm.items()}, dict(tm.config))
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k].numpy(), sd[k], err_msg=k)
  ldm['first_stage_model.encoder.conv_in.weight'] = np.zeros((1,), np.float32)
  ldm['cond_stage_model.model.token_embedding.weight'] = np.zeros((1,), np.float32)
  a, b = sd_convert.convert_state_dict(sd, cfg, 4), sd_convert.convert_state_dict(ldm, cfg, 4)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_full_size_sd21_layouts_map_completely_without_their_data():
  """SD-2.1's own key list and shapes (diffusers' U-Net built on the meta device: no memory), in diffusers' layout
  and, through diffusers' converter's inverse check, in ldm's: every tensor maps, nothing is left over."""
  cfg = unet.UNetConfig()
  with torch.device('meta'):
    tm = diffusers.UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
        up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3)
  shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
  fake = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}  # shapes without data
  _, plan = sd_convert.plan(fake, cfg)
  assert len(plan) == len(shapes) == 686
  assert sum(int(np.prod(s)) for s in shapes.values()) == 865_910_724
  from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
  inverse = [(dif, ldm) for ldm, dif in sd_convert.ldm_prefix_pairs(cfg)]
  ldm = {sd_convert.LDM_PREFIX + k: v for k, v in sd_convert.rename_prefixes(fake, inverse).items()}
  assert 'model.diffusion_model.output_blocks.8.2.conv.weight' in ldm  # SD's last attention upsampler
  assert 'model.diffusion_model.input_blocks.11.0.out_layers.3.weight' in ldm
  meta = {k: torch.empty(v.shape, device='meta') for k, v in ldm.items()}
  back = convert_ldm_unet_checkpoint(meta, dict(tm.config))
  assert {k: tuple(v.shape) for k, v in back.items()} == shapes
  _, ldm_plan = sd_convert.plan(ldm, cfg)
  assert ldm_plan == plan
