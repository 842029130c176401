"""tools/condition_probe: reads 0 where the source cannot matter, > 0 where it does."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from reposedm_jax import checkpoint
from reposedm_jax.data import synthetic
from reposedm_jax.models import factory
from tests.test_train import tiny_config
from tools import condition_probe

pytestmark = pytest.mark.usefixtures('fast_compile')


def test_probe_separates_a_dead_source_path_from_a_live_one(tmp_path):
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=0, identities=6, views_per_identity=3, height=32, width=22, fmt='pidm')
  config = tiny_config(root)
  model = factory.build_model(config)
  params = factory.init_params(model, config, jax.random.key(0))
  rng = np.random.default_rng(0)
  flat = traverse_util.flatten_dict(params)
  flat[('out_2', 'kernel')] = rng.normal(0, 0.1, flat[('out_2', 'kernel')].shape).astype(np.float32)
  params = traverse_util.unflatten_dict(flat)  # a non-zero output layer, nothing else trained
  # Fresh B1: every cross-attention output projection is zero-initialised (PIDM), so the source is unused.
  dead = condition_probe.probe(config, checkpoint.save_params(str(tmp_path / 'dead'), params), 4, [100, 600])
  assert all(r["null_vs_source"] == 0.0 and r["other_vs_source"] == 0.0 for r in dead), dead
  for k in flat:
    if 'proj_out2' in k and k[-1] == 'kernel':
      flat[k] = rng.normal(0, 0.5, flat[k].shape).astype(np.float32)
  live = condition_probe.probe(config, checkpoint.save_params(str(tmp_path / 'live'),
                                                              traverse_util.unflatten_dict(flat)), 4, [100, 600])
  assert all(r["null_vs_source"] > 1e-3 and r["other_vs_source"] > 1e-4 for r in live), live
  assert all(np.isfinite(r['x0_err_source']) for r in live)
