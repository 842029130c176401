"""Test set-up: 4 fake CPU devices so sharded code paths run on any machine."""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
