"""PIDM weight conversion (key mapping, strict checks) and the safe torch/numpy pickle readers."""

import collections
import json
import logging
import math
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from reposedm_jax import checkpoint
from reposedm_jax.convert import pidm as pidm_convert
from reposedm_jax.convert import torch_checkpoint
from reposedm_jax.convert.torch_checkpoint import UnsafePickleError
from reposedm_jax.models.unet import PIDMUNet

KEYS_JSON = pathlib.Path(__file__).parent / 'data' / 'pidm_keys.json'
PIDM_FULL = PIDMUNet(model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                     attention_ds=(8, 16, 32), norm_groups=32)
TINY = PIDMUNet(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_ds=(2, 4),
                norm_groups=8)
ATTENTION_PROJECTIONS = ('to_q', 'to_kv', 'proj_out2')  # PIDM conv1d (O, I, 1) weights.


def _pidm_key_shapes():
  return {k['key']: tuple(k['shape']) for k in json.loads(KEYS_JSON.read_text())['keys']}


def _shape_only_state_dict(key_shapes):
  # Zero-stride views: a full-size PIDM state dict that costs no memory.
  return {k: np.broadcast_to(np.float32(0), s) for k, s in key_shapes.items()}


# ---------------------------------------------------------------- key mapping

def test_full_pidm_key_list_maps_onto_model():
  key_shapes = _pidm_key_shapes()
  mapping, unused = pidm_convert.plan_pidm_conversion(key_shapes, PIDM_FULL)
  expected = pidm_convert.expected_param_shapes(PIDM_FULL)
  assert len(mapping) + len(unused) == len(key_shapes) == 852
  assert sorted(mapping.values()) == sorted(expected)  # Every Flax param filled exactly once.
  assert sum(math.prod(key_shapes[k]) for k in unused) == 17_981_312
  # The unused keys are exactly the families PIDM's forward pass never touches.
  families = {next(p for p in ('cond_emb_layers', 'qkv', 'proj_out1', 'encoder.time_embed', 'emb_layers')
                   if p in k) for k in unused}
  assert families == {'cond_emb_layers', 'qkv', 'proj_out1', 'encoder.time_embed', 'emb_layers'}
  assert all(k.startswith('encoder.') for k in unused if '.emb_layers.' in k)
  # A few explicit names, as documented in the naming rule.
  assert mapping['time_embed.time_embed.0.weight'] == ('time_embed', 'time_embed_0', 'kernel')
  assert mapping['input_blocks.11.1.to_kv.weight'] == ('input_blocks_11_1', 'to_kv', 'kernel')
  assert mapping['output_blocks.7.1.proj_out2.bias'] == ('output_blocks_7_1', 'proj_out2', 'bias')
  assert mapping['encoder.input_blocks.13.0.skip_connection.weight'] == (
      'encoder', 'input_blocks_13_0', 'skip_connection', 'kernel')
  assert mapping['out.0.weight'] == ('out_0', 'scale')
  for key, path in mapping.items():
    assert pidm_convert.flax_path_to_pidm_key(path) == key


