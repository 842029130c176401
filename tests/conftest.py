"""Test set-up: 4 fake CPU devices so sharded code paths run on any machine."""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the XLA flags above)
import pytest  # noqa: E402


@pytest.fixture(scope='module')
def fast_compile():
  """Skips XLA's optimisation passes for a module: they dominate compile time of tiny test models on CPU."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)
