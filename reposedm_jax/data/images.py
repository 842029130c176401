"""Image stores: a folder tree or PIDM's LMDB, both returning uint8 RGB arrays.

Keys are dataset-relative paths as they appear in the pairs files. PIDM's pairs files name
`.jpg` files while its LMDB (and this project's synthetic data) hold PNGs, so a key is looked
up with `.png` first and then as written, exactly as PIDM's loader rewrites `.jpg` -> `.png`.
"""

import io
import os

import numpy as np
from PIL import Image

from reposedm_jax.data.errors import BadExampleError


def candidate_keys(key: str) -> tuple[str, ...]:
  """The keys a pairs-file path may be stored under, most likely first."""
  stem, ext = os.path.splitext(key)
  if ext.lower() in ('.jpg', '.jpeg'):
    return (stem + '.png', key)
  return (key,)


# Pillow's modes for 16-bit greyscale PNGs (values 0..65535).
_SIXTEEN_BIT = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


def decode_image(data: bytes | str, where: str) -> np.ndarray:
  """Decodes PNG/JPEG bytes (or a path) to uint8 RGB [H, W, 3]; truncated files raise."""
  try:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
      im.load()  # Forces a full decode, so a truncated file fails here, not as grey pixels.
      if im.mode in _SIXTEEN_BIT:  # convert('RGB') clips 16-bit values to 255: an all-white image
        grey = np.round(np.asarray(im, np.float64) / 257.0).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
      return np.asarray(im.convert('RGB'))
  except Image.DecompressionBombError as e:  # Pillow refuses > 2 x MAX_IMAGE_PIXELS before decoding
    raise BadExampleError(where, f'image too large to decode ({e})', field='image') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise BadExampleError(where, f'unreadable or truncated image: {e}', field='image') from e


class FolderImages:
  """Images as files under `root` (DeepFashion `img/...` tree or PATN flat folders)."""

  def __init__(self, root: str):
    self.root = root

  def resolve(self, key: str) -> str | None:
    for k in candidate_keys(key):
      path = os.path.join(self.root, k)
      if os.path.isfile(path):
        return path
    return None

  def exists(self, key: str) -> bool:
    return self.resolve(key) is not None

  def read(self, key: str) -> np.ndarray:
    path = self.resolve(key)
    if path is None:
      raise BadExampleError(os.path.join(self.root, key), 'image file not found (tried .png and as written)',
                            field='image')
    return decode_image(path, path)


_LMDB_ENVS: dict[tuple[int, str], object] = {}


def _lmdb_env(path: str):
  """One read-only environment per (process, path): lmdb refuses to open a path twice in a process."""
  key = (os.getpid(), os.path.realpath(path))
  if key not in _LMDB_ENVS:
    import lmdb  # Optional dependency: only LMDB users need it.
    _LMDB_ENVS[key] = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
  return _LMDB_ENVS[key]


class LmdbImages:
  """PIDM's LMDB: PNG bytes keyed by the UTF-8 relative path with `.png`, plus a `length` key.

  The environment opens lazily in each process (grain workers fork/spawn after construction).
  """

  def __init__(self, path: str):
    if not os.path.isdir(path):
      raise BadExampleError(path, 'LMDB directory not found (set data.lmdb_path)', field='lmdb_path')
    self.path = path

  def _txn_get(self, key: str) -> bytes | None:
    with _lmdb_env(self.path).begin(write=False) as txn:
      return txn.get(key.encode('utf-8'))

  def __len__(self) -> int:
    raw = self._txn_get('length')
    if raw is None:
      raise BadExampleError(self.path, "LMDB has no 'length' key", field='length')
    return int(raw.decode('utf-8'))

  def exists(self, key: str) -> bool:
    return any(self._txn_get(k) is not None for k in candidate_keys(key))

  def read(self, key: str) -> np.ndarray:
    for k in candidate_keys(key):
      raw = self._txn_get(k)
      if raw is not None:
        return decode_image(raw, f'{self.path}[{k}]')
    raise BadExampleError(self.path, f'LMDB key missing: {candidate_keys(key)[0]!r}', field='key')


def write_lmdb(path: str, root: str, keys: list[str]) -> int:
  """Packs PNG files under `root` into a PIDM-style LMDB (used by tests and `prepare`)."""
  import lmdb
  os.makedirs(path, exist_ok=True)
  env = lmdb.open(path, map_size=1 << 34)
  store = FolderImages(root)
  with env.begin(write=True) as txn:
    for key in keys:
      src = store.resolve(key)
      if src is None:
        raise BadExampleError(os.path.join(root, key), 'image file not found', field='image')
      with open(src, 'rb') as f:
        txn.put(candidate_keys(key)[0].encode('utf-8'), f.read())
    txn.put(b'length', str(len(keys)).zfill(5).encode('utf-8'))
  env.close()
  return len(keys)
