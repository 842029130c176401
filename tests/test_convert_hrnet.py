"""HigherHRNet weight conversion: official key list, strict errors, timm naming, torch parity, safe reading, CLI."""

import collections
import json
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from reposedm_jax.convert import hrnet as convert
from reposedm_jax.convert import torch_legacy
from reposedm_jax.convert.torch_checkpoint import UnsafePickleError
from reposedm_jax.models import hrnet

pytestmark = pytest.mark.usefixtures('fast_compile')

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS_JSON = pathlib.Path(__file__).parent / 'data' / 'higherhrnet_w32_keys.json'
HEAD_KEYS = ('final_layers.', 'deconv_layers.')


def _official_key_shapes():
  return {k: tuple(s) for k, s in json.loads(KEYS_JSON.read_text())['keys']}


def _flat_paths(module):
  return set(convert.flat_variables(hrnet.variable_shapes(module)))


# ---------------------------------------------------------------- official names and shapes

def test_official_w32_state_dict_fills_every_variable():
  key_shapes = _official_key_shapes()
  assert len(key_shapes) == 1810
  rng = np.random.default_rng(0)
  sd = {k: (rng.standard_normal(s).astype(np.float32) if not k.endswith('num_batches_tracked')
            else np.asarray(7, np.int64)) for k, s in key_shapes.items()}
  variables, not_filled = convert.convert_hrnet_state_dict(sd, 'w32')
  assert not_filled == []
  module = hrnet.build_hrnet('w32')
  convert.check_variables(variables, hrnet.variable_shapes(module))  # every leaf present with its shape
  flat = convert.flat_variables(variables)
  assert len(flat) == 1509 and set(flat) == _flat_paths(module)
  assert sum(v.size for p, v in flat.items() if p[0] == 'params') == 28_645_331
  # Values land where the names say, with the documented layouts.
  np.testing.assert_array_equal(variables['params']['conv1']['kernel'], sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['params']['deconv_layers_0_0_0']['kernel'],
                                sd['deconv_layers.0.0.0.weight'].transpose(2, 3, 1, 0))  # (4, 4, out 32, in 66)
  np.testing.assert_array_equal(variables['params']['stage4_2']['fuse_layers_0_3_0']['kernel'][0, 0],
                                sd['stage4.2.fuse_layers.0.3.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(variables['batch_stats']['layer1_0']['downsample_1']['var'],
                                sd['layer1.0.downsample.1.running_var'])
  np.testing.assert_array_equal(variables['params']['stage3_3']['fuse_layers_2_0_1_1']['scale'],
                                sd['stage3.3.fuse_layers.2.0.1.1.weight'])
  np.testing.assert_array_equal(variables['params']['final_layers_1']['bias'], sd['final_layers.1.bias'])
  for path in flat:
    assert convert.torch_key_to_variable(convert.variable_to_torch_key(path), flat[path].ndim) == path
  # mmpose's layout (HumanSD's W48 checkpoints): the same tree under backbone. / keypoint_head.
  head = ('final_layers.', 'deconv_layers.')
  mm = {('keypoint_head.' if k.startswith(head) else 'backbone.') + k: v for k, v in sd.items()}
  mm_vars, _ = convert.convert_hrnet_state_dict(mm, 'w32', 'mmpose')
  jax.tree.map(np.testing.assert_array_equal, mm_vars, variables)
  with pytest.raises(ValueError, match='unexpected'):
    convert.convert_hrnet_state_dict({**mm, 'keypoint_head.extra.weight': np.zeros(1)}, 'w32', 'mmpose')


def test_missing_and_misshaped_keys_are_listed():
  key_shapes = _official_key_shapes()
  del key_shapes['stage3.2.branches.1.3.bn2.running_mean']
  key_shapes['transition2.2.0.0.weight'] = (128, 64, 1, 1)
  key_shapes['stage2.0.extra.weight'] = (4,)
  with pytest.raises(ValueError) as info:
    convert.plan_hrnet_conversion(key_shapes, 'w32')
  msg = str(info.value)
  assert '1 missing, 1 unexpected, 1 mis-shaped' in msg
  assert 'missing: stage3.2.branches.1.3.bn2.running_mean (64,)' in msg
  assert 'transition2.2.0.0.weight: PyTorch (128, 64, 1, 1)' in msg and 'stage2.0.extra.weight' in msg
  with pytest.raises(ValueError, match='pass --arch w32'):  # W32 weights against the W48 model
    convert.plan_hrnet_conversion(_official_key_shapes(), 'w48')


def test_timm_backbone_naming():
  official = _official_key_shapes()
  timm = {k: s for k, s in official.items() if not k.startswith(HEAD_KEYS)}
  # timm builds the last stage-4 module multi-scale: rows 1-3 of its fuse exist (same shapes as module 1's).
  for k, s in official.items():
    if k.startswith(('stage4.1.fuse_layers.1', 'stage4.1.fuse_layers.2', 'stage4.1.fuse_layers.3')):
      timm['stage4.2' + k[len('stage4.1'):]] = s
  timm.update({'incre_modules.0.0.conv1.weight': (32, 32, 1, 1), 'downsamp_modules.0.0.weight': (256, 128, 3, 3),
               'final_layer.0.weight': (2048, 1024, 1, 1), 'classifier.weight': (1000, 2048),
               'classifier.bias': (1000,)})
  mapping, dropped, not_filled = convert.plan_hrnet_conversion(timm, 'w32', naming='timm')
  head = {p for p in _flat_paths(hrnet.build_hrnet('w32')) if convert.variable_to_torch_key(p).startswith(HEAD_KEYS)}
  assert set(not_filled) == head and len(head) == len([k for k in official if k.startswith(HEAD_KEYS)
                                                       and not k.endswith('num_batches_tracked')])
  assert set(mapping) == {k for k in timm if not k.startswith(('stage4.2.fuse_layers.1', 'stage4.2.fuse_layers.2',
                                                               'stage4.2.fuse_layers.3', 'incre_', 'downsamp_',
                                                               'final_layer.', 'classifier.'))
                          and not k.endswith('num_batches_tracked')}
  assert 'stage4.2.fuse_layers.3.0.0.0.weight' in dropped and 'classifier.bias' in dropped
  # The backbone is still strict under timm naming ...
  del timm['layer1.0.conv2.weight']
  with pytest.raises(ValueError, match=r'(?s)1 missing.*layer1.0.conv2.weight \(64, 64, 3, 3\)'):
    convert.plan_hrnet_conversion(timm, 'w32', naming='timm')
  # ... and official naming refuses timm's extras and missing head.
  with pytest.raises(ValueError, match='classifier.weight'):
    convert.plan_hrnet_conversion(timm, 'w32')


def test_fill_variables_keeps_unfilled_leaves():
  module = hrnet.build_hrnet('small')
  base = hrnet.init_variables(module, jax.random.key(0))
  part = {'params': {'conv1': {'kernel': np.ones((3, 3, 3, 32), np.float32)}}}
  merged, not_filled = convert.fill_variables(base, part)
  np.testing.assert_array_equal(merged['params']['conv1']['kernel'], 1.0)
  np.testing.assert_array_equal(merged['params']['conv2']['kernel'], base['params']['conv2']['kernel'])
  assert len(not_filled) == len(jax.tree.leaves(base)) - 1
  with pytest.raises(ValueError, match='conv1/kernel'):
    convert.fill_variables(base, {'params': {'conv1': {'kernel': np.ones((3, 3, 3, 8), np.float32)}}})


# ---------------------------------------------------------------- numerical parity with a PyTorch HigherHRNet

def _torch_higher_hrnet(width, stem_channels, layer1_planes, layer1_blocks, num_modules, num_blocks, deconv_blocks,
                        joints=17):
  """An independent PyTorch HigherHRNet (module tree => the official key names), for parity checks."""
  torch = pytest.importorskip('torch')
  nn, f = torch.nn, torch.nn.functional

  def conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)

  class Basic(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv1, self.bn1, self.conv2, self.bn2 = conv(c, c, 3), nn.BatchNorm2d(c), conv(c, c, 3), nn.BatchNorm2d(c)

    def forward(self, x):
      return f.relu(self.bn2(self.conv2(f.relu(self.bn1(self.conv1(x))))) + x)

  class Bottle(nn.Module):
    def __init__(self, cin, planes):
      super().__init__()
      self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
      self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm2d(planes)
      self.conv3, self.bn3 = conv(planes, 4 * planes, 1), nn.BatchNorm2d(4 * planes)
      self.downsample = (nn.Sequential(conv(cin, 4 * planes, 1), nn.BatchNorm2d(4 * planes))
                         if cin != 4 * planes else None)

    def forward(self, x):
      y = f.relu(self.bn2(self.conv2(f.relu(self.bn1(self.conv1(x))))))
      y = self.bn3(self.conv3(y))
      return f.relu(y + (self.downsample(x) if self.downsample is not None else x))

  class Module(nn.Module):
    def __init__(self, ch, multi):
      super().__init__()
      self.branches = nn.ModuleList([nn.Sequential(*[Basic(c) for _ in range(num_blocks)]) for c in ch])
      self.fuse_layers = nn.ModuleList()
      for i in range(len(ch) if multi else 1):
        row = nn.ModuleList()
        for j in range(len(ch)):
          if j > i:
            row.append(nn.Sequential(conv(ch[j], ch[i], 1), nn.BatchNorm2d(ch[i]),
                                     nn.Upsample(scale_factor=2 ** (j - i), mode='nearest')))
          elif j == i:
            row.append(None)
          else:
            chain = []
            for k in range(i - j):
              out = ch[i] if k == i - j - 1 else ch[j]
              chain.append(nn.Sequential(conv(ch[j], out, 3, 2), nn.BatchNorm2d(out),
                                         *([] if k == i - j - 1 else [nn.ReLU()])))
            row.append(nn.Sequential(*chain))
        self.fuse_layers.append(row)

    def forward(self, xs):
      xs = [b(x) for b, x in zip(self.branches, xs)]
      outs = []
      for i, row in enumerate(self.fuse_layers):
        y = xs[0] if i == 0 else row[0](xs[0])
        for j in range(1, len(xs)):
          y = y + (xs[j] if j == i else row[j](xs[j]))
        outs.append(f.relu(y))
      return outs

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1, self.bn1 = conv(3, stem_channels, 3, 2), nn.BatchNorm2d(stem_channels)
      self.conv2, self.bn2 = conv(stem_channels, stem_channels, 3, 2), nn.BatchNorm2d(stem_channels)
      self.layer1 = nn.Sequential(*[Bottle(stem_channels if b == 0 else 4 * layer1_planes, layer1_planes)
                                    for b in range(layer1_blocks)])
      prev = [4 * layer1_planes]
      for t, modules in enumerate(num_modules):
        ch = [width * 2 ** i for i in range(t + 2)]
        trans = nn.ModuleList()
        for i, c in enumerate(ch):
          if i < len(prev):
            trans.append(nn.Sequential(conv(prev[i], c, 3), nn.BatchNorm2d(c), nn.ReLU()) if prev[i] != c else None)
          else:
            trans.append(nn.Sequential(nn.Sequential(conv(prev[-1], c, 3, 2), nn.BatchNorm2d(c), nn.ReLU())))
        setattr(self, f'transition{t + 1}', trans)
        last = len(num_modules) - 1
        setattr(self, f'stage{t + 2}', nn.Sequential(*[Module(ch, not (t == last and m == modules - 1))
                                                       for m in range(modules)]))
        prev = ch
      self.final_layers = nn.ModuleList([nn.Conv2d(width, 2 * joints, 1), nn.Conv2d(width, joints, 1)])
      self.deconv_layers = nn.ModuleList([nn.Sequential(
          nn.Sequential(nn.ConvTranspose2d(width + 2 * joints, width, 4, 2, 1, 0, bias=False),
                        nn.BatchNorm2d(width), nn.ReLU()),
          *[nn.Sequential(Basic(width)) for _ in range(deconv_blocks)])])

    def forward(self, x):
      x = f.relu(self.bn2(self.conv2(f.relu(self.bn1(self.conv1(x))))))
      ys = [self.layer1(x)]
      for t in range(len(num_modules)):
        xs = []
        for i, tr in enumerate(getattr(self, f'transition{t + 1}')):
          src = ys[i] if i < len(ys) else ys[-1]
          xs.append(src if tr is None else tr(src))
        for module in getattr(self, f'stage{t + 2}'):
          xs = module(xs)
        ys = xs
      out4 = self.final_layers[0](ys[0])
      out2 = self.final_layers[1](self.deconv_layers[0](torch.cat([ys[0], out4], 1)))
      return out4, out2, ys[0]

  torch.manual_seed(0)
  net = Net()
  with torch.no_grad():  # Non-trivial BatchNorm statistics and affine terms.
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)
  return net.eval()


