"""Safe readers for PyTorch `.pt` checkpoints and plain numpy pickles, without torch.

A pickle can run arbitrary code: every global it names is imported and may be
called. These readers use a `pickle.Unpickler` whose `find_class` resolves only a
short allow-list (containers, torch's tensor-rebuild functions mapped to our own
numpy code, storage dtype markers); anything else raises `UnsafePickleError`
naming `module.name`, before any import happens.

`torch.save` files are zip archives: `<archive>/data.pkl` holds the pickled object
whose tensors refer, through pickle "persistent ids", to raw little-endian
storages stored as `<archive>/data/<key>`. Tensors come back as numpy arrays
(bfloat16 via `ml_dtypes`).

Real training checkpoints also pickle non-tensor objects (PIDM stores its
pydantic `DiffusionConfig` under 'conf', and scheduler state). With
`opaque_unknown=True` such globals become inert `OpaqueObject` placeholders that
only record their name and arguments: the named module is never imported and no
foreign callable ever runs, so loading stays safe while the tensors we need are
still read.
"""

import collections
import hashlib
import pickle
import zipfile
from typing import Any, Callable, Iterable

import ml_dtypes
import numpy as np


# Memory budgets checked before anything is allocated (hostile files: issue 17). A tensor may not materialise
# more than its storage holds (a stride-0 view of one element as gigabytes), beyond a small slack for
# legitimately broadcast views; one file's storages may not exceed MAX_FILE_BYTES; a compressed entry may not
# inflate more than MAX_INFLATE_RATIO times (torch.save stores entries uncompressed; float data compresses ~1.1x).
MAX_FILE_BYTES = 16 << 30
MAX_INFLATE_RATIO = 20
VIEW_SLACK_BYTES = 1 << 20
_MAX_DIM = 1 << 62


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle referenced a global outside the allow-list."""


class OpaqueObject:
  """Inert stand-in for a disallowed global (only with `opaque_unknown=True`).

  Calling, instantiating or restoring state on it records the arguments and
  does nothing else. `global_name` is the `module.name` it replaces.
  """
  global_name = '?'

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs  # Recorded in __new__.

  def __setstate__(self, state):
    self.state = state

  # List/dict protocol used by the APPENDS / SETITEMS opcodes.
  def append(self, item):
    self.items.append(item)

  def extend(self, items):
    self.items.extend(items)

  def __setitem__(self, key, value):
    self.items.append((key, value))

  def __repr__(self):
    return f'OpaqueObject({self.global_name})'


def _opaque_class(module: str, name: str) -> type:
  return type(f'Opaque_{name}', (OpaqueObject,), {'global_name': f'{module}.{name}'})


class _StorageType:
  """Marker standing in for `torch.<Dtype>Storage`: only carries the numpy dtype."""

  def __init__(self, name: str, dtype: np.dtype):
    self.name, self.dtype = name, np.dtype(dtype)

  def __repr__(self):
    return f'torch.{self.name}'


_STORAGE_TYPES = {
    name: _StorageType(name, dtype) for name, dtype in [
        ('FloatStorage', np.float32), ('HalfStorage', np.float16),
        ('BFloat16Storage', ml_dtypes.bfloat16), ('DoubleStorage', np.float64),
        ('LongStorage', np.int64), ('IntStorage', np.int32),
        ('ByteStorage', np.uint8), ('BoolStorage', np.bool_)]
}


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
  """numpy version of `torch._utils._rebuild_tensor_v2`: a strided view, then a copy."""
  del requires_grad, backward_hooks, metadata
  if isinstance(storage, OpaqueObject):
    return storage
  if not isinstance(storage, np.ndarray):
    raise UnsafePickleError(f'tensor storage of unexpected type {type(storage).__name__}')
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if (len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0
      or max(size + stride + (offset,), default=0) >= _MAX_DIM):
    raise UnsafePickleError(f'bad tensor geometry size={size} stride={stride} offset={offset}')
  if 0 in size:
    return np.zeros(size, storage.dtype.newbyteorder('='))
  stride = tuple(0 if n == 1 else st for n, st in zip(size, stride))  # a length-1 dim's stride is never used
  nbytes = int(np.prod(size, dtype=object)) * storage.itemsize
  if nbytes > storage.nbytes + VIEW_SLACK_BYTES:
    raise UnsafePickleError(f'tensor of size {size} ({nbytes} bytes) would materialise more than its storage of '
                            f'{storage.nbytes} bytes (a strided view amplifying the file)')
  # Bounds check: as_strided would otherwise read outside the storage buffer.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise UnsafePickleError(
        f'tensor (size={size}, stride={stride}, offset={offset}) exceeds its storage '
        f'of {storage.size} elements')
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False)
  return np.array(view, dtype=storage.dtype.newbyteorder('='), order='C')


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_TORCH_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('builtins', 'set'): set,
    ('builtins', 'dict'): dict,
    ('builtins', 'list'): list,
    ('builtins', 'tuple'): tuple,
}
_TORCH_GLOBALS.update({('torch', name): st for name, st in _STORAGE_TYPES.items()})


class _TorchUnpickler(pickle.Unpickler):
  """Unpickler for `<archive>/data.pkl` with the torch allow-list."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, opaque_unknown: bool):
    super().__init__(file)
    self._archive, self._prefix, self._opaque = archive, prefix, opaque_unknown
    self._storages = {}
    self._bytes = 0
    self.opaque_names = set()
    byteorder = f'{prefix}/byteorder'
    big = byteorder in archive.namelist() and archive.read(byteorder).strip() == b'big'
    self._order = '>' if big else '<'

  def find_class(self, module, name):
    found = _TORCH_GLOBALS.get((module, name))
    if found is not None:
      return found
    if self._opaque:
      self.opaque_names.add(f'{module}.{name}')
      return _opaque_class(module, name)
    raise UnsafePickleError(f'disallowed global in checkpoint: {module}.{name}')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
      raise UnsafePickleError(f'unsupported persistent id {pid!r:.100}')
    _, storage_type, key, _location, numel = pid
    if isinstance(storage_type, type) and issubclass(storage_type, OpaqueObject):
      return storage_type()
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(f'unsupported storage type {storage_type!r:.100}')
    key = str(key)
    if key not in self._storages:
      dtype = storage_type.dtype
      if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(self._order)
      name = f'{self._prefix}/data/{key}'
      try:
        info = self._archive.getinfo(name)
      except KeyError:
        raise UnsafePickleError(f'storage {key} is not in the archive') from None
      numel = int(numel)
      want = numel * dtype.itemsize
      if numel < 0 or want + self._bytes > MAX_FILE_BYTES:
        raise UnsafePickleError(f'storage {key} claims {numel} elements ({want} bytes): over the '
                                f'{MAX_FILE_BYTES >> 30} GiB budget of one checkpoint')
      if info.file_size < want:
        raise UnsafePickleError(f'storage {key} holds {info.file_size // dtype.itemsize} elements, expected {numel}')
      if (info.compress_type != zipfile.ZIP_STORED and info.file_size > VIEW_SLACK_BYTES
          and info.file_size > MAX_INFLATE_RATIO * max(info.compress_size, 1)):
        raise UnsafePickleError(f'storage {key} inflates from {info.compress_size} to {info.file_size} bytes '
                                f'(for {want} needed): a zip bomb?')
      with self._archive.open(name) as f:
        raw = f.read(want)  # never more than the tensor needs
      self._bytes += want
      self._storages[key] = np.frombuffer(raw, dtype=dtype)
    return self._storages[key]