def test_converter_lists_every_problem_in_one_error():
  sd = _shape_only_state_dict(_pidm_key_shapes())
  del sd['input_blocks.1.0.in_layers.2.weight'], sd['out.2.bias']
  sd['middle_block.1.to_q.weight'] = np.broadcast_to(np.float32(0), (512, 256, 1))
  sd['output_blocks.3.0.emb_layers.1.weight'] = np.broadcast_to(np.float32(0), (1024, 256))
  sd['input_blocks.5.0.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as info:
    pidm_convert.convert_pidm_state_dict(sd, PIDM_FULL)
  msg = str(info.value)
  assert '2 missing, 1 unexpected, 2 mis-shaped' in msg
  for name in ['input_blocks.1.0.in_layers.2.weight', 'out.2.bias', 'middle_block.1.to_q.weight',
               'output_blocks.3.0.emb_layers.1.weight', 'input_blocks.5.0.extra.weight']:
    assert name in msg


def test_converter_accepts_a_config_section():
  ml_collections = pytest.importorskip('ml_collections')
  model = ml_collections.ConfigDict(dict(
      model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_ds=(2, 4), dropout=0.1,
      norm_groups=8, pose_channels=20, image_channels=3, dtype='float32', attention='dot_product', remat='none'))
  built = PIDMUNet.from_config(model)
  for field in ('model_channels', 'channel_mult', 'num_res_blocks', 'attention_ds', 'dropout',
                'norm_groups', 'image_channels', 'pose_channels'):
    assert getattr(built, field) == getattr(TINY, field), field
  assert built.dtype == np.float32
  params = pidm_convert.convert_pidm_state_dict(_tiny_pidm_state_dict(np.random.default_rng(0))[1], model)
  assert params['out_2']['kernel'].shape == (3, 3, 32, 6)


# ---------------------------------------------------------------- value placement (tiny config)

def _tiny_pidm_state_dict(rng):
  """Random Flax-shaped params and the PIDM-named state dict holding the same values.

  Names come from the inverse naming rule; layouts are inverted by hand (the
  converter's layout code is not used), and PIDM's unused parameters are added.
  """
  flat, sd = {}, collections.OrderedDict()
  for path, leaf in pidm_convert.expected_param_shapes(TINY).items():
    value = rng.standard_normal(leaf.shape).astype(np.float32)
    flat[path] = value
    key = pidm_convert.flax_path_to_pidm_key(path)
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif value.ndim == 2 and path[-2] in ATTENTION_PROJECTIONS:
      value = value.T[:, :, None]  # (I, O) -> conv1d (O, I, 1)
    elif value.ndim == 2:
      value = value.T  # (I, O) -> linear (O, I)
    sd[key] = value
    if key.endswith('to_q.weight'):  # PIDM's dead self-attention weights.
      c = value.shape[0]
      sd[key.replace('to_q', 'qkv')] = rng.standard_normal((3 * c, c, 1)).astype(np.float32)
      sd[key.replace('to_q', 'proj_out1')] = rng.standard_normal((c, c, 1)).astype(np.float32)
    if key.endswith('out_layers.3.weight'):  # cond_emb_layers; emb_layers too in the encoder.
      c = value.shape[0]
      sd[key.replace('out_layers.3', 'cond_emb_layers.1')] = np.zeros((c, c), np.float32)
      if key.startswith('encoder.'):
        sd[key.replace('out_layers.3', 'emb_layers.1')] = np.zeros((2 * c, 128), np.float32)
  sd['encoder.time_embed.0.weight'] = np.zeros((128, 32), np.float32)
  return flat, sd


def test_tiny_values_land_in_the_right_place(caplog):
  rng = np.random.default_rng(0)
  flat, sd = _tiny_pidm_state_dict(rng)
  with caplog.at_level(logging.INFO):
    params = pidm_convert.convert_pidm_state_dict(sd, TINY)
  assert 'encoder.time_embed.0.weight' in caplog.text and 'qkv' in caplog.text
  for path, value in flat.items():
    node = params
    for part in path:
      node = node[part]
    np.testing.assert_array_equal(node, value, err_msg='/'.join(path))
  # Spot checks written directly in PyTorch terms.
  np.testing.assert_array_equal(
      params['input_blocks_0_0']['kernel'], sd['input_blocks.0.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      params['input_blocks_3_1']['to_kv']['kernel'], sd['input_blocks.3.1.to_kv.weight'][:, :, 0].T)
  np.testing.assert_array_equal(
      params['time_embed']['time_embed_2']['kernel'], sd['time_embed.time_embed.2.weight'].T)
  np.testing.assert_array_equal(params['out_0']['scale'], sd['out.0.weight'])
  np.testing.assert_array_equal(
      params['encoder']['input_blocks_2_0']['in_layers_2']['bias'],
      sd['encoder.input_blocks.2.0.in_layers.2.bias'])


def test_save_params_round_trip(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  params = {'a_0': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)},
            'b': {'bias': np.ones(2, np.float32)}}
  path = checkpoint.save_params(tmp_path / 'ckpt', params)
  restored = ocp.StandardCheckpointer().restore(path)
  np.testing.assert_array_equal(restored['a_0']['kernel'], params['a_0']['kernel'])
  np.testing.assert_array_equal(restored['b']['bias'], params['b']['bias'])


# ---------------------------------------------------------------- safe readers

class _Evil:
  """Unpickling this would run a shell command that creates a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


class _PydanticLikeConf:
  """Stands in for PIDM's pickled DiffusionConfig: a class the reader must not import."""

  def __init__(self):
    self.lr = 2e-5


def test_torch_save_round_trip(tmp_path):
  torch = pytest.importorskip('torch')
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  tensors = collections.OrderedDict(
      w=torch.randn(3, 4, 3, 3), half=torch.randn(5).half(), bf16=torch.randn(2, 3).bfloat16(),
      double=torch.randn(2).double(), long=torch.arange(7), int=torch.arange(3, dtype=torch.int32),
      byte=torch.arange(4, dtype=torch.uint8), bool=torch.tensor([True, False]),
      transposed=base.t(), offset_view=base[1:3, 2:5], scalar=torch.tensor(2.5),
      empty=torch.zeros(0, 3), param=torch.nn.Parameter(torch.randn(2, 2)))
  torch.save({'ema': tensors, 'step': 7, 'names': ['a', 'b']}, tmp_path / 'model.pt')
  loaded = torch_checkpoint.load_torch_checkpoint(tmp_path / 'model.pt')
  assert loaded['step'] == 7 and loaded['names'] == ['a', 'b']
  assert isinstance(loaded['ema'], collections.OrderedDict) and list(loaded['ema']) == list(tensors)
  for key, tensor in tensors.items():
    got = loaded['ema'][key]
    assert isinstance(got, np.ndarray) and got.shape == tuple(tensor.shape), key
    want = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
    np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)
  assert loaded['ema']['bf16'].dtype.name == 'bfloat16'


def test_torch_pickle_with_os_system_is_rejected(tmp_path):
  torch = pytest.importorskip('torch')
  marker = tmp_path / 'pwned'
  torch.save({'ema': {'w': torch.ones(2)}, 'evil': _Evil(marker)}, tmp_path / 'evil.pt')
  with pytest.raises(UnsafePickleError, match='system'):
    torch_checkpoint.load_torch_checkpoint(tmp_path / 'evil.pt')
  # Even in the lenient mode used for PIDM's 'conf' entry nothing runs: an inert placeholder.
  loaded, opaque = torch_checkpoint.load_torch_checkpoint(
      tmp_path / 'evil.pt', opaque_unknown=True, return_opaque_names=True)
  assert isinstance(loaded['evil'], torch_checkpoint.OpaqueObject)
  assert any(name.endswith('.system') for name in opaque)
  with pytest.raises(ValueError, match='evil'):
    pidm_convert.load_pidm_checkpoint(tmp_path / 'evil.pt', entry='evil')
  assert not marker.exists()


def test_hand_built_torch_zip_with_os_system_is_rejected(tmp_path):
  marker = tmp_path / 'pwned'
  with zipfile.ZipFile(tmp_path / 'evil.pt', 'w') as archive:
    archive.writestr('archive/data.pkl', pickle.dumps({'x': _Evil(marker)}, protocol=2))
    archive.writestr('archive/byteorder', 'little')
  with pytest.raises(UnsafePickleError, match='system'):
    torch_checkpoint.load_torch_checkpoint(tmp_path / 'evil.pt')
  assert not marker.exists()


def test_plain_pickles(tmp_path):
  marker = tmp_path / 'pwned'
  (tmp_path / 'evil.pkl').write_bytes(pickle.dumps(_Evil(marker)))
  with pytest.raises(UnsafePickleError, match='system'):
    torch_checkpoint.load_pickle_restricted(tmp_path / 'evil.pkl')
  assert not marker.exists()
  weights = {'lin0': np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1), 'scale': np.float32(2.0),
             'nested': [np.ones(3, np.float64)]}
  (tmp_path / 'ok.pkl').write_bytes(pickle.dumps(weights))
  loaded = torch_checkpoint.load_pickle_restricted(tmp_path / 'ok.pkl')
  np.testing.assert_array_equal(loaded['lin0'], weights['lin0'])
  assert loaded['scale'] == 2.0 and loaded['nested'][0].dtype == np.float64
  with pytest.raises(UnsafePickleError, match='numpy'):
    torch_checkpoint.load_pickle_restricted(tmp_path / 'ok.pkl', allowed=())


def test_load_pidm_checkpoint(tmp_path):
  torch = pytest.importorskip('torch')
  ema = collections.OrderedDict(
      [('module.out.2.bias', torch.ones(6)), ('module.out.0.weight', torch.ones(128))])
  torch.save({'model': ema, 'ema': ema, 'conf': _PydanticLikeConf(), 'scheduler': {'step': 3}},
             tmp_path / 'last.pt')
  sd = pidm_convert.load_pidm_checkpoint(tmp_path / 'last.pt')
  assert list(sd) == ['out.2.bias', 'out.0.weight']
  np.testing.assert_array_equal(sd['out.2.bias'], np.ones(6, np.float32))
