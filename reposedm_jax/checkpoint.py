"""Orbax checkpoints of the train state and the grain iterator, with auto-resume.

Resume order (STYLE.md): the workdir's latest checkpoint, else `config.init_from` (converted weights: a
params pytree saved by a converter, or another run's workdir: its latest EMA params), else scratch.
"""

import logging
import os
import signal

from flax import traverse_util
import grain.python as pygrain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from reposedm_jax import logs, sharding


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')), options=options,
                               item_names=('state', 'data'))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None) -> None:
  """Saves `step` (asynchronously); a state with a NaN or inf anywhere is never saved: FloatingPointError."""
  if not all_finite(state):
    last = manager.latest_step()
    raise FloatingPointError(f'Non-finite training state at step {step}: not saved. The last finite checkpoint '
                             f'is step {last} in {manager.directory}' if last is not None else
                             f'Non-finite training state at step {step}: not saved (no earlier checkpoint).')
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data'] = pygrain.PyGrainCheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def finish(manager: ocp.CheckpointManager, step: int, state, data_iter=None, stopped: bool = False) -> None:
  """End of a training loop: saves `step` unless it is saved already, waits for the writes, closes the manager."""
  if manager.latest_step() != step:
    save(manager, step, state, data_iter)
  manager.wait_until_finished()
  manager.close()
  if stopped:
    logs.log_line(f'Stopped by signal at step {step}; checkpoint saved. Rerun the same command to resume.')


class StopFlag:
  """Set by SIGTERM/SIGINT; a training loop checks it after each step, saves and exits cleanly."""

  def __init__(self):
    self.stop = False
    self._old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handler)

  def _handler(self, signum, frame):
    logging.warning('Received signal %d: checkpointing and exiting.', signum)
    self.stop = True

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class CheckpointError(RuntimeError):
  """No checkpoint of a run restores, or another job holds the run (the user's to resolve: one line)."""


_locks = {}


def lock_workdir(directory: str, what: str = 'training') -> None:
  """Holds an exclusive lock on `directory` for this process's lifetime (process 0; the kernel frees it on exit).

  Two trainings writing one workdir would overwrite each other's checkpoints and both end with rc 0.
  """
  directory = os.path.realpath(directory)
  if jax.process_index() != 0 or directory in _locks:
    return
  import fcntl
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f'.{what}.lock')
  f = open(path, 'a+')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or 'another process'
    f.close()
    raise CheckpointError(f'{directory} is in use by another {what} ({holder}); wait for it or use another '
                          '--workdir') from None
  f.seek(0)
  f.truncate()
  f.write(f'pid {os.getpid()} on {os.uname().nodename}\n')
  f.flush()
  _locks[directory] = f


def damaged_dir(manager: ocp.CheckpointManager) -> str:
  """Where damaged steps are moved: beside checkpoints/, so the manager no longer lists them."""
  return str(manager.directory) + '_damaged'


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iter=None, weights_only: bool = False):
  """Restores the newest step that restores into the shapes/shardings of `abstract_state`; None if none exists.

  A step that fails to restore (a truncated or deleted file, a step cut off mid-write) is moved aside to
  `damaged_dir` with one warning, and the next older step is tried: a requeued job resumes from the newest
  good step instead of failing forever. If every step is damaged, CheckpointError (nothing is deleted).
  A readable step whose tree differs from `abstract_state` (another model, or another optimizer: e.g. a
  changed rpa.pretrain_steps) is the config's doing: CheckpointError, and the step stays where it is.
  `weights_only` (sampling): only the params must match; the rest of the stored state (the optimizer,
  whatever config built it) is restored as stored, replicated like the first leaf of `abstract_state`.
  """
  tried = []
  while (step := manager.latest_step()) is not None:
    try:
      stored_tree = _item_tree(manager, step)
      if 'params' not in stored_tree:  # truncated metadata reads as an empty tree
        raise ValueError(f'step {step} stores no params')
      stored = _tree_shapes(stored_tree)
    except Exception:  # noqa: BLE001 -- unreadable metadata: a damaged step, handled below
      stored_tree = stored = None
    if stored is not None and 'params' in abstract_state:
      if weights_only:
        abstract_state = _stored_abstract(stored_tree, abstract_state)
      wanted = _tree_shapes(abstract_state)
      diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
      if diff:  # the user's config, not a damaged file: leave the checkpoints where they are
        what = 'another model' if any(k.startswith(('params/', 'ema_params/')) for k in diff) else \
            'another optimizer state (train / rpa.pretrain_steps / rpa.lr_mult_after_pretrain settings)'
        raise CheckpointError(f'{manager.directory} step {step} holds {what} than this config builds '
                              f'({len(diff)} differences, e.g. {diff[0]}: stored {stored.get(diff[0])}, config '
                              f'{wanted.get(diff[0])}); compare with the run\'s config.json or use another --workdir')
    try:
      items = {'state': ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None and 'data' in (_item_metadata(manager, step) or {}):
        items['data'] = pygrain.PyGrainCheckpointRestore(data_iter)
      restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many types for a damaged step
      tried.append(step)
      reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      if jax.process_index() == 0:
        os.makedirs(damaged_dir(manager), exist_ok=True)
        dst = os.path.join(damaged_dir(manager), str(step))
        if os.path.exists(dst):
          dst += f'.{os.getpid()}'
        os.replace(os.path.join(str(manager.directory), str(step)), dst)
        logging.warning('Checkpoint step %d in %s does not restore (%s: %s); moved to %s, trying an older step.',
                        step, manager.directory, type(e).__name__, reason, dst)
      if jax.process_count() > 1:  # every process lists the steps only after process 0 moved the damaged one
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f'checkpoint-moved-{step}')
      manager.reload()
      continue
    logs.log_line(f'Resumed from {manager.directory} step {step}' +
                  (f' (damaged steps {tried} moved to {damaged_dir(manager)})' if tried else ''))
    return restored['state']
  if tried:
    raise CheckpointError(f'No checkpoint in {manager.directory} restores: steps {tried} are damaged and were '
                          f'moved to {damaged_dir(manager)}. Remove that directory to start from scratch.')
  return None


