"""Multi-process training: launcher environments -> jax.distributed arguments, and 2 JAX processes on CPU.

The end-to-end test starts this file as a script twice (process 0 and 1, 2 fake CPU devices each,
jax.distributed on a free localhost port), trains a tiny B1 4 steps, then again from its step-2
checkpoint, and checks that both processes saw the same losses, that only process 0 wrote logs and
grids, and that the resumed checkpoint equals the straight one.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # Script mode (the worker processes) runs from tests/.
  sys.path.insert(0, REPO)

from reposedm_jax import sharding  # noqa: E402

# ----------------------------------------------------------------------------- launcher environments


def test_single_process_environments_do_nothing():
  assert sharding.distributed_args({}) is None
  assert sharding.distributed_args({'SLURM_NTASKS': '1', 'SLURM_PROCID': '0', 'SLURM_JOB_ID': '5'}) is None
  # salloc shell (no srun): SLURM_NTASKS > 1 but no SLURM_PROCID -> this python is not one task of many.
  assert sharding.distributed_args({'SLURM_NTASKS': '8'}) is None
  assert sharding.distributed_args({'TPU_WORKER_HOSTNAMES': 'w-0'}) is None
  assert sharding.distributed_args({'REPOSEDM_DISTRIBUTED': 'off', 'JAX_COORDINATOR_ADDRESS': 'h:1'}) is None


def test_slurm_one_task_per_gpu():
  env = {'SLURM_JOB_ID': '4100', 'SLURM_NTASKS': '8', 'SLURM_NNODES': '2', 'SLURM_PROCID': '5',
         'SLURM_LOCALID': '1', 'SLURM_JOB_NODELIST': 'gpu[003-004]'}
  args = sharding.distributed_args(env)
  # Port as jax derives it from the job id: 4100 % 4096 + 61440.
  assert args == {'coordinator_address': 'gpu003:61444', 'num_processes': 8, 'process_id': 5,
                  'cluster_detection_method': 'deactivate', 'local_device_ids': [1]}
  # srun --gpus-per-task=1 already narrowed the visible GPUs: keep jax's default (all visible = that one).
  assert 'local_device_ids' not in sharding.distributed_args({**env, 'CUDA_VISIBLE_DEVICES': '1'})
  # The sbatch script exports the coordinator: it wins over the node list.
  assert sharding.distributed_args({**env, 'JAX_COORDINATOR_ADDRESS': 'n1:1234'})['coordinator_address'] == 'n1:1234'


def test_slurm_one_task_per_node_sees_all_gpus():
  env = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NUM_TASKS': '2', 'SLURM_STEP_NUM_NODES': '2', 'SLURM_PROCID': '1',
         'SLURM_LOCALID': '0', 'SLURM_STEP_NODELIST': 'node7,node8', 'JAX_COORDINATOR_PORT': '5000'}
  args = sharding.distributed_args(env)
  assert args['coordinator_address'] == 'node7:5000' and args['process_id'] == 1
  assert 'local_device_ids' not in args


def test_explicit_and_tpu_environments():
  env = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}
  assert sharding.distributed_args(env) == {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
                                            'process_id': 3}
  with pytest.raises(ValueError, match='JAX_NUM_PROCESSES'):
    sharding.distributed_args({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_PROCESS_ID': '0'})
  assert sharding.distributed_args({'TPU_WORKER_HOSTNAMES': 'w-0,w-1,w-2,w-3'}) == {}  # jax's TPU detection.
  assert sharding.distributed_args({'REPOSEDM_DISTRIBUTED': 'auto'}) == {}
  with pytest.raises(ValueError, match='REPOSEDM_DISTRIBUTED'):
    sharding.distributed_args({'REPOSEDM_DISTRIBUTED': 'yes'})


def test_first_slurm_host():
  assert sharding._first_slurm_host('gpu[003-004,9],cpu1') == 'gpu003'
  assert sharding._first_slurm_host('node7,node8') == 'node7'
  assert sharding._first_slurm_host('a100-[12,15]') == 'a100-12'
  assert sharding._first_slurm_host('single') == 'single'


# ----------------------------------------------------------------------------- launch scripts (stubbed tools)

ODD_ARG = '--config.model.channel_mult=(1, 2)'  # Spaces and parentheses must reach main.py unchanged.


def stub(directory, name: str, body: str) -> str:
  path = os.path.join(directory, name)
  with open(path, 'w') as f:
    f.write('#!/usr/bin/env bash\n' + body)
  os.chmod(path, 0o755)
  return path


def run_script(script, args, env, cwd=REPO):
  return subprocess.run(['bash', os.path.join(REPO, 'launch', script), *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=60)


def fake_python(tmp_path, preempted: bool) -> str:
  """Records its arguments and environment, writes train_summary.json; `-c` goes to the real python."""
  return stub(tmp_path, 'python', f"""if [[ "$1" == -c ]]; then exec {sys.executable} "$@"; fi
