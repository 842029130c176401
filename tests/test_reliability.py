"""A run survives its own failures: damaged checkpoints, NaNs, a second job on its workdir."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from reposedm_jax import checkpoint, train
from tests.test_train import data_root, tiny_config  # noqa: F401 -- data_root is a fixture

pytestmark = pytest.mark.usefixtures('fast_compile')


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def test_a_damaged_latest_step_is_moved_aside_and_the_previous_one_resumes(data_root, tmp_path, caplog):
  config = tiny_config(data_root)
  config.train.ckpt_every, config.train.num_steps = 2, 4
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  assert _steps(workdir) == [2, 4]
  state_dir = os.path.join(workdir, 'checkpoints', '4', 'state')
  victims = [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs if 'manifest' in f or f.endswith('.ocdbt')]
  victims = victims or [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs]
  for v in victims:  # a truncated write: every data file of the step cut to nothing
    open(v, 'wb').close()
  config.train.num_steps = 6
  out = train.train_and_evaluate(config, workdir)
  assert out['step'] == 6
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_damaged', '4'))  # moved aside, not deleted
  assert 'does not restore' in caplog.text and 'step 4' in caplog.text
  assert _steps(workdir)[-1] == 6


def test_every_step_damaged_is_one_clear_error(data_root, tmp_path):
  config = tiny_config(data_root)
  config.train.ckpt_every, config.train.num_steps = 2, 2
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  state_dir = os.path.join(workdir, 'checkpoints', '2', 'state')
  for r, _, fs in os.walk(state_dir):
    for f in fs:
      open(os.path.join(r, f), 'wb').close()
  config.train.num_steps = 4
  with pytest.raises(checkpoint.CheckpointError, match=r'No checkpoint .* restores: steps \[2\] are damaged'):
    train.train_and_evaluate(config, workdir)


def test_the_finiteness_check_reads_every_shard_and_dtype():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  ok = {'w': jax.device_put(np.arange(8, dtype=np.float32), split), 'b16': jnp.ones(3, jnp.bfloat16),
        'count': jnp.int32(7), 'host': np.zeros(2), 'scalar': 0.5, 'r': jax.device_put(np.ones(3, np.float32),
                                                                                        replicated)}
  bad = {'w': jax.device_put(np.array([0, 0, 0, 0, 0, 0, 0, np.inf], np.float32), split),  # in the last shard
         'b16': jnp.array([1.0, jnp.nan, 2.0], jnp.bfloat16), 'host': np.array([0.0, -np.inf]), 'scalar': np.nan,
         'r': jax.device_put(np.array([1, np.nan, 1], np.float32), replicated)}
  for on_host in (True, False):  # the CPU form and the accelerators' jitted one
    assert checkpoint.all_finite(ok, on_host=on_host)
    for key, value in bad.items():
      assert not checkpoint.all_finite({**ok, key: value}, on_host=on_host), (key, on_host)


def test_a_non_finite_state_is_never_saved(data_root, tmp_path):
  config = tiny_config(data_root)
  config.train.lr, config.train.warmup_steps, config.train.grad_clip = 1e6, 0, 0.0
  config.train.ckpt_every, config.train.log_every, config.train.num_steps = 1, 10, 30
  workdir = str(tmp_path / 'nan')
  with pytest.raises(FloatingPointError, match=r'Non-finite training state at step (\d+): not saved') as e:
    train.train_and_evaluate(config, workdir)
  bad_step = int(e.value.args[0].split('step ')[1].split(':')[0])
  steps = _steps(workdir)
  assert all(s < bad_step for s in steps)
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state', 'data')) as mgr:
    for s in steps:  # every kept checkpoint is finite, and the last finite one survived the error
      state = mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(state) if np.issubdtype(np.asarray(x).dtype, np.floating))
  if bad_step > 1:
    assert steps and steps[-1] == bad_step - 1


def test_a_second_training_on_one_workdir_is_refused(data_root, tmp_path):
  workdir = str(tmp_path / 'busy')
  os.makedirs(workdir)
  holder = subprocess.Popen([sys.executable, '-c', (
      'import fcntl, sys, time\n'
      f'f = open({os.path.join(workdir, ".training.lock")!r}, "a+"); fcntl.flock(f, fcntl.LOCK_EX)\n'
      'f.write("pid 1234 on elsewhere"); f.flush(); print("locked", flush=True); time.sleep(60)')],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    config = tiny_config(data_root)
    with pytest.raises(checkpoint.CheckpointError, match=r'busy is in use by another training \(pid 1234'):
      train.train_and_evaluate(config, workdir)
  finally:
    holder.kill()


def test_a_checkpoint_of_another_model_is_an_error_not_damage(data_root, tmp_path):
  config = tiny_config(data_root)
  config.train.ckpt_every, config.train.num_steps = 2, 2
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  config.model.model_channels, config.train.num_steps = 32, 4  # the user changed the config, not the files
  with pytest.raises(checkpoint.CheckpointError, match=r'step 2 holds another model than this config builds'):
    train.train_and_evaluate(config, workdir)
  assert _steps(workdir) == [2] and not os.path.exists(os.path.join(workdir, 'checkpoints_damaged'))


def test_another_optimizer_config_is_an_error_for_training_but_samples(data_root, tmp_path):
  """A changed rpa.pretrain_steps changes the optimizer's tree, not the model: resuming training with it is the
  config's mistake (one error, nothing moved); sampling reads the weights whatever optimizer built them."""
  from reposedm_jax import sample, sharding
  config = tiny_config(data_root)
  config.variant = 'b2'
  config.rpa.dim, config.rpa.ds, config.rpa.heads, config.rpa.windows, config.rpa.iterations = 16, 4, 2, (3,), 1
  config.rpa.init_flow = 'keypoints'
  config.rpa.pretrain_steps, config.train.ckpt_every, config.train.num_steps = 1, 2, 2
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  config.rpa.pretrain_steps, config.train.num_steps = 0, 4
  with pytest.raises(checkpoint.CheckpointError, match=r'step 2 holds another optimizer state .* than this config builds'):
    train.train_and_evaluate(config, workdir)
  assert _steps(workdir) == [2] and not os.path.exists(os.path.join(workdir, 'checkpoints_damaged'))
  _, params, step = sample.load_sampling_params(config, workdir, sharding.make_mesh(config.mesh))
  assert step == 2 and set(params) == {'unet', 'rpa'}
  assert _steps(workdir) == [2]


def test_a_data_error_is_one_line_and_verbosity_brings_the_traceback_back(tmp_path):
  """main.run: the user's data error (a malformed pairs line) is one line naming file and line, exit != 0;
  `--verbosity=0` shows the full traceback for debugging."""
  from reposedm_jax.data import synthetic
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=0, identities=4, views_per_identity=2, height=32, width=22, fmt='pidm')
  pairs = os.path.join(root, 'train_pairs.txt')
  with open(pairs) as f:
    lines = f.read().splitlines()
  lines.insert(1, 'only-one-field')
  with open(pairs, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, '-m', 'reposedm_jax.main', '--config=configs/demo.py:runlocal',
         f'--workdir={tmp_path / "run"}', f'--config.data.root={root}', '--config.data.height=32',
         '--config.data.width=22']
  r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
  out = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
  assert r.returncode != 0 and 'Traceback' not in r.stdout + r.stderr, out
  assert out[-1].startswith('BadExampleError: ') and 'train_pairs.txt:2' in out[-1], out
  r = subprocess.run(cmd + ['--verbosity=0'], cwd=repo, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and 'Traceback' in r.stderr
