"""Mesh, named shardings and global batches from per-process host data (jit + NamedSharding).

The same code runs on 1 CPU, N fake CPU devices (tests), N GPUs and multi-host TPU/GPU: the
batch is sharded over the 'data' mesh axis, parameters and optimizer state are replicated.
"""

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def maybe_initialize_distributed() -> None:
  """Initialises multi-process JAX when a launcher set up the environment (SLURM, TPU pods, explicit)."""
  explicit = 'JAX_COORDINATOR_ADDRESS' in os.environ
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  if explicit or slurm:
    jax.distributed.initialize()


def make_mesh(mesh_config) -> Mesh:
  """Builds a Mesh from ((name, size), ...); one size may be -1 (all remaining devices).

  Uses `jax.sharding.Mesh` directly: `jax.make_mesh`'s default Explicit axis types break
  ordinary conv models (stack-notes.md).
  """
  names = tuple(n for n, _ in mesh_config)
  sizes = [s for _, s in mesh_config]
  n_dev = jax.device_count()
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or n_dev % known:
    raise ValueError(f'config.mesh={mesh_config} does not fit {n_dev} devices')
  sizes = [n_dev // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != n_dev:
    raise ValueError(f'config.mesh={mesh_config} resolves to {sizes}, product != {n_dev} devices')
  devices = np.asarray(jax.devices()).reshape(sizes)
  return Mesh(devices, names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over every mesh axis; the rest replicated."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(host_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host_batch.items()}


def process_local(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array that this process fed in (inverse of global_batch)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # Replicas over non-batch axes hold the same rows.
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)