printf '%s\n' "$@" > {tmp_path}/args.txt
env > {tmp_path}/env.txt
workdir=""; for a in "$@"; do [[ "$a" == --workdir=* ]] && workdir="${{a#--workdir=}}"; done
mkdir -p "$workdir" && echo '{{"preempted": {str(preempted).lower()}}}' > "$workdir/train_summary.json"
""")


def test_local_sh_checks_arguments_and_forwards_them(tmp_path):
  env = {'PATH': os.environ['PATH'], 'PYTHON': fake_python(tmp_path, False)}
  r = run_script('local.sh', ['--workdir=w'], env)
  assert r.returncode == 2 and 'missing --config' in r.stderr
  r = run_script('local.sh', ['--config=configs/demo.py'], env)
  assert r.returncode == 2 and 'missing --workdir' in r.stderr
  args = ['--config=configs/demo.py:runlocal', f'--workdir={tmp_path}/run', ODD_ARG]
  r = run_script('local.sh', args, env)
  assert r.returncode == 0, r.stderr
  assert open(tmp_path / 'args.txt').read().splitlines() == ['-m', 'reposedm_jax.main', *args]
  environ = open(tmp_path / 'env.txt').read()
  assert f'JAX_COMPILATION_CACHE_DIR={tmp_path}/run/jax_cache' in environ
  r = run_script('local.sh', args, {**env, 'PYTHON': '/nonexistent/python'})
  assert r.returncode == 2 and 'PYTHON=/nonexistent/python' in r.stderr


@pytest.mark.parametrize('preempted', [False, True])
def test_slurm_sbatch_sets_coordinator_runs_srun_and_requeues(tmp_path, preempted):
  bin_dir = str(tmp_path / 'bin')
  os.makedirs(bin_dir)
  stub(bin_dir, 'scontrol', f"""if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu003\ngpu004\n'; exit 0; fi
echo "$@" >> {tmp_path}/scontrol.txt
""")
  stub(bin_dir, 'srun', 'while [[ "$1" == --* ]]; do shift; done; exec "$@"\n')
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'PYTHON': fake_python(tmp_path, preempted),
         'REPOSEDM_REPO': REPO}
  r = run_script('slurm.sbatch', ['--config=configs/demo.py', '--workdir=w'], env)
  assert r.returncode != 0 and 'SLURM_JOB_ID' in r.stderr  # Run with bash, not sbatch.
  env.update(SLURM_JOB_ID='4100', SLURM_JOB_NODELIST='gpu[003-004]', SLURM_NNODES='2', SLURM_NTASKS='2')
  args = ['--config=configs/deepfashion.py:variant=b2', f'--workdir={tmp_path}/run', ODD_ARG]
  r = run_script('slurm.sbatch', args, env)
  assert r.returncode == 0, r.stderr
  assert open(tmp_path / 'args.txt').read().splitlines() == ['-m', 'reposedm_jax.main', *args]
  assert 'JAX_COORDINATOR_ADDRESS=gpu003:61444' in open(tmp_path / 'env.txt').read()
  requeued = os.path.exists(tmp_path / 'scontrol.txt') and 'requeue 4100' in open(tmp_path / 'scontrol.txt').read()
  assert requeued == preempted


def test_tpu_vm_sh_runs_on_all_workers_with_quoted_arguments(tmp_path):
  stub(tmp_path, 'gcloud', f'printf "%s\\n" "$@" > {tmp_path}/gcloud.txt\n')
  env = {'PATH': f'{tmp_path}:{os.environ["PATH"]}'}
  r = run_script('tpu_vm.sh', ['--config=c.py', '--workdir=/mnt/w'], env)
  assert r.returncode != 0 and 'TPU_NAME' in r.stderr
  env.update(TPU_NAME='pod', ZONE='us-east5-a')
  r = run_script('tpu_vm.sh', ['--config=c.py'], env)
  assert r.returncode == 2 and 'missing --workdir' in r.stderr
  r = run_script('tpu_vm.sh', ['--config=configs/deepfashion.py', '--workdir=/mnt/w', ODD_ARG], env)
  assert r.returncode == 0, r.stderr
  lines = open(tmp_path / 'gcloud.txt').read().splitlines()
  assert lines[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'pod'] and '--worker=all' in lines
  remote = next(l for l in lines if l.startswith('--command='))[len('--command='):]
  assert 'REPOSEDM_DISTRIBUTED=auto' in remote and remote.endswith(
      r"-m reposedm_jax.main --config=configs/deepfashion.py --workdir=/mnt/w --config.model.channel_mult=\(1\,\ 2\) ")
  # The remote shell undoes the quoting: main.py gets the argument as typed.
  words = subprocess.run(['bash', '-c', 'printf "%s\\n" ' + remote.split('reposedm_jax.main ', 1)[1]],
                         capture_output=True, text=True).stdout.splitlines()
  assert words[-1] == ODD_ARG


# ----------------------------------------------------------------------------- 2 processes on this machine


def tiny_config(data_root: str):
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config('runlocal')
  config.data.root = data_root
  config.data.height, config.data.width = 16, 12
  m = config.model  # The smallest U-Net with attention: compile time dominates.
  m.model_channels, m.channel_mult, m.num_res_blocks, m.norm_groups, m.attention_ds = 8, (1,), 1, 4, (1,)
  t = config.train
  t.batch_size, t.grid_pairs, t.log_every, t.ckpt_every, t.sample_every = 4, 4, 2, 2, 4
  s = config.sample
  s.num_steps = 2
  return config


def worker(workdir: str, data_root: str) -> None:
  """One of the 2 processes: 4 steps straight, then steps 3-4 again resumed from its step-2 checkpoint.

  The resumed run starts in a fresh workdir holding only a copy of checkpoint 2 (two compiles of the
  train step instead of three for a separate 2 + 2 run). Prints its results as one JSON line.
  """
  import shutil  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from reposedm_jax import config_lib, train  # pylint: disable=import-outside-toplevel
  sharding.maybe_initialize_distributed()
  assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
  config = tiny_config(data_root)
  config_lib.validate(config)
  results = {'process': jax.process_index()}
  config.train.sample_every = 1000  # No grid in the straight run.
  straight, resumed = os.path.join(workdir, 'straight'), os.path.join(workdir, 'resumed')
  results['straight'] = train.train_and_evaluate(config, straight)
  if jax.process_index() == 0:
    shutil.copytree(os.path.join(straight, 'checkpoints', '2'), os.path.join(resumed, 'checkpoints', '2'))
  multihost_utils.sync_global_devices('checkpoint 2 copied')
  config.train.sample_every = 4  # A grid at step 4 (process 0 writes it).
  results['resumed'] = train.train_and_evaluate(config, resumed)
  print('RESULT ' + json.dumps(results), flush=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def restore_state(workdir, config):
  """(latest step, state) of a checkpoint written by 2 processes, read here onto one device."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from reposedm_jax import train_state  # pylint: disable=import-outside-toplevel
  from reposedm_jax.models import factory  # pylint: disable=import-outside-toplevel
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = train_state.abstract_state(factory.build_model(config), train_state.make_optimizer(config), config,
                                        jax.random.key(0))
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device), abstract)
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state', 'data')) as mgr:
    step = mgr.latest_step()
    return step, mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']


