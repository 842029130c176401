"""tfds ArrayRecord preparation and reading (without TensorFlow)."""

import sys

import numpy as np

from reposedm_jax.data import pipeline, synthetic, tfds_builder
from reposedm_jax.data.dataset import load_split
from tests.test_data_readers import H, W, data_cfg


def test_prepare_then_read_matches_source(tmp_path):
  root = str(tmp_path / 'raw')
  synthetic.generate(root, seed=2, identities=5, views_per_identity=3, height=H, width=W, fmt='pidm')
  cfg = data_cfg(root, tfds_dir=str(tmp_path / 'tfds'))
  tfds_builder.prepare(cfg)
  cfg_t = data_cfg(root, tfds_dir=str(tmp_path / 'tfds'), format='tfds')
  for name in ('train', 'test'):
    src, tf = load_split(cfg, name), load_split(cfg_t, name)
    assert [(p.target, p.sources) for p in src.pairs] == [(p.target, p.sources) for p in tf.pairs]
    for key in src.image_keys()[:6]:
      img_a, kp_a = pipeline.load_view(src, key, (H, W), None, 0.0)
      img_b, kp_b = pipeline.load_view(tf, key, (H, W), None, 0.0)
      np.testing.assert_array_equal(img_a, img_b)
      np.testing.assert_allclose(kp_a, kp_b, atol=1e-4)
  batch = next(iter(pipeline.make_train_loader(cfg_t, load_split(cfg_t, 'train'), global_batch=4, seed=0)))
  assert batch['tgt_img'].shape == (4, H, W, 3)
  assert 'tensorflow' not in sys.modules  # tfds reads and writes ArrayRecord without TF.
