"""Test set-up: 4 fake CPU devices so sharded code paths run on any machine."""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Persistent compilation cache shared by the session, its xdist workers and the CLI subprocesses: several
# tests compile the same train step more than once (resume = 3 runs of one program), and compiling, not
# running, is what the suite spends its time on. Keys hash the program and the options, so it cannot go stale.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache_tests'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

import jax  # noqa: E402  (after the XLA flags above)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def random_batch(config, seed=0):
  """A training batch of random values at the config's shapes (batch size, height, width)."""
  rng = np.random.default_rng(seed)
  b, h, w = config.train.batch_size, config.data.height, config.data.width
  return {'src_img': rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32),
          'tgt_img': rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32),
          'tgt_pose': rng.uniform(0, 1, (b, h, w, 20)).astype(np.float32),
          'src_kpts': rng.uniform(0, w, (b, 18, 2)).astype(np.float32),
          'tgt_kpts': rng.uniform(0, w, (b, 18, 2)).astype(np.float32)}


@pytest.fixture(scope='module')
def fast_compile():
  """Skips XLA's optimisation passes for a module: they dominate compile time of tiny test models on CPU."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)
