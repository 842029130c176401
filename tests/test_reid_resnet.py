"""ResNet-50 (issue 19): parity with a PyTorch ResNet-50 written here with torchvision's module names (torchvision
itself does not import with the CPU torch), through the converter; the converter's strict lists."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from reposedm_jax.convert import resnet as resnet_convert
from reposedm_jax.reid import resnet

torch = pytest.importorskip('torch')
nn = torch.nn


class TorchBottleneck(nn.Module):
  def __init__(self, cin, width, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * width)
    self.relu = nn.ReLU()
    self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride, bias=False),
                                    nn.BatchNorm2d(4 * width)) if downsample else None

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet50(nn.Module):
  """torchvision.models.resnet50's layout and state-dict names (v1.5), written out."""

  def __init__(self, last_stride=2):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (n, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
      stride = 1 if i == 0 else (last_stride if i == 3 else 2)
      blocks = []
      for j in range(n):
        blocks.append(TorchBottleneck(cin, width, stride if j == 0 else 1, j == 0))
        cin = 4 * width
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.fc = nn.Linear(2048, 1000)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _random_torch(seed=0, last_stride=2):
  torch.manual_seed(seed)
  model = TorchResNet50(last_stride)
  with torch.no_grad():  # non-trivial BN statistics and affine parameters
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return model.eval()


def _state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('last_stride', [2, 1])
def test_resnet50_matches_torch_in_eval_mode(last_stride):
  tm = _random_torch(last_stride=last_stride)
  sd = _state_dict(tm)
  assert 'layer1.0.downsample.1.running_var' in sd and 'bn1.num_batches_tracked' in sd and len(sd) == 320  # torchvision resnet50: 53 convs, 53 BNs x 5, fc x 2
  variables = resnet_convert.convert_state_dict(sd, resnet.ResNet(last_stride=last_stride))
  x = np.random.default_rng(0).normal(size=(2, 128, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  module = resnet.ResNet(last_stride=last_stride)
  got = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x))
  assert got.shape == want.shape == ((2, 4, 2, 2048) if last_stride == 2 else (2, 8, 4, 2048))
  np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_train_mode_uses_batch_statistics_like_torch():
  """In float64 on both sides: train-mode BN on an 8-value late-layer batch amplifies float32 rounding to ~1e-3."""
  tm = _random_torch(1)
  variables = resnet_convert.convert_state_dict(_state_dict(tm))
  x = np.random.default_rng(1).normal(size=(4, 64, 32, 3))
  tm = tm.double().train()
  with torch.no_grad():
    want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  module = resnet.ResNet()
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    got, updated = module.apply(v64, jnp.asarray(x), train=True, mutable=['batch_stats'])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7, atol=1e-7)
    # Running statistics move as torch's (momentum 0.1).
    np.testing.assert_allclose(np.asarray(updated['batch_stats']['bn1']['mean']), tm.bn1.running_mean.numpy(),
                               rtol=1e-9, atol=1e-9)


def test_converter_lists_missing_unexpected_and_misshaped():
  sd = _state_dict(_random_torch())
  del sd['layer3.2.bn2.running_var']
  sd['layer9.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  sd['layer2.0.conv2.weight'] = np.zeros((128, 128, 5, 5), np.float32)
  with pytest.raises(ValueError) as e:
    resnet_convert.convert_state_dict(sd)
  msg = str(e.value)
  assert '1 missing' in msg and 'layer3_2/bn2/var' in msg
  assert '1 unexpected' in msg and 'layer9.0.conv1.weight' in msg
  assert '1 mis-shaped' in msg and 'layer2.0.conv2.weight' in msg


def test_reid_net_heads_and_converted_backbone_round_trip(tmp_path):
  variables = resnet_convert.convert_state_dict(_state_dict(_random_torch()))
  out = resnet_convert.save_resnet(variables, str(tmp_path / 'r50'), 'random')
  loaded = resnet_convert.load_resnet(out)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), variables)
  net = resnet.ReIDNet(num_ids=7)
  v = resnet.init_variables(net, (64, 32), jax.random.key(0))
  o = net.apply(v, jnp.zeros((2, 64, 32, 3)), train=False)
  assert o['global'].shape == (2, 2048) and o['feature'].shape == (2, 2048) and o['logits'].shape == (2, 7)
  assert 'bias' not in v['params']['neck'] and 'bias' not in v['params']['classifier']
