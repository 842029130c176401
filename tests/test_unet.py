"""PIDMUNet: shapes, padding, zero-init, dropout, parameter count, and PyTorch parity.

The PyTorch reference (tools/pidm_torch_reference.py) is written independently from the description of
PIDM's network (shared/reference/pidm-and-benchmarks.md section 1d), with PIDM's
module names so that its state dict has PIDM's key names. It is first checked
against the key list of PIDM's released checkpoint (tests/data/pidm_keys.json) at
the full config, then used at a tiny config for numerical parity.
"""

import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reposedm_jax.convert import pidm as pidm_convert
from reposedm_jax.models import appearance
from reposedm_jax.models import layers
from reposedm_jax.models.unet import PIDMUNet
from tools import pidm_torch_reference

KEYS_JSON = pathlib.Path(__file__).parent / 'data' / 'pidm_keys.json'
TINY = dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_ds=(2, 4),
            norm_groups=8, dropout=0.1)
# Parity config: two ResBlocks per level (as PIDM) so the attention-placement rules
# (last input ResBlock of a level, output block num_res_blocks - 1) are exercised.
PARITY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=2, attention_ds=(1, 2),
              norm_groups=4, dropout=0.1)
PIDM_FULL = dict(model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                 attention_ds=(8, 16, 32), norm_groups=32, dropout=0.1)


pytestmark = pytest.mark.usefixtures('fast_compile')


def _inputs(model, batch, height, width, seed=0):
  rng = np.random.default_rng(seed)
  x_t = jnp.asarray(rng.standard_normal((batch, height, width, model.image_channels)), jnp.float32)
  pose = jnp.asarray(rng.uniform(size=(batch, height, width, model.pose_channels)), jnp.float32)
  src = jnp.asarray(rng.uniform(-1, 1, (batch, height, width, model.image_channels)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)
  return x_t, t, pose, src


@functools.lru_cache(maxsize=None)
def _jit_apply(model, train):
  return jax.jit(functools.partial(model.apply, train=train))


@pytest.fixture(scope='module')
def tiny():
  model = PIDMUNet(**TINY)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), *_inputs(model, 1, 8, 8))
  return model, variables


def test_output_shape_and_zero_init(tiny):
  model, variables = tiny
  out = _jit_apply(model, False)(variables, *_inputs(model, 2, 32, 32))
  assert out.shape == (2, 32, 32, 2 * model.image_channels) and out.dtype == jnp.float32
  # out.2 is zero-initialised (resnet_use_zero_module), so the initial output is exactly 0.
  assert np.all(np.asarray(out) == 0.0)
  # 26 x 18 is not a multiple of 4: padded to 28 x 20 inside, cropped back at the end.
  # (Shapes only here; test_full_model_parity_through_converter runs the padding path.)
  out = jax.eval_shape(_jit_apply(model, False), variables, *_inputs(model, 2, 26, 18))
  assert out.shape == (2, 26, 18, 2 * model.image_channels)


def test_encoder_maps(tiny):
  model, variables = tiny
  _, _, _, src = _inputs(model, 2, 26, 18)
  feats = jax.eval_shape(
      functools.partial(model.apply, method=PIDMUNet.encode, train=False), variables, src)
  levels = len(TINY['channel_mult'])
  assert len(feats) == 1 + levels * TINY['num_res_blocks'] + (levels - 1)
  plan = appearance.input_block_plan(32, (1, 2, 2), 1)
  assert [f.shape for f in feats] == [
      (2, 28 // s.ds, 20 // s.ds, s.out_channels) for s in plan]


def test_full_config_shapes_at_256x176():
  model = PIDMUNet(**PIDM_FULL)
  x_t, t, pose, src = (jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _inputs(model, 1, 256, 176))
  variables = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), x_t, t, pose, src)
  feats = jax.eval_shape(
      functools.partial(model.apply, method=PIDMUNet.encode, train=False), variables, src)
  assert len(feats) == 18  # PIDM's encoder returns 18 maps.
  assert feats[0].shape == (1, 256, 192, 128) and feats[-1].shape == (1, 8, 6, 512)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x_t, t, pose, src)
  assert out.shape == (1, 256, 176, 6)


def test_dropout_only_in_training(tiny):
  model, variables = tiny
  # Random weights everywhere: with the zero-init convs, dropout would not reach the output.
  rng = np.random.default_rng(1)
  noisy = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32), variables)
  inputs = _inputs(model, 2, 32, 32)
  eval_a = _jit_apply(model, False)(noisy, *inputs)
  eval_b = _jit_apply(model, False)(noisy, *inputs)
  train = lambda seed: _jit_apply(model, True)(noisy, *inputs, rngs={'dropout': jax.random.key(seed)})
  train_a, train_a2, train_b = train(0), train(0), train(1)
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(train_a, train_a2)
  assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-3
  assert np.abs(np.asarray(train_a) - np.asarray(eval_a)).max() > 1e-3