def unpickle_archive(path: str, make_unpickler: Callable[..., pickle.Unpickler], not_zip: str):
  """Unpickles the `<archive>/data.pkl` of a torch zip file (torch.save or TorchScript); (object, unpickler).

  `make_unpickler(file, archive, prefix)` builds the restricted unpickler; it reads the tensors' storages
  from `archive` under `prefix/data/` while loading. `not_zip` ends the error for a file that is no zip.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path} {not_zip}')
  with zipfile.ZipFile(path) as archive:
    pkl_names = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pkl_names) != 1:
      raise ValueError(f'{path}: expected one <archive>/data.pkl, found {pkl_names}.')
    with archive.open(pkl_names[0]) as f:
      unpickler = make_unpickler(f, archive, pkl_names[0][:-len('/data.pkl')])
      return unpickler.load(), unpickler


def load_torch_checkpoint(path: str, *, opaque_unknown: bool = False,
                          return_opaque_names: bool = False) -> Any:
  """Reads a `torch.save` zip file into Python containers of numpy arrays.

  Args:
    path: The `.pt` / `.pth` file (torch >= 1.6 zip format).
    opaque_unknown: Replace globals outside the allow-list by inert
      `OpaqueObject`s instead of raising (see module docstring).
    return_opaque_names: Also return the sorted `module.name`s that were replaced.

  Returns:
    The unpickled object (e.g. a dict of OrderedDicts of numpy arrays), or
    `(object, opaque_names)` when `return_opaque_names`.

  Raises:
    UnsafePickleError: A disallowed global (strict mode) or a malformed tensor.
    ValueError: The file is not a torch zip checkpoint.
  """
  try:
    obj, unpickler = unpickle_archive(
        path, lambda f, archive, prefix: _TorchUnpickler(f, archive, prefix, opaque_unknown),
        'is not a zip-format torch checkpoint (legacy torch<1.6 format?).')
  except UnsafePickleError as e:
    raise UnsafePickleError(f'{path}: {e}') from None
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, MemoryError, OverflowError, RecursionError) as e:
    raise UnsafePickleError(f'{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]})') from None
  if return_opaque_names:
    return obj, sorted(unpickler.opaque_names)
  return obj


# Globals a plain `pickle.dump` of numpy arrays / scalars (numpy 1.x and 2.x) needs.
NUMPY_GLOBALS = frozenset({
    'numpy._core.multiarray._reconstruct', 'numpy._core.multiarray.scalar',
    'numpy.ndarray', 'numpy.dtype', 'collections.OrderedDict',
})


def _normalise_global(name: str) -> str:
  # numpy 2 renamed numpy.core to numpy._core; pickles from numpy 1.x use the old name.
  if name.startswith('numpy.core.'):
    return 'numpy._core.' + name[len('numpy.core.'):]
  return name


class _AllowListUnpickler(pickle.Unpickler):

  def __init__(self, file, allowed: frozenset):
    super().__init__(file)
    self._allowed = allowed

  def find_class(self, module, name):
    full = _normalise_global(f'{module}.{name}')
    if full not in self._allowed:
      raise UnsafePickleError(f'disallowed global in pickle: {module}.{name}')
    module, _, name = full.rpartition('.')
    return super().find_class(module, name)

  def persistent_load(self, pid):
    raise UnsafePickleError('persistent ids are not allowed in plain pickles')


def load_pickle_restricted(path: str, allowed: Iterable[str] = NUMPY_GLOBALS) -> Any:
  """Loads a plain pickle, resolving only the globals named in `allowed`.

  Args:
    path: Pickle file (e.g. LPIPS linear-layer weights saved as numpy arrays).
    allowed: `module.name` strings that may be resolved; `numpy.core.*` and
      `numpy._core.*` are treated as the same name.

  Returns:
    The unpickled object.

  Raises:
    UnsafePickleError: The pickle names a global outside `allowed`.
  """
  allowed = frozenset(_normalise_global(a) for a in allowed)
  with open(path, 'rb') as f:
    return _AllowListUnpickler(f, allowed).load()


def loads_restricted(data: bytes, allowed: Iterable[str] = NUMPY_GLOBALS) -> Any:
  """`load_pickle_restricted` for pickle bytes already in memory (e.g. an object array inside an .npz)."""
  import io
  allowed = frozenset(_normalise_global(a) for a in allowed)
  return _AllowListUnpickler(io.BytesIO(data), allowed).load()


def sha256_file(path: str) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks (weights are checked before they are unpickled)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def tensor_dict(state_dict: Any, where: str) -> dict:
  """Checks that every value of a loaded state dict is a tensor; drops DataParallel's 'module.' prefix.

  `where` names the file (and entry) for the error message.
  """
  out = {}
  for key, value in state_dict.items():
    if not isinstance(value, np.ndarray):
      raise ValueError(f'{where}[{key!r}] is a {type(value).__name__}, not a tensor.')
    out[key[len('module.'):] if key.startswith('module.') else key] = value
  return out
