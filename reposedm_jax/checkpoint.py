"""Orbax checkpoints of the train state and the grain iterator, with auto-resume.

Resume order (STYLE.md): the workdir's latest checkpoint, else `config.init_from`
(converted weights: a params pytree saved by a converter), else scratch.
"""

import logging
import os

import grain.python as pygrain
import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')), options=options,
                               item_names=('state', 'data'))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None) -> None:
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data'] = pygrain.PyGrainCheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iter=None):
  """Restores the latest step into the shapes/shardings of `abstract_state`; None if there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None and 'data' in (manager.item_metadata(step) or {}):
    items['data'] = pygrain.PyGrainCheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  logging.info('Resumed from %s step %d', manager.directory, step)
  return restored['state']


def load_params(path: str, abstract_params):
  """Loads a params pytree saved with `ocp.StandardCheckpointer` (e.g. by a converter)."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(path, abstract_params)
  logging.info('Initialised params from %s', path)
  return params


def save_params(path: str, params) -> None:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), params, force=True)


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a live pytree, for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), tree)
