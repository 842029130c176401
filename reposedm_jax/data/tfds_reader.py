"""Reading a dataset that `--config.mode=prepare` (tfds_builder.py) wrote as ArrayRecord: `load_split`.

tensorflow_datasets is imported only when such a dataset is read (it is slow to import; the other formats
never pay for it).
"""

import os

import numpy as np

from reposedm_jax.data import errors
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.splits import Pair, Split


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # optional and slow to import
  return tfds


class TfdsImages:
  """Image store over one split's ArrayRecord records (opened lazily in each process)."""

  def __init__(self, data_dir: str, split: str, keys: list[str]):
    self.data_dir, self.split = data_dir, split
    self.index = {k: i for i, k in enumerate(keys)}
    self._source = None

  def __getstate__(self):
    return {**self.__dict__, '_source': None}

  def exists(self, key: str) -> bool:
    return key in self.index

  def read(self, key: str) -> np.ndarray:
    if key not in self.index:
      raise BadExampleError(self.data_dir, f'no record for image {key!r} in split {self.split}', field='key')
    if self._source is None:
      self._source = _tfds().builder_from_directory(self.data_dir).as_data_source(split=self.split)
    return np.asarray(self._source[self.index[key]]['image'])


def find_builder_dir(tfds_dir: str) -> str:
  """The versioned directory (<tfds_dir>/pose_transfer/1.0.0) holding dataset_info.json."""
  for root, _, files in os.walk(tfds_dir):
    if 'dataset_info.json' in files:
      return root
  raise BadExampleError(tfds_dir, 'no prepared tfds dataset here (run --config.mode=prepare first)',
                        field='tfds_dir')


def load_split(data_cfg, split: str) -> Split:
  data_dir = find_builder_dir(data_cfg.tfds_dir)
  meta = _tfds().builder_from_directory(data_dir).info.metadata
  if list(meta['hw']) != [data_cfg.height, data_cfg.width]:
    raise BadExampleError(data_dir, f"prepared at {tuple(meta['hw'])}, config asks for "
                          f'{(data_cfg.height, data_cfg.width)}: prepare again', field='hw')
  keys = meta['images'][split]
  origin = os.path.join(data_dir, 'metadata.json')
  pairs = [Pair(p[0], tuple(p[1:]), f'{origin}[{split}][{i}]') for i, p in enumerate(meta['pairs'][split])]
  if not pairs:
    raise BadExampleError(origin, f'empty split {split!r}', field='pairs')
  keypoints = {k: np.asarray(meta['keypoints'][k], np.float32) for k in keys}
  return Split(split, pairs, keypoints, TfdsImages(data_dir, split, keys), 'image', tuple(meta['hw']),
               errors.SkipCounter(f'{split} examples'))
