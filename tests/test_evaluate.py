"""Eval mode on a hand-made samples directory: SSIM and LPIPS against independent computations."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import demo
from reposedm_jax import evaluate
from reposedm_jax.data import names, pipeline, synthetic
from reposedm_jax.data.dataset import load_split
from reposedm_jax.metrics import lpips as lpips_lib


def test_eval_scores_copy_source_as_its_baseline(tmp_path):
  """'Generating' the source itself must give exactly the copy-source baseline, for every metric."""
  skimage_metrics = pytest.importorskip('skimage.metrics')
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=4, identities=10, views_per_identity=3, height=64, width=44, fmt='pidm')
  config = demo.get_config()
  config.data.root = root
  split = load_split(config.data, 'test')
  workdir = str(tmp_path / 'run')
  os.makedirs(os.path.join(workdir, 'samples'))
  manifest, ref = [], []
  for pair in split.pairs[:6]:
    src, _ = pipeline.load_view(split, pair.sources[0], (64, 44), None, 0.0)
    tgt, _ = pipeline.load_view(split, pair.target, (64, 44), None, 0.0)
    name = names.output_name(pair.sources[0], pair.target)
    Image.fromarray(src).save(os.path.join(workdir, 'samples', name))
    manifest.append({'name': name, 'source': pair.sources[0], 'target': pair.target})
    ref.append(skimage_metrics.structural_similarity(src, tgt, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                                     use_sample_covariance=False, data_range=255))
  with open(os.path.join(workdir, 'samples', 'manifest_p0.jsonl'), 'w') as f:
    f.writelines(json.dumps(m) + '\n' for m in manifest)
  metrics = evaluate.run_eval(config, workdir)
  assert metrics['num_images'] == 6
  np.testing.assert_allclose(metrics['ssim']['generated'], np.mean(ref), atol=1e-4)
  assert metrics['ssim']['generated'] == pytest.approx(metrics['ssim']['copy_source_baseline'], abs=1e-7)
  if 'skipped' not in metrics['lpips']:
    assert metrics['lpips']['generated'] == pytest.approx(metrics['lpips']['copy_source_baseline'], abs=1e-6)
    assert metrics['lpips']['protocol'] == 'lpips_alex'
  else:
    assert lpips_lib.INSTALL_HINT in metrics['lpips']['skipped']
  if 'skipped' not in metrics['fid']:
    assert metrics['fid']['generated'] == pytest.approx(metrics['fid']['copy_source_baseline'], rel=1e-9)
    # The 6 pairs are all ordered pairs of one 3-view identity: the sources and the targets are the same
    # multiset of images, so the two feature sets have identical statistics and FID is 0 up to rounding.
    assert abs(metrics['fid']['generated']) < 1e-6 and metrics['fid']['reference_images'] == 6
  table = open(os.path.join(workdir, 'eval', 'metrics.md')).read()
  assert 'copy source (baseline)' in table
