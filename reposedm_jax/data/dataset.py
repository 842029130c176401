"""One entry point for every on-disk convention: `load_split(config.data, 'train' | 'test')`."""

from reposedm_jax.data import deepfashion, patn
from reposedm_jax.data.splits import Split


def load_split(data_cfg, split: str) -> Split:
  if data_cfg.format == 'pidm':
    return deepfashion.load_split(data_cfg, split)
  if data_cfg.format == 'patn':
    return patn.load_split(data_cfg, split)
  if data_cfg.format == 'tfds':
    from reposedm_jax.data import tfds_builder  # tfds is slow to import; only its users pay.
    return tfds_builder.load_split(data_cfg, split)
  raise ValueError(f"data.format must be 'pidm', 'patn' or 'tfds', got {data_cfg.format!r}")
