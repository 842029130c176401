"""tfds builder: prepare a dataset once into ArrayRecord (`prepare`, mode=prepare); tfds_reader.py reads it.

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

from reposedm_jax.data import dataset
from reposedm_jax.data.pipeline import load_view


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
