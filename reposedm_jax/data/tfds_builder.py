"""tfds builder: prepare a dataset once into ArrayRecord, then train from it with grain.

  python -m reposedm_jax.main --config=configs/deepfashion.py --workdir=runs/prep \
      --config.mode=prepare --config.data.root=/data/deepfashion --config.data.tfds_dir=/data/tfds/df256
  python -m reposedm_jax.main --config=configs/deepfashion.py --workdir=runs/df \
      --config.data.format=tfds --config.data.tfds_dir=/data/tfds/df256

The builder reads the user's files through the normal readers (`data.format` pidm or patn;
`data.root` is the tfds manual_dir) and stores one record per image: PNG bytes at model
resolution and the OpenPose keypoints in that pixel frame. Pairs, the image order and the
keypoints also go into the dataset's metadata, so a split is rebuilt without scanning
records. TensorFlow is not needed: tfds writes and reads ArrayRecord without it
(measured: `tensorflow` never enters sys.modules).
"""

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from reposedm_jax.data import errors
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.splits import Pair, Split


class PoseTransfer(tfds.core.GeneratorBasedBuilder):
  """Person images with OpenPose-18 keypoints and the pose-transfer pairs of each split."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Point data.root (the manual_dir) at the dataset as downloaded: DeepFashion in PIDM layout '
      '(img/, pose/, train_pairs.txt, test_pairs.txt) or PATN CSVs + train/ test/ folders.')

  def __init__(self, *, data_cfg, **kwargs):
    self._data_cfg = data_cfg
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self._data_cfg.height, self._data_cfg.width
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self._data_cfg.dataset} at {h}x{w} for pose transfer.',
        features=tfds.features.FeaturesDict({
            'key': tfds.features.Text(),
            'image': tfds.features.Image(shape=(h, w, 3), encoding_format='png'),
            'keypoints': tfds.features.Tensor(shape=(18, 2), dtype=np.float32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)  # Record i is metadata['images'][split][i].

  def _split_generators(self, dl_manager):
    from reposedm_jax.data import dataset  # The readers; local to avoid an import cycle.
    cfg = self._data_cfg.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.root = os.fspath(dl_manager.manual_dir)
    meta = {'pairs': {}, 'images': {}, 'keypoints': {}, 'hw': [cfg.height, cfg.width]}
    gens = {}
    for name in ('train', 'test'):
      split = dataset.load_split(cfg, name)
      keys = split.image_keys()
      meta['pairs'][name] = [[p.target, *p.sources] for p in split.pairs]
      meta['images'][name] = keys
      gens[name] = self._generate_examples(split, keys, meta['keypoints'])
    self.info.metadata.update(meta)
    return gens

  def _generate_examples(self, split, keys, keypoints_out):
    from reposedm_jax.data.pipeline import load_view
    hw = (self._data_cfg.height, self._data_cfg.width)
    for i, key in enumerate(keys):
      img, kpts = load_view(split, key, hw, None, 0.0)
      keypoints_out[key] = kpts.tolist()
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format='PNG')
      yield i, {'key': key, 'image': buf.getvalue(), 'keypoints': kpts}


def prepare(data_cfg) -> str:
  """Builds the ArrayRecord dataset into data_cfg.tfds_dir from the files under data_cfg.root."""
  if not data_cfg.tfds_dir:
    raise ValueError('Set --config.data.tfds_dir=DIR (where the ArrayRecord files go).')
  builder = PoseTransfer(data_cfg=data_cfg, data_dir=data_cfg.tfds_dir, file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.root))
  return builder.data_dir


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
      self._source = tfds.builder_from_directory(self.data_dir).as_data_source(split=self.split)
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
  meta = tfds.builder_from_directory(data_dir).info.metadata
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