def test_full_config_param_count_matches_pidm_checkpoint():
  info = json.loads(KEYS_JSON.read_text())
  used = [k for k in info['keys'] if not pidm_convert.is_unused_pidm_key(k['key'])]
  total = sum(math.prod(k['shape']) for k in info['keys'])
  expected = sum(math.prod(k['shape']) for k in used)
  assert total == info['param_count'] == 180_355_718
  assert total - expected == 17_981_312  # ~18.0 M never used by PIDM's forward pass.
  shapes = pidm_convert.expected_param_shapes(PIDMUNet(**PIDM_FULL))
  assert len(shapes) == len(used) == 668
  assert sum(math.prod(s.shape) for s in shapes.values()) == expected == 162_374_406


# ---------------------------------------------------------------- PyTorch reference

def _torch_reference():
  """(torch, ResBlock, Attention, UNet) of the PyTorch reference (tools/pidm_torch_reference.py)."""
  return (pytest.importorskip('torch'),) + pidm_torch_reference.build()[1:]


def _randomise(module, seed):
  pytest.importorskip('torch')
  return pidm_torch_reference.randomise(module, seed)


def _block_params(module):
  """Converts a reference block's state dict with the converter's name and layout rules."""
  flat = {}
  for key, value in module.state_dict().items():
    if not pidm_convert.is_unused_pidm_key(key):
      value = value.numpy()
      path = pidm_convert.pidm_key_to_flax_path(key, value.ndim)
      flat[path] = pidm_convert.torch_to_flax_layout(key, value)
  return {'params': pidm_convert.unflatten_params(flat)}


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def test_reference_matches_pidm_checkpoint_layout():
  torch, _, _, UNet = _torch_reference()
  with torch.device('meta'):  # No memory for the 180 M parameters.
    ref = UNet(**PIDM_FULL)
  got = {k: list(v.shape) for k, v in ref.state_dict().items()}
  want = {k['key']: k['shape'] for k in json.loads(KEYS_JSON.read_text())['keys']}
  assert got == want


@pytest.mark.parametrize('cin,cout,mode,with_emb', [
    (16, 32, None, True), (32, 32, 'down', True), (32, 32, 'up', True), (16, 32, None, False),
    (32, 32, 'down', False)])
def test_resblock_parity(cin, cout, mode, with_emb):
  torch, ResBlock, _, _ = _torch_reference()
  ref = _randomise(ResBlock(cin, cout, 64, 8, 0.1, up=mode == 'up', down=mode == 'down'), seed=cin + cout)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 6, cin)).astype(np.float32)
  emb = rng.standard_normal((2, 64)).astype(np.float32) if with_emb else None
  with torch.no_grad():
    want = ref(torch.from_numpy(_nchw(x)), None if emb is None else torch.from_numpy(emb)).numpy()
  block = layers.ResBlock(cout, dropout=0.1, norm_groups=8, up=mode == 'up', down=mode == 'down')
  params = _block_params(ref)
  if not with_emb:  # The source encoder's ResBlocks have no emb_layers.
    del params['params']['emb_layers_1']
  got = block.apply(params, jnp.asarray(x), None if emb is None else jnp.asarray(emb), False)
  np.testing.assert_allclose(_nchw(got), want, rtol=1e-5, atol=1e-5)


def test_cross_attention_parity():
  torch, _, Attention, _ = _torch_reference()
  ref = _randomise(Attention(32, 8), seed=3)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 6, 5, 32)).astype(np.float32)
  cond = rng.standard_normal((2, 6, 5, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(_nchw(x)), torch.from_numpy(_nchw(cond))).numpy()
  got = layers.CrossAttention(8).apply(_block_params(ref), jnp.asarray(x), jnp.asarray(cond))
  np.testing.assert_allclose(_nchw(got), want, rtol=1e-5, atol=1e-5)


def test_timestep_embedding_order():
  emb = np.asarray(layers.timestep_embedding(jnp.array([0, 7]), 8))
  freqs = np.exp(-np.log(1e4) * np.arange(4) / 4)
  np.testing.assert_allclose(emb[1], np.concatenate([np.cos(7 * freqs), np.sin(7 * freqs)]), rtol=1e-6)
  np.testing.assert_array_equal(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_full_model_parity_through_converter():
  """A PIDM-named state dict -> converter -> PIDMUNet reproduces the reference U-Net."""
  torch, _, _, UNet = _torch_reference()
  ref = _randomise(UNet(**PARITY), seed=0)
  model = PIDMUNet(**PARITY)
  params = pidm_convert.convert_pidm_state_dict(
      {k: v.numpy() for k, v in ref.state_dict().items()}, model)
  # 15 x 11 exercises the padding path: the reference sees the same zero-padded 16 x 12 input.
  x_t, t, pose, src = _inputs(model, 2, 15, 11, seed=4)
  padded = [np.pad(np.asarray(a), ((0, 0), (0, 1), (0, 1), (0, 0))) for a in (x_t, pose, src)]
  with torch.no_grad():
    want = ref(*(torch.from_numpy(_nchw(a)) for a in padded[:1]), torch.from_numpy(np.array(t)),
               *(torch.from_numpy(_nchw(a)) for a in padded[1:])).numpy()[:, :, :15, :11]
  got = _jit_apply(model, False)({'params': params}, x_t, t, pose, src)
  assert np.abs(want).max() > 0.1  # A meaningful, non-degenerate comparison.
  np.testing.assert_allclose(_nchw(got), want, rtol=1e-4, atol=1e-4)
