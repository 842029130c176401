"""Training loop: sharding invariance, per-shard noise, exact resume, preemption, end to end."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh

from configs import demo
from reposedm_jax import logs, sharding, train, train_state
from reposedm_jax.data import synthetic
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory
from tests.conftest import random_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA's optimisation passes dominate a tiny train step's run time on CPU; numerics checked here do not need them.
FAST_ENV = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}


def stage_env(mode: str, **extra) -> dict:
  """The environment of one CLI stage: unoptimised compiles for training only. Sampling and evaluation run
  their programs many times, and unoptimised they run ~2x longer than the compile saves (measured on the 2-core
  VM, 2026-12-07: latent `full` sample 85 s -> 41 s, eval 36 s -> 18 s, the re-ID stage 215 s -> 101 s)."""
  return {**os.environ, **(FAST_ENV if mode == 'train' else {}),
          'XLA_FLAGS': '--xla_force_host_platform_device_count=2', **extra}


pytestmark = pytest.mark.usefixtures('fast_compile')


def tiny_config(root=''):
  config = demo.get_config('runlocal')
  config.data.root = root
  config.data.height, config.data.width = 32, 22
  m = config.model
  m.model_channels, m.channel_mult, m.num_res_blocks, m.norm_groups, m.attention_ds = 16, (1, 2), 1, 8, (2,)
  m.dropout = 0.1
  config.train.batch_size = 4
  config.train.grid_pairs = 4
  config.train.ema_start_step = 1
  config.train.sample_every = 1000
  return config


def run_steps(config, mesh, n=2):
  model = factory.build_model(config)
  sched = linear_schedule(1000)
  tx = train_state.make_optimizer(config)
  repl = sharding.replicated(mesh)
  state = jax.device_put(train_state.init_state(model, tx, config, jax.random.key(0)), repl)
  state_sharding = jax.tree.map(lambda _: repl, state)
  step = train.compile_train_step(model, sched, tx, config, mesh, state_sharding)
  metrics = []
  for i in range(n):
    state, m = step(state, sharding.global_batch(random_batch(config, i), mesh), jax.random.key(1))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_sharded_step_matches_single_device():
  assert jax.device_count() == 4
  config = tiny_config()
  s1, m1 = run_steps(config, Mesh(np.asarray(jax.devices()[:1]), ('data',)))
  s4, m4 = run_steps(config, sharding.make_mesh((('data', -1),)))
  for a, b in zip(m1, m4):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1['params'], s4['params'])
  assert int(s4['step']) == 2


def test_different_shards_draw_different_noise():
  mesh = sharding.make_mesh((('data', -1),))
  x0 = jnp.zeros((4, 8, 8, 3))
  draw = jax.jit(lambda k: train.draw_step_inputs(k, x0, 1000, 0.1), out_shardings=sharding.batch_sharding(mesh))
  t, noise, keep = draw(jax.random.key(3))
  assert len({s.device for s in noise.addressable_shards}) == 4
  rows = np.asarray(noise).reshape(4, -1)
  for i in range(4):
    for j in range(i + 1, 4):
      assert not np.allclose(rows[i], rows[j])
  # Same values as an unsharded draw: the noise depends on the step key, not on the device layout.
  t1, n1, k1 = train.draw_step_inputs(jax.random.key(3), x0, 1000, 0.1)
  np.testing.assert_array_equal(np.asarray(noise), np.asarray(n1))
  np.testing.assert_array_equal(np.asarray(t), np.asarray(t1))


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('train_data'))
  synthetic.generate(root, seed=0, identities=10, views_per_identity=3, height=32, width=22, fmt='pidm')
  return root


def restore_state(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state', 'data')) as mgr:
    step = mgr.latest_step()
    return step, mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']


def test_resume_equals_straight_run(data_root, tmp_path):
  config = tiny_config(data_root)
  config.train.ckpt_every = 2
  config.train.num_steps = 4
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(config, straight)
  resumed = str(tmp_path / 'resumed')
  config.train.num_steps = 2
  train.train_and_evaluate(config, resumed)
  config.train.num_steps = 4
  train.train_and_evaluate(config, resumed)
  (sa, a), (sb, b) = restore_state(straight), restore_state(resumed)
  assert sa == sb == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_sigterm_saves_restorable_checkpoint(data_root, tmp_path):
  workdir = str(tmp_path / 'preempt')
  cmd = [sys.executable, '-m', 'reposedm_jax.main', '--config=configs/demo.py:runlocal', f'--workdir={workdir}',
         f'--config.data.root={data_root}', '--config.data.height=32', '--config.data.width=22',
         '--config.model.channel_mult=(1, 2)', '--config.model.attention_ds=(2,)', '--config.model.model_channels=16',
         '--config.train.num_steps=100000', '--config.train.log_every=1', '--config.train.ckpt_every=100000',
         '--config.train.sample_every=100000']
  env = stage_env('train', PYTHONUNBUFFERED='1')
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('step 3/'):
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, ''.join(lines[-20:])
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, ''.join(lines[-20:]) + out
  step, state = restore_state(workdir)
  assert step >= 3 and int(state['step']) == step
  summary = json.load(open(os.path.join(workdir, 'train_summary.json')))
  assert summary['preempted'] is True


def test_main_train_sample_eval_end_to_end(data_root, tmp_path):
  workdir = str(tmp_path / 'e2e')
  base = [sys.executable, '-m', 'reposedm_jax.main', '--config=configs/demo.py:runlocal', f'--workdir={workdir}',
          f'--config.data.root={data_root}', '--config.data.height=32', '--config.data.width=22',
          '--config.model.channel_mult=(1, 2)', '--config.model.attention_ds=(2,)',
          '--config.model.model_channels=16']
  for mode in ('train', 'sample', 'eval'):
    r = subprocess.run(base + [f'--config.mode={mode}'], cwd=REPO, env=stage_env(mode), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if mode == 'train':  # what the user reads: each progress line once, no library INFO stream, no config dump
      out = r.stdout + r.stderr
      progress = [line for line in out.splitlines() if line.startswith('step ')]
      assert progress and len(progress) == len(set(progress)), progress
      info = [line for line in out.splitlines() if re.match(r'I\d{4} ', line)]  # absl INFO records
      assert not info and 'Config:' not in out, out[-2000:]
      assert sum('config in ' in line and line.endswith('config.json') for line in out.splitlines()) == 1, out[:2000]
      # The compile is announced before it starts and timed after; the progress lines come after both.
      lines = out.splitlines()
      announce = lines.index('Compiling the train step ...')
      done = next(i for i, line in enumerate(lines) if line.startswith('Train step compiled (and run once) in '))
      assert announce < done < lines.index(progress[0])
  metrics = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  assert metrics['num_images'] == 8
  assert 0 < metrics['ssim']['copy_source_baseline'] < 1 and -1 < metrics['ssim']['generated'] < 1
  assert 'too small' in metrics['lpips']['skipped']  # 32x22 is below AlexNet's receptive field.
  pngs = [f for f in os.listdir(os.path.join(workdir, 'samples')) if f.endswith('_vis.png')]
  assert len(pngs) == 8
  assert os.listdir(os.path.join(workdir, 'samples', 'grids'))
  assert os.path.exists(os.path.join(workdir, 'tb'))
  events = ''.join(open(os.path.join(workdir, 'tb', f), 'rb').read().decode('latin-1')
                   for f in os.listdir(os.path.join(workdir, 'tb')))
  assert 'eval/ssim/generated' in events and 'loss' in events
  table = open(os.path.join(workdir, 'parameters.txt')).read()
  assert 'middle_block_1/proj_out2/kernel' in table and 'Total:' in table


def test_progress_rate_leaves_out_compile_time(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(logs.time, 'time', lambda: clock[0])
  progress = logs.Progress(total_steps=100, first_step=0)
  clock[0] = 130.0  # 10 steps in 30 s, 20 s of which compiled the step
  progress.exclude(20.0)
  assert progress.rate(10) == pytest.approx(1.0)
  clock[0] = 140.0
  assert progress.rate(20) == pytest.approx(1.0)  # excluded once, not again