def _torch_state_dict(net):
  return collections.OrderedDict((k, v.detach().numpy().copy()) for k, v in net.state_dict().items())


@pytest.fixture(scope='module')
def small_torch():
  return _torch_higher_hrnet(**hrnet.PRESETS['small'])


def test_torch_reference_parity(small_torch):
  torch = pytest.importorskip('torch')
  module = hrnet.build_hrnet('small')
  variables, not_filled = convert.convert_hrnet_state_dict(_torch_state_dict(small_torch), module)
  assert not not_filled
  rng = np.random.default_rng(1)
  for h, w in ((64, 64), (64, 44)):
    x = rng.uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
    out = jax.jit(lambda v, im: module.apply(v, im))(variables, x)
    # The torch reference gets what the official pipeline feeds: [0, 1], black-padded to /32, ImageNet-normalised.
    unit = np.pad((x + 1) / 2, ((0, 0), (0, -h % 32), (0, -w % 32), (0, 0)))
    norm = (unit - np.asarray(hrnet.IMAGENET_MEAN, np.float32)) / np.asarray(hrnet.IMAGENET_STD, np.float32)
    with torch.no_grad():
      t4, t2, tf = (t.permute(0, 2, 3, 1).numpy() for t in small_torch(torch.from_numpy(norm).permute(0, 3, 1, 2)))
    h4, w4, h2, w2 = h // 4, w // 4, h // 2, w // 2
    for got, want in ((out['heatmaps_s4'], t4[:, :h4, :w4, :17]), (out['tags_s4'], t4[:, :h4, :w4, 17:]),
                      (out['heatmaps_s2'], t2[:, :h2, :w2]), (out['features'], tf[:, :h4, :w4])):
      scale = np.abs(want).max()
      assert scale > 1e-2
      np.testing.assert_allclose(np.asarray(got) / scale, want / scale, atol=1e-4)


