"""Hostile third-party checkpoints: a clean one-line refusal, within a memory budget, no code run.

Every file is built here (torch writes the real ones; the hostile ones are pickled by hand), a few hundred
bytes to a few MB on disk, each designed to make a naive reader allocate gigabytes or loop forever.
"""

import collections
import os
import pickle
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from reposedm_jax.convert import torch_checkpoint, torch_legacy  # noqa: E402
from reposedm_jax.convert.torch_checkpoint import UnsafePickleError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Storage:
  def __init__(self, key, numel):
    self.key, self.numel = key, numel


class _Tensor:
  def __init__(self, storage, size, stride, offset=0):
    self.storage, self.size, self.stride, self.offset = storage, size, stride, offset

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2,  # pylint: disable=protected-access
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()))


class _ZipPickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ('storage', torch.FloatStorage, obj.key, 'cpu', obj.numel)
    return None


def _write_zip(path, obj, entries, compress=False):
  """A torch.save-layout zip: archive/data.pkl + archive/data/<key> (bytes, or (n_bytes,) of zeros streamed)."""
  import io
  buf = io.BytesIO()
  _ZipPickler(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
    z.writestr('archive/data.pkl', buf.getvalue())
    for key, data in entries.items():
      if isinstance(data, tuple):
        with z.open(f'archive/data/{key}', 'w', force_zip64=True) as f:
          chunk = bytes(1 << 22)
          for _ in range(data[0] // len(chunk)):
            f.write(chunk)
      else:
        z.writestr(f'archive/data/{key}', data)
  return str(path)


def test_a_real_torch_file_still_loads(tmp_path):
  path = str(tmp_path / 'ok.pth')
  torch.save({'w': torch.arange(12, dtype=torch.float32).reshape(3, 4), 'b': torch.ones(4)[::2]}, path)
  sd = torch_checkpoint.load_torch_checkpoint(path)
  np.testing.assert_array_equal(sd['w'], np.arange(12, dtype=np.float32).reshape(3, 4))
  np.testing.assert_array_equal(sd['b'], np.ones(2, np.float32))


def test_a_stride_zero_view_cannot_amplify_the_file(tmp_path):
  path = str(tmp_path / 'stride0.pth')
  torch.save({'w': torch.zeros(1).expand(1 << 29)}, path)  # 2 GiB of float32 viewed from one element
  assert os.path.getsize(path) < 4096
  with pytest.raises(UnsafePickleError, match=r'stride0.pth: .*would materialise more than its storage'):
    torch_checkpoint.load_torch_checkpoint(path)


def test_a_zip_bomb_storage_is_refused_before_it_inflates(tmp_path):
  n = 1 << 28  # bytes: 256 MiB of zeros deflate to ~0.25 MiB
  path = _write_zip(tmp_path / 'bomb.pth', {'w': _Tensor(_Storage('0', n // 4), (n // 4,), (1,))}, {'0': (n,)},
                    compress=True)
  assert os.path.getsize(path) < 2 << 20
  with pytest.raises(UnsafePickleError, match=r'bomb.pth: storage 0 inflates from \d+ to 268435456 bytes'):
    torch_checkpoint.load_torch_checkpoint(path)


@pytest.mark.parametrize('numel,size,stride,pattern', [
    (1 << 50, (1 << 50,), (1,), r'claims 1125899906842624 elements .* over the 16 GiB budget'),
    (4, (1, 4), (1 << 70, 1), r'bad tensor geometry'),
    (4, (4,), (-1,), r'bad tensor geometry'),
    (4, (8,), (1,), r'exceeds its storage'),
])
def test_impossible_geometry_is_a_clean_refusal(tmp_path, numel, size, stride, pattern):
  path = _write_zip(tmp_path / 'geom.pth', {'w': _Tensor(_Storage('0', numel), size, stride)}, {'0': bytes(16)})
  with pytest.raises(UnsafePickleError, match=pattern):
    torch_checkpoint.load_torch_checkpoint(path)


def _write_legacy(path, obj):
  with open(path, 'wb') as f:
    for header in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION, {'little_endian': True}):
      pickle.dump(header, f, protocol=2)
    pickle.dump(obj, f, protocol=2)
    pickle.dump([], f, protocol=2)
  return str(path)


def test_legacy_reader_walks_a_shared_dag_once(tmp_path):
  t = ()
  for _ in range(64):  # 2^64 root-to-leaf paths in a few hundred bytes
    t = (t, t)
  path = _write_legacy(tmp_path / 'dag.pth', {'x': t})
  assert os.path.getsize(path) < 2048
  start = time.perf_counter()
  out = torch_legacy.load_legacy_torch_checkpoint(path)
  assert time.perf_counter() - start < 5
  depth, node = 0, out['x']
  while node:
    node, depth = node[0], depth + 1
  assert depth == 64


def test_legacy_reader_refuses_a_self_containing_list(tmp_path):
  loop = []
  loop.append(loop)
  path = _write_legacy(tmp_path / 'loop.pth', {'x': loop})
  with pytest.raises(UnsafePickleError, match=r'loop.pth: a container contains itself'):
    torch_legacy.load_legacy_torch_checkpoint(path)


def _hostile_file(kind, tmp_path):
  if kind == 'stride0':
    path = str(tmp_path / 'stride0.pth')
    torch.save({'w': torch.zeros(1).expand(1 << 29)}, path)
    return path
  if kind == 'zipbomb':
    n = 1 << 28
    return _write_zip(tmp_path / 'zipbomb.pth', {'w': _Tensor(_Storage('0', n // 4), (n // 4,), (1,))}, {'0': (n,)},
                      compress=True)
  if kind == 'huge_storage':
    return _write_zip(tmp_path / 'huge_storage.pth', {'w': _Tensor(_Storage('0', 1 << 50), (1 << 50,), (1,))},
                      {'0': bytes(16)})
  if kind == 'huge_stride':
    return _write_zip(tmp_path / 'huge_stride.pth', {'w': _Tensor(_Storage('0', 4), (1, 4), (1 << 70, 1))},
                      {'0': bytes(16)})
  loop = []
  loop.append(loop)
  return _write_legacy(tmp_path / 'selfloop.pth', {'x': loop})


@pytest.mark.parametrize('kind,converter', [('stride0', 'hrnet'), ('zipbomb', 'pidm'), ('huge_storage', 'pidm'),
                                            ('huge_stride', 'hrnet'), ('selfloop', 'pidm')])
def test_the_converter_refuses_in_one_line_within_budget(tmp_path, kind, converter):
  path = _hostile_file(kind, tmp_path)
  # A wrapper process whose only child is the converter, so RUSAGE_CHILDREN is the converter's peak alone.
  cmd = [sys.executable, '-m', 'reposedm_jax.convert', converter, f'--src={path}', f'--dst={tmp_path / "out"}']
  wrapper = ('import resource, subprocess, sys\n'
             f'r = subprocess.run({cmd!r}, capture_output=True, text=True)\n'
             'sys.stdout.write(r.stdout + r.stderr)\n'
             'print("RC", r.returncode, "PEAK_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)')
  start = time.perf_counter()
  r = subprocess.run([sys.executable, '-c', wrapper], cwd=REPO, capture_output=True, text=True, timeout=120)
  took = time.perf_counter() - start
  lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
  rc, peak_gib = int(lines[-1].split()[1]), int(lines[-1].split()[3]) / (1 << 20)  # KiB -> GiB (Linux)
  lines = lines[:-1]
  assert rc != 0 and 'Traceback' not in r.stdout
  assert lines[-1].startswith('Cannot convert: ') and os.path.basename(path) in lines[-1], lines
  assert took < 25 and peak_gib < 1.3, (took, peak_gib)


def test_the_file_budget_counts_every_storage(tmp_path, monkeypatch):
  """Each storage fits the per-file budget alone; together they do not, and the second is refused unread."""
  monkeypatch.setattr(torch_checkpoint, 'MAX_FILE_BYTES', 1000)
  obj = {'a': _Tensor(_Storage('0', 150), (150,), (1,)), 'b': _Tensor(_Storage('1', 150), (150,), (1,))}
  path = _write_zip(tmp_path / 'two.pth', obj, {'0': bytes(600), '1': bytes(600)})
  with pytest.raises(UnsafePickleError, match=r'two.pth: .*storage 1 claims 150 elements \(600 bytes\): over'):
    torch_checkpoint.load_torch_checkpoint(path)
  one = _write_zip(tmp_path / 'one.pth', {'a': obj['a']}, {'0': bytes(600)})
  assert torch_checkpoint.load_torch_checkpoint(one)['a'].shape == (150,)