def _item_tree(manager: ocp.CheckpointManager, step: int, item: str = 'state'):
  """The stored tree of shapes/dtypes of one item of `step`, read from its directory (raises if unreadable).

  The manager has no handler for `item` before its first restore, so the metadata comes from the item dir."""
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(os.path.join(str(manager.directory), str(step), item))
  meta = getattr(meta, 'item_metadata', meta)
  return getattr(meta, 'tree', meta)


def _key_name(k) -> str:
  """One path entry as orbax stores it: dict keys, NamedTuple fields and sequence indices all become names."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _tree_shapes(tree) -> dict:
  """{'opt_state/inner_states/rpa/...': shape} of every array leaf, the same for a stored tree (nested dicts and
  lists) and a live or abstract one (optax NamedTuples)."""
  return {'/'.join(_key_name(k) for k in kp): tuple(a.shape)
          for kp, a in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(a, 'shape')}


def _stored_abstract(stored_tree, abstract_state):
  """The stored tree as restore targets, with `abstract_state`'s own entries for 'params' and 'ema_params'."""
  sharding = jax.tree.leaves(abstract_state)[0].sharding
  out = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), stored_tree,
                     is_leaf=lambda x: hasattr(x, 'shape'))
  for key in ('params', 'ema_params'):
    if key in abstract_state and key in out:
      out[key] = abstract_state[key]
  return out