def test_two_processes_train_resume_and_agree(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from reposedm_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  data_root = str(tmp_path / 'data')
  synthetic.generate(data_root, seed=0, identities=8, views_per_identity=3, height=16, width=12, fmt='pidm')
  workdir = str(tmp_path / 'runs')
  port = free_port()
  procs, logs = [], []
  for i in range(2):
    env = {**os.environ, 'JAX_COORDINATOR_ADDRESS': f'localhost:{port}', 'JAX_NUM_PROCESSES': '2',
           'JAX_PROCESS_ID': str(i), 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
           'JAX_PLATFORMS': 'cpu', 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1', 'PYTHONUNBUFFERED': '1'}
    log = open(tmp_path / f'process_{i}.log', 'w+')
    logs.append(log)
    procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), workdir, data_root], cwd=REPO,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
  deadline = time.time() + 300
  try:
    for p in procs:
      p.wait(timeout=max(1, deadline - time.time()))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  results = [json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:]) for out in outputs]
  assert [r['process'] for r in results] == [0, 1]

  # Both processes saw the same (replicated) metrics, and the resumed run the same losses as the straight one.
  for run in ('straight', 'resumed'):
    assert results[0][run]['loss'] == results[1][run]['loss'], run
  assert results[0]['resumed']['step'] == 4
  np.testing.assert_allclose(results[0]['resumed']['loss'], results[0]['straight']['loss'], rtol=1e-6)
  assert 'starting at step 2' in outputs[0]
  # Only process 0 logs: progress lines on its stdout only, one metrics row per log step, one grid.
  assert 'step 4/4' in outputs[0] and 'step 4/4' not in outputs[1]
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'straight', 'metrics.jsonl'))]
  assert [r['step'] for r in rows] == [2, 4]
  assert all(r['data_wait_ms'] >= 0 and 0 <= r['data_wait_frac'] <= 1 for r in rows)
  assert os.listdir(os.path.join(workdir, 'resumed', 'samples')) == ['train_step_0000004.png']
  # Every process saved its own input-pipeline state next to the (global) train state.
  data_dir = os.path.join(workdir, 'resumed', 'checkpoints', '4', 'data')
  assert sorted(f for f in os.listdir(data_dir) if f.startswith('process_')) == ['process_0-of-2.json',
                                                                            'process_1-of-2.json']

  # The resumed step-4 checkpoint equals the straight one, leaf for leaf.
  config = tiny_config(data_root)
  (sa, a), (sb, b) = (restore_state(os.path.join(workdir, run), config) for run in ('straight', 'resumed'))
  assert sa == sb == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


if __name__ == '__main__':
  worker(sys.argv[1], sys.argv[2])