def test_reads_zip_and_legacy_files_and_cli(small_torch, tmp_path):
  torch = pytest.importorskip('torch')
  sd = _torch_state_dict(small_torch)
  torch.save(small_torch.state_dict(), tmp_path / 'zip.pth')
  torch.save(small_torch.state_dict(), tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
  for name in ('zip.pth', 'legacy.pth'):
    loaded = convert.load_state_dict_file(str(tmp_path / name))
    assert list(loaded) == list(sd)
    for k in sd:
      np.testing.assert_array_equal(loaded[k], sd[k], err_msg=f'{name}: {k}')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  dst = tmp_path / 'converted'
  r = subprocess.run([sys.executable, '-m', 'reposedm_jax.convert', 'hrnet', f'--src={tmp_path / "legacy.pth"}',
                      f'--dst={dst}', '--arch=small'], cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  variables, meta = convert.load_hrnet(str(dst))
  assert meta['arch'] == 'small' and meta['naming'] == 'official' and meta['not_filled'] == []
  want, _ = convert.convert_hrnet_state_dict(sd, 'small')
  jax.tree.map(np.testing.assert_array_equal, variables, want)
  # The dispatcher also reaches PIDM's converter (its own required flags) and rejects unknown names.
  r = subprocess.run([sys.executable, '-m', 'reposedm_jax.convert', 'pidm'], cwd=REPO, env=env, capture_output=True,
                     text=True)
  assert r.returncode != 0 and '--src' in r.stderr
  r = subprocess.run([sys.executable, '-m', 'reposedm_jax.convert', 'nosuch'], cwd=REPO, env=env,
                     capture_output=True, text=True)
  assert r.returncode != 0 and 'pidm,hrnet,vae,resnet,sd,sd_text' in r.stderr and "got ['nosuch']" in r.stderr


# ---------------------------------------------------------------- malicious files

class _Evil:
  """Unpickling this would run a shell command that creates a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_malicious_pickles_are_refused(tmp_path):
  torch = pytest.importorskip('torch')
  marker = tmp_path / 'pwned'
  payload = {'conv1.weight': torch.ones(2), 'evil': _Evil(marker)}
  torch.save(payload, tmp_path / 'zip.pth')
  torch.save(payload, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
  for name in ('zip.pth', 'legacy.pth'):
    with pytest.raises(UnsafePickleError, match='system'):
      convert.load_state_dict_file(str(tmp_path / name))
  # A hand-made legacy file whose header pickle itself carries the payload.
  with open(tmp_path / 'header.pth', 'wb') as f:
    pickle.dump(torch_legacy.MAGIC_NUMBER, f, protocol=2)
    pickle.dump(torch_legacy.PROTOCOL_VERSION, f, protocol=2)
    pickle.dump(_Evil(marker), f, protocol=2)
  with pytest.raises(UnsafePickleError, match='system'):
    convert.load_state_dict_file(str(tmp_path / 'header.pth'))
  assert not marker.exists()
  (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='junk.pth'):
    convert.load_state_dict_file(str(tmp_path / 'junk.pth'))
