"""Checkpoints read on another device count than wrote them, and pose-estimator directories of another arch."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from configs import base
from reposedm_jax import checkpoint, pose_estimator
from reposedm_jax.convert import hrnet as hrnet_convert
from reposedm_jax.evaluation import pose as eval_pose
from reposedm_jax.models import hrnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_sharded_multi_device_checkpoint_restores_in_a_one_device_process(tmp_path):
  mesh = Mesh(np.asarray(jax.devices()[:4]), ('data',))
  w = np.arange(32, dtype=np.float32).reshape(8, 4)
  state = {'params': {'w': jax.device_put(w, NamedSharding(mesh, P('data')))},
           'batch_stats': {'m': jax.device_put(np.ones(3, np.float32), NamedSharding(mesh, P()))},
           'step': jnp.int32(7)}
  manager = checkpoint.make_manager(str(tmp_path), 1)
  checkpoint.save(manager, 7, state)
  manager.wait_until_finished()
  manager.close()
  code = textwrap.dedent(f"""
      import jax, numpy as np
      from reposedm_jax import checkpoint
      assert jax.device_count() == 1
      m = checkpoint.make_manager({str(tmp_path)!r}, 1)
      s = checkpoint.restore_here(m, m.latest_step())
      print(float(np.asarray(s['params']['w']).sum()), float(np.asarray(s['batch_stats']['m']).sum()), int(s['step']))
  """)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == [str(float(w.sum())), '3.0', '7']


@pytest.fixture(scope='module')
def small_estimator_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('pose'))
  variables = hrnet.init_variables(hrnet.build_hrnet('small'), jax.random.key(0))
  hrnet_convert.save_hrnet(jax.device_get(variables), d, {'arch': 'small', 'source': 'test'})
  return d


def test_an_estimator_of_another_arch_is_one_clear_line(small_estimator_dir):
  config = base.get_config()  # pose.arch = 'w32'
  with pytest.raises(ValueError) as e:
    pose_estimator.load_pose_estimator(config, small_estimator_dir)
  assert "'small' HigherHRNet" in str(e.value) and '--config.pose.arch=small' in str(e.value)
  assert '\n' not in str(e.value)
  assert pose_estimator.stored_arch(small_estimator_dir) == 'small'
  _, module = pose_estimator.load_pose_estimator(config, small_estimator_dir, arch='small')
  assert module == hrnet.build_hrnet('small')


def test_the_judge_takes_its_architecture_from_its_weights(small_estimator_dir):
  config = base.get_config()
  config.eval.hrnet_dir = small_estimator_dir
  judge = eval_pose.make_hrnet_judge(config, '')
  assert small_estimator_dir in judge.description
