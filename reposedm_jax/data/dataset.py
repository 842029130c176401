"""One entry point for every on-disk convention: `load_split(config.data, 'train' | 'test')`."""

from reposedm_jax.data import deepfashion, patn, tfds_reader
from reposedm_jax.data.splits import Split

# config.data.format: PIDM's DeepFashion layout, PATN/GFLA CSVs + folders, or a prepared tfds ArrayRecord dataset.
FORMATS = ('pidm', 'patn', 'tfds')


def load_split(data_cfg, split: str) -> Split:
  if data_cfg.format == 'pidm':
    return deepfashion.load_split(data_cfg, split)
  if data_cfg.format == 'patn':
    return patn.load_split(data_cfg, split)
  if data_cfg.format == 'tfds':
    return tfds_reader.load_split(data_cfg, split)
  raise ValueError(f'data.format must be one of {FORMATS}, got {data_cfg.format!r}')
