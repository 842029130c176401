"""Mesh, named shardings, multi-process start-up and global batches from per-process host data.

The same code runs on 1 CPU, N fake CPU devices (tests), N GPUs and multi-host TPU/GPU: the
batch is sharded over every mesh axis; the train state is replicated (data parallel) or, with
`config.fsdp_axis`, each large leaf is split over that axis (FSDP / ZeRO-3: XLA all-gathers the
weights for the forward/backward and reduce-scatters the gradients).
"""

import logging
import math
import os
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# ----------------------------------------------------------------------------- multi-process start-up


def _first_slurm_host(nodelist: str) -> str:
  """First host of a SLURM hostlist: 'gpu[003-004,9],cpu1' -> 'gpu003', 'node7,node8' -> 'node7'."""
  m = re.match(r'([^,\[]+)(?:\[([^\],\-]+))?', nodelist)
  if not m:
    raise ValueError(f'cannot parse SLURM node list {nodelist!r}')
  return m.group(1) + (m.group(2) or '')


def distributed_args(env) -> dict | None:
  """kwargs for `jax.distributed.initialize` from a launcher's environment; None = single process.

  Checked in this order (the launch/ scripts set these):
    REPOSEDM_DISTRIBUTED=off   never initialise (debugging one task of a job).
    REPOSEDM_DISTRIBUTED=auto  jax's own cluster detection (TPU VM pod slices, GKE, Open MPI).
    SLURM under srun with SLURM_NTASKS > 1: process count/id from SLURM; the coordinator is
      JAX_COORDINATOR_ADDRESS (slurm.sbatch exports the first node) or the first host of the node
      list with port JAX_COORDINATOR_PORT (default derived from the job id, as jax does). One task
      per GPU sees only GPU SLURM_LOCALID (unless SLURM already narrowed CUDA_VISIBLE_DEVICES);
      one task per node sees all of the node's GPUs.
    Explicit: JAX_COORDINATOR_ADDRESS=host:port with JAX_NUM_PROCESSES and JAX_PROCESS_ID
      (optionally JAX_LOCAL_DEVICE_IDS, read by jax itself).
    TPU_WORKER_HOSTNAMES listing more than one worker: jax's detection, as for 'auto'.
  """
  mode = env.get('REPOSEDM_DISTRIBUTED', '')
  if mode not in ('', 'auto', 'off'):
    raise ValueError(f"REPOSEDM_DISTRIBUTED={mode!r} must be 'auto', 'off' or unset")
  if mode == 'off':
    return None
  if mode == 'auto':
    return {}
  ntasks = int(env.get('SLURM_STEP_NUM_TASKS', env.get('SLURM_NTASKS', '1')))
  if ntasks > 1 and 'SLURM_PROCID' in env:
    nodes = int(env.get('SLURM_STEP_NUM_NODES', env.get('SLURM_NNODES', '1')))
    coordinator = env.get('JAX_COORDINATOR_ADDRESS')
    if not coordinator:
      nodelist = env.get('SLURM_STEP_NODELIST', env.get('SLURM_JOB_NODELIST', ''))
      if not nodelist:
        raise ValueError('SLURM job without SLURM_STEP_NODELIST/SLURM_JOB_NODELIST: set JAX_COORDINATOR_ADDRESS')
      port = env.get('JAX_COORDINATOR_PORT') or str(int(env.get('SLURM_JOB_ID', '0')) % 4096 + 61440)
      coordinator = f'{_first_slurm_host(nodelist)}:{port}'
    args = {'coordinator_address': coordinator, 'num_processes': ntasks, 'process_id': int(env['SLURM_PROCID']),
            # Our choice of visible devices, not jax's (which would give a per-node task one GPU only).
            'cluster_detection_method': 'deactivate'}
    visible = env.get('CUDA_VISIBLE_DEVICES', '')
    bound_by_slurm = bool(visible) and ',' not in visible  # --gpus-per-task already left one GPU visible.
    if ntasks > nodes and not bound_by_slurm:
      args['local_device_ids'] = [int(env.get('SLURM_LOCALID', '0'))]
    return args
  if env.get('JAX_COORDINATOR_ADDRESS'):
    missing = [k for k in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID') if k not in env]
    if missing:
      raise ValueError(f'JAX_COORDINATOR_ADDRESS is set but {missing} not: set all three for a multi-process run')
    return {'coordinator_address': env['JAX_COORDINATOR_ADDRESS'], 'num_processes': int(env['JAX_NUM_PROCESSES']),
            'process_id': int(env['JAX_PROCESS_ID'])}
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return {}
  return None


def maybe_initialize_distributed() -> None:
  """Initialises multi-process JAX when a launcher set up the environment; a no-op for one process."""
  args = distributed_args(os.environ)
  if args is None or jax.distributed.is_initialized():
    return
  # Cross-process collectives on CPU (tests, CPU clusters) need an implementation; GPUs/TPUs ignore it.
  if getattr(jax.config, 'jax_cpu_collectives_implementation', 'gloo') is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  logging.info('jax.distributed.initialize(%s)', args)
  jax.distributed.initialize(**args)


def any_process(flag: bool) -> bool:
  """True if `flag` is True on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


# ----------------------------------------------------------------------------- mesh and shardings

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


def fsdp_spec(shape, axis_size: int, axis: str, min_size: int) -> P:
  """PartitionSpec splitting the largest dim divisible by `axis_size` over `axis`.

  Leaves with fewer than `min_size` elements (biases, norm scales, step counters) stay
  replicated: splitting them saves little memory and costs one collective each.
  """
  if axis_size == 1 or not shape or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):  # Largest first; ties: the earlier dim.
    if shape[dim] % axis_size == 0:
      return P(*([None] * dim + [axis]))
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp_axis: str = '', min_size: int = 0):
  """NamedShardings for a train-state pytree: replicated, or FSDP over `fsdp_axis` ('' = off).

  params, opt_state and ema_params are split leaf by leaf with `fsdp_spec`; the frozen parts ('guide', PIF's
  estimator; 'vae', latent mode's autoencoder) stay replicated: every device runs them on its own rows.
  """
  if not fsdp_axis:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  if fsdp_axis not in mesh.axis_names:
    raise ValueError(f'config.fsdp_axis={fsdp_axis!r} is not an axis of config.mesh {tuple(mesh.axis_names)}')
  n = mesh.shape[fsdp_axis]
  rule = lambda a: NamedSharding(mesh, fsdp_spec(a.shape, n, fsdp_axis, min_size))  # noqa: E731
  return {k: (jax.tree.map(lambda _: replicated(mesh), v) if k in ('guide', 'vae') else jax.tree.map(rule, v))
          for k, v in abstract_state.items()}


def put_global(tree, shardings):
  """Host values (the same on every process) -> global arrays with `shardings`; works multi-process."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


# ----------------------------------------------------------------------------- batches

def local_batch_sharding(batch: int) -> NamedSharding | None:
  """Leading axis over this process's devices, for single-process jobs such as evaluation.

  None when there is one device, several processes (the mesh would not be global), or `batch` does
  not divide evenly. On CPU with `--xla_force_host_platform_device_count=2` the Inception, LPIPS and
  SSIM passes run 1.3x faster with their batch split this way (WORKSPACE.md, evaluation speed).
  """
  devices = jax.local_devices()
  if len(devices) == 1 or jax.process_count() > 1 or batch % len(devices):
    return None
  return NamedSharding(Mesh(np.asarray(devices), ('batch',)), P('batch'))


def put_batch(x, sharding: NamedSharding | None):
  """Host array -> device array split by `sharding` (unchanged when it is None)."""
  return x if sharding is None else jax.device_put(np.asarray(x), sharding)


def global_batch(host_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded over the data axis.

  Each process passes its own rows (B / process_count of them); the global batch is their
  concatenation in process order.
  """
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