def _item_metadata(manager: ocp.CheckpointManager, step: int):
  """manager.item_metadata without its per-item "could not be restored" warnings (it has no handlers yet)."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    return manager.item_metadata(step)
  finally:
    absl_logger.setLevel(level)


def _leaf_finite_on_host(leaf) -> bool:
  parts = ([s.data for s in leaf.addressable_shards if s.replica_id == 0] if isinstance(leaf, jax.Array)
           else [np.asarray(leaf)])
  return all(np.isfinite(np.asarray(p, np.float32) if p.dtype.itemsize < 4 else np.asarray(p)).all()
             for p in parts)


def _all_finite_device(leaves) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(x)) for x in leaves]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


_all_finite_device_jit = jax.jit(_all_finite_device)


def all_finite(tree, on_host=None) -> bool:
  """Every floating leaf of `tree` is finite, on every process (a collective: every process must call it).

  On CPU (`on_host=None`) the check runs on the host, each process over its own shards (a replicated leaf
  once): one jitted reduction over the whole training state is a program with ~1000 inputs, and its compile
  (28 s for the runlocal model on 2 loaded cores) slowed the demo's steps 400-450 to 0.32-0.39 steps/s at the
  first checkpoint of every run. On accelerators the jitted reduction stays: it reads the state where it lives
  instead of copying gigabytes to the host for the check.
  """
  leaves = [leaf if hasattr(leaf, 'dtype') else np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
  leaves = [leaf for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  if on_host is None:
    on_host = jax.default_backend() == 'cpu'
  if not on_host:  # a global reduction: every process gets the same answer
    return bool(_all_finite_device_jit(leaves))
  finite = all(_leaf_finite_on_host(leaf) for leaf in leaves)
  return not sharding.any_process(not finite)


def restore_here(manager: ocp.CheckpointManager, step: int, item: str = 'state'):
  """One item of `step` restored onto this process's first device, whatever topology saved it.

  A bare StandardRestore() reuses the saved shardings, so a run trained on 2 devices (or a pod) could not
  be read by a 1-device evaluation; the target here comes from the stored shapes and dtypes.
  """
  meta = _item_tree(manager, step, item)
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), meta)
  return manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))[item]


def _is_added_by_b2(path: tuple) -> bool:
  """Parameters B2 / RePoseDM add to B1 (RPA and the zero-initialised aligned-source paths)."""
  return path[0] == 'rpa' or any('aligned' in part for part in path)


def _params_source(path: str):
  """(orbax item dir, key prefix of the params in it) for a params dir, an export or a training workdir.

  A workdir (it has `checkpoints/`) gives its latest step's EMA params: the weights its samples and
  metrics come from, so `--config.init_from=runs/b1` starts from exactly the B1 that was evaluated.
  """
  ckpts = os.path.join(path, 'checkpoints')
  if os.path.isfile(os.path.join(path, 'export.json')):  # `python -m reposedm_jax.export` (run_weights.py)
    if not os.path.isdir(os.path.join(path, 'params')):
      raise ValueError(f'{path} is a safetensors export: export with --format orbax for init_from, or load it '
                       'with `python -m reposedm_jax.predict --weights`')
    return os.path.join(path, 'params'), ()
  if not os.path.isdir(ckpts):
    return path, ()
  # The same manager training writes with (read-only: it must not create or clean anything here).
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(ckpts, options=options, item_names=('state', 'data')) as manager:
    step = manager.latest_step()
  if step is None:
    raise ValueError(f'{path} is a training workdir without a finished checkpoint in {ckpts}')
  return os.path.join(ckpts, str(step), 'state'), ('ema_params',)


def load_params(path: str, abstract_params, fresh_params=None):
  """Loads params from a params pytree dir (a converter or export) or a training workdir (its latest EMA).

  A B1 tree (PIDM's converter output, a B1 run's params) also loads into b2 / full: it goes under
  'unet', and the parameters B2 adds (rpa/, *aligned*) keep their values from `fresh_params` (their
  fresh init, which makes the network compute B1's function). Any other mismatch is an error listing
  the unexpected, missing and mis-shaped names.
  """
  path = os.path.abspath(path)
  item_dir, prefix = _params_source(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(item_dir)
    meta = getattr(meta, 'item_metadata', meta)
    meta = getattr(meta, 'tree', meta)
    stored = {p[len(prefix):]: m for p, m in ((tuple(str(getattr(k, 'key', k)) for k in kp), m)
                                               for kp, m in jax.tree_util.tree_flatten_with_path(meta)[0])
              if p[:len(prefix)] == prefix}
    if not stored:
      raise ValueError(f'{item_dir} holds no parameters under {"/".join(prefix) or "its root"}')
    target = {tuple(str(getattr(k, 'key', k)) for k in kp): a
              for kp, a in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}

    def restore(flat_abstract):  # {stored path: abstract} -> {stored path: array}
      item = traverse_util.unflatten_dict({prefix + q: a for q, a in flat_abstract.items()})
      args = ocp.args.PyTreeRestore(item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                    partial_restore=bool(prefix))
      flat = traverse_util.flatten_dict(ckptr.restore(item_dir, args=args))
      return {q[len(prefix):]: v for q, v in flat.items()}

    if set(stored) == set(target):
      params = traverse_util.unflatten_dict(restore(target))
      logging.info('Initialised params from %s', item_dir)
      return params
    nest = 'unet' in {p[0] for p in target} and 'unet' not in {p[0] for p in stored}
    mapped = {(('unet',) + p if nest else p): p for p in stored}
    unexpected = sorted('/'.join(p) for p in mapped if p not in target)
    missing = sorted('/'.join(p) for p in target if p not in mapped and not _is_added_by_b2(p))
    shapes = sorted(f"{'/'.join(p)}: stored {tuple(stored[q].shape)} vs model {tuple(target[p].shape)}"
                    for p, q in mapped.items() if p in target and tuple(stored[q].shape) != tuple(target[p].shape))
    if unexpected or missing or shapes or fresh_params is None:
      why = [f'unexpected {unexpected[:20]}'] * bool(unexpected) + [f'missing {missing[:20]}'] * bool(missing)
      why += [f'mis-shaped {shapes[:20]}'] * bool(shapes)
      why += ['the new parameters need a fresh initialisation here'] * (fresh_params is None)
      raise ValueError(f'{path} does not match the model ({len(stored)} stored vs {len(target)} model '
                       f'parameters): ' + '; '.join(why))
    loaded = restore({q: target[p] for p, q in mapped.items()})
  flat = traverse_util.flatten_dict(fresh_params)
  flat.update({p: loaded[q] for p, q in mapped.items()})
  logging.info('Initialised %d of %d params from %s (B1 tree under unet/; the B2 additions fresh)', len(mapped),
               len(flat), item_dir)
  return traverse_util.unflatten_dict(flat)


def save_params(path: str, params) -> str:
  """Writes a params pytree (what `load_params` and converters read) to `path`, replacing it; returns it absolute."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=True)
  return path


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a live pytree, for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), tree)
