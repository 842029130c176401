"""Safe reader for PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, without torch.

The official HigherHRNet and HRNet-ImageNet `.pth` files date from torch 1.1-1.4, before the zip
format became the default, so `torch_checkpoint.load_torch_checkpoint` (zip only) cannot read them.

Layout of a legacy file, one pickle after another, then raw bytes:
  magic number (int) | protocol version 1001 | sys_info {'little_endian', ...} |
  the object pickle (tensors refer to storages by persistent id
      ('storage', <torch.XStorage>, key, location, numel, view_metadata)) |
  the list of storage keys | for each key in that order: int64 element count + the raw elements.
The object pickle comes before the bytes it needs, so tensors are first recorded as placeholders and
materialised once every storage has been read.

Safety is the same as for the zip reader: the object pickle resolves globals only through
torch_checkpoint's allow-list (containers, tensor/parameter rebuild, storage dtype markers); anything
else raises `UnsafePickleError` before it is imported. The header pickles may hold plain values only.
"""

import os
import pickle
import struct
from typing import Any

import numpy as np

from reposedm_jax.convert import torch_checkpoint
from reposedm_jax.convert.torch_checkpoint import UnsafePickleError

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001


class _StorageRef:
  """A storage named by the object pickle, filled from the data section afterwards."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel


class _PendingTensor:
  """Arguments of `_rebuild_tensor_v2` until its storage has been read."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _pending_rebuild(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                     metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _StorageRef):
    raise UnsafePickleError(f'tensor storage of unexpected type {type(storage).__name__}')
  return _PendingTensor(storage, storage_offset, size, stride)


# The zip reader's allow-list with the tensor rebuild deferred.
_GLOBALS = {**torch_checkpoint._TORCH_GLOBALS, ('torch._utils', '_rebuild_tensor_v2'): _pending_rebuild}  # pylint: disable=protected-access


class _ObjectUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    found = _GLOBALS.get((module, name))
    if found is None:
      raise UnsafePickleError(f'disallowed global in checkpoint: {module}.{name}')
    return found

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage'):
      raise UnsafePickleError(f'unsupported persistent id {pid!r:.100}')
    _, storage_type, key, _location, numel, view_metadata = pid
    if not isinstance(storage_type, torch_checkpoint._StorageType):  # pylint: disable=protected-access
      raise UnsafePickleError(f'unsupported storage type {storage_type!r:.100}')
    if view_metadata is not None:  # Storage views were only written by torch < 1.0.
      raise UnsafePickleError('storage views (torch < 1.0 files) are not supported')
    return _StorageRef(str(key), storage_type.dtype, int(numel))


def _plain_load(f, what: str) -> Any:
  """A header pickle: plain values only (no globals at all)."""
  try:
    return torch_checkpoint._AllowListUnpickler(f, frozenset()).load()  # pylint: disable=protected-access
  except EOFError as e:
    raise ValueError(f'truncated legacy torch file while reading the {what}') from e


def _walk(obj, leaf, memo: dict, active: set):
  """Rebuilds the container tree of `obj` with `leaf(x)` for each _PendingTensor, visiting each container once.

  A pickle can share one container many times (a few hundred bytes of tuples can hold 2^64 paths) or contain
  itself: `memo` (by id) makes the walk linear in the number of distinct containers, `active` refuses cycles.
  """
  if isinstance(obj, _PendingTensor):
    return leaf(obj)
  if not isinstance(obj, (dict, list, tuple)):
    return obj
  if id(obj) in memo:
    return memo[id(obj)]
  if id(obj) in active:
    raise UnsafePickleError('a container contains itself (not a state dict)')
  active.add(id(obj))
  if isinstance(obj, dict):
    out = type(obj)()  # dict or OrderedDict (the only mappings the allow-list can build)
    for k, v in obj.items():
      out[k] = _walk(v, leaf, memo, active)
  else:
    items = [_walk(v, leaf, memo, active) for v in obj]
    out = items if isinstance(obj, list) else tuple(items)
  active.discard(id(obj))
  memo[id(obj)] = out
  return out


def _materialise(obj, storages: dict):
  def leaf(t):
    ref = t.storage
    if ref.key not in storages:
      raise UnsafePickleError(f'tensor refers to storage {ref.key!r}, which the file does not contain')
    return torch_checkpoint._rebuild_tensor(storages[ref.key], t.offset, t.size, t.stride)  # pylint: disable=protected-access
  return _walk(obj, leaf, {}, set())


def load_legacy_torch_checkpoint(path: str) -> Any:
  """Reads a legacy-format `torch.save` file into containers of numpy arrays.

  Raises:
    UnsafePickleError: A disallowed global or a malformed tensor / storage (the message names `path`).
    ValueError: Not a legacy torch file, or truncated.
  """
  try:
    return _load_legacy(path)
  except UnsafePickleError as e:
    raise UnsafePickleError(str(e) if str(e).startswith(path) else f'{path}: {e}') from None
  except (RecursionError, MemoryError, OverflowError, EOFError) as e:
    raise UnsafePickleError(f'{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]})') from None


def _load_legacy(path: str) -> Any:
  file_size = os.path.getsize(path)
  with open(path, 'rb') as f:
    try:
      magic = _plain_load(f, 'magic number')
    except pickle.UnpicklingError as e:
      raise ValueError(f'{path}: neither a zip nor a legacy torch checkpoint ({e})') from e
    if magic != MAGIC_NUMBER:
      raise ValueError(f'{path}: not a torch checkpoint (bad magic number {magic!r:.40})')
    version = _plain_load(f, 'protocol version')
    if version != PROTOCOL_VERSION:
      raise ValueError(f'{path}: unsupported legacy torch protocol {version!r}')
    sys_info = _plain_load(f, 'sys_info')
    order = '<' if not isinstance(sys_info, dict) or sys_info.get('little_endian', True) else '>'
    obj = _ObjectUnpickler(f).load()
    keys = _plain_load(f, 'storage key list')
    if not isinstance(keys, list):
      raise UnsafePickleError(f'{path}: storage key list is a {type(keys).__name__}')
    refs = {}
    _collect_refs(obj, refs)
    storages = {}
    for key in map(str, keys):
      header = f.read(8)
      if len(header) != 8:
        raise ValueError(f'{path}: truncated before storage {key}')
      (numel,) = struct.unpack(f'{order}q', header)
      dtype = refs[key].dtype if key in refs else None
      if dtype is None:
        raise UnsafePickleError(f'{path}: storage {key} is not used by any tensor')
      if numel < 0 or numel < refs[key].numel:
        raise UnsafePickleError(f'{path}: storage {key} holds {numel} elements, expected {refs[key].numel}')
      if numel * dtype.itemsize > file_size - f.tell():  # checked before the read allocates it
        raise ValueError(f'{path}: storage {key} claims {numel} elements, more than the file holds')
      raw = f.read(numel * dtype.itemsize)
      if len(raw) != numel * dtype.itemsize:
        raise ValueError(f'{path}: truncated inside storage {key}')
      storages[key] = np.frombuffer(raw, dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype)
  return _materialise(obj, storages)


def _collect_refs(obj, refs: dict) -> None:
  def leaf(t):
    refs[t.storage.key] = t.storage
    return t
  _walk(obj, leaf, {}, set())
